"""What our SGLang plugin changes in SGLang besides the backend name (sglang 0.5.23).

SGLang decides several things on the backend *name* ``mooncake``, assuming its own Mooncake
store; with ours serving the name they must not happen, and one decision must also hold for the
``dynamic`` name. Each change goes through SGLang's plugin hook registry
(``sglang.srt.plugins.hook_registry.HookRegistry``, applied by ``load_plugins()`` in every SGLang
process) or SGLang's own environment switch, and each touches only what our backend serves:

* :func:`keep_transfer_engine_off`: SGLang's distributed bootstrap starts (and imports) Mooncake's
  TransferEngine when the backend name is ``mooncake`` and ``SGLANG_HICACHE_MOONCAKE_REUSE_TE``
  is true (its default); our backend does not use it. Set to ``false`` in the environment, which
  every SGLang process reads when it checks and passes on to the processes it starts.
* :func:`default_host_allocator`: for the name ``mooncake`` SGLang allocates its host KV pools
  with Mooncake's allocator (``get_allocator_type() == "mooncake"``); ours works on any host
  memory, so the pools come from SGLang's default allocator.
* :func:`back_up_mha_drafts_on_every_rank`: on MLA models only the storage-writer rank writes
  the rank-replicated KV pages; SGLang's ``HybridCacheController.should_backup`` still lets every
  rank write its MHA draft pools, but only when the name is ``mooncake``. Our backend keys those
  pools by rank under either name, so the hook answers as SGLang does for ``mooncake`` whenever
  the controller's backend is ours, ``dynamic`` included.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

log = logging.getLogger("mooncake_hicache.sglang")

REUSE_TE_ENV = "SGLANG_HICACHE_MOONCAKE_REUSE_TE"
ALLOCATOR_TARGET = "sglang.srt.mem_cache.pool_host.common.get_allocator_type"
SHOULD_BACKUP_TARGET = "sglang.srt.mem_cache.hybrid_cache.hybrid_cache_controller.HybridCacheController.should_backup"

_lock = threading.Lock()  # guards _registered (the plugin may be called from several threads of a test)
_registered: set = set()


def keep_transfer_engine_off() -> None:
    """Make SGLang's bootstrap skip Mooncake's TransferEngine for the HiCache backend name."""
    previous = os.environ.get(REUSE_TE_ENV)
    os.environ[REUSE_TE_ENV] = "false"
    if previous is not None and previous.strip().lower() not in ("0", "false", "no", "n", "off", ""):
        log.warning("mooncake-hicache: %s=%s ignored: the backend serving 'mooncake' does not use Mooncake's "
                    "TransferEngine, so SGLang's bootstrap does not start one for it", REUSE_TE_ENV, previous)


def _default_allocator(result: Any, *args: Any, **kwargs: Any) -> Any:
    return "default" if result == "mooncake" else result


def _storage_backend(controller: Any) -> Any:
    backend = getattr(controller, "storage_backend", None)
    return getattr(backend, "_backend", backend)  # SGLang's failure injector wraps the real backend


class _NamedMooncake:
    """``controller`` as SGLang's ``should_backup`` sees it when the backend name is ``mooncake``."""

    def __init__(self, controller: Any):
        self._controller = controller

    def __getattr__(self, name: str) -> Any:
        return "mooncake" if name == "storage_backend_type" else getattr(self._controller, name)


def _should_backup(original: Any, controller: Any, transfer: Any) -> bool:
    if original(controller, transfer):
        return True
    from .backend import MooncakeHiCacheStorage

    if not isinstance(_storage_backend(controller), MooncakeHiCacheStorage):
        return False
    return bool(original(_NamedMooncake(controller), transfer))


def _register(target: str, hook: Any, kind: str) -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    with _lock:
        if target in _registered:
            return
        _registered.add(target)
    HookRegistry.register(target, hook, HookType[kind])


def default_host_allocator() -> None:
    _register(ALLOCATOR_TARGET, _default_allocator, "AFTER")


def back_up_mha_drafts_on_every_rank() -> None:
    _register(SHOULD_BACKUP_TARGET, _should_backup, "AROUND")
