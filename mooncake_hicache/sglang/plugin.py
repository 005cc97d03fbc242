"""SGLang general plugin: serve ``--hicache-storage-backend mooncake`` with mooncake-hicache.

SGLang (``sglang.srt.plugins.load_plugins``) loads every entry point of the group
``sglang.srt.plugins`` early in each of its processes (launcher, schedulers, detokenizer, DP
controller) and calls it with no arguments; the return value is ignored and an exception is
logged, not raised. Then it applies the hooks plugins registered. Ours is declared in
pyproject.toml::

    [project.entry-points."sglang.srt.plugins"]
    mooncake_hicache = "mooncake_hicache.sglang.plugin:register"

It maps the name ``mooncake`` to :class:`~mooncake_hicache.sglang.MooncakeHiCacheStorage` and
undoes what SGLang does for that name on behalf of its own Mooncake store (see :mod:`.hooks`).

``MOONCAKE_HICACHE_DISABLE_SGLANG_PLUGIN=1`` leaves the name ``mooncake``, with everything SGLang
does for it (TransferEngine, allocator, layout), to SGLang's built-in Mooncake store; select ours
with ``--hicache-storage-backend dynamic`` then. Even so the plugin keeps one hook, which only
changes SGLang's decisions for controllers whose backend is ours: MHA draft pools of MLA models
are backed up on every rank under ``dynamic`` as under ``mooncake``. ``SGLANG_PLUGINS=name,...``
(SGLang's allow-list) without ``mooncake_hicache`` skips the plugin entirely.

SGLang configures logging after the plugins ran, so what this module logs reaches only
processes whose logging was set up earlier; the line every rank's log keeps is the one the
backend writes when SGLang builds it ("... is served by mooncake_hicache.sglang...").
"""

from __future__ import annotations

import logging
import os

from . import hooks

log = logging.getLogger("mooncake_hicache.sglang")

DISABLE_ENV = "MOONCAKE_HICACHE_DISABLE_SGLANG_PLUGIN"
BACKEND_NAME = "mooncake"
MODULE_PATH = "mooncake_hicache.sglang"
CLASS_NAME = "MooncakeHiCacheStorage"


def _disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def register() -> bool:
    """Map SGLang's storage backend name ``mooncake`` to ``MooncakeHiCacheStorage`` and register
    our hooks. Returns whether the name was mapped (False when turned off by
    ``MOONCAKE_HICACHE_DISABLE_SGLANG_PLUGIN``)."""
    hooks.back_up_mha_drafts_on_every_rank()
    if _disabled():
        log.info("mooncake-hicache: %s is set; --hicache-storage-backend %s stays with SGLang's built-in Mooncake store",
                 DISABLE_ENV, BACKEND_NAME)
        return False
    # Importing the factory registers SGLang's built-in backends; registering after that
    # replaces its 'mooncake' entry (SGLang logs that it overwrites it).
    from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory

    StorageBackendFactory.register_backend(BACKEND_NAME, MODULE_PATH, CLASS_NAME)
    hooks.keep_transfer_engine_off()
    hooks.default_host_allocator()
    log.info("mooncake-hicache: --hicache-storage-backend %s is served by %s.%s (set %s=1 for SGLang's built-in "
             "Mooncake store)", BACKEND_NAME, MODULE_PATH, CLASS_NAME, DISABLE_ENV)
    return True
