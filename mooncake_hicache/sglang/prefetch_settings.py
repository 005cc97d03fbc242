"""SGLang's own prefetch knobs, as the SGLang server in this process runs with them.

``prefetch_threshold``, ``prefetch_timeout_base`` and ``prefetch_timeout_per_ki_token`` are keys of
``--hicache-storage-backend-extra-config``, and ``--hicache-storage-prefetch-policy`` says whether
SGLang cuts a prefetch off at that timeout. SGLang 0.5.23 takes the three keys out of the extra
config before the rest reaches a backend (``HybridCacheController.
parse_storage_backend_extra_config``), so they are read back from the server's arguments, through
that same SGLang function. A backend built outside a server (tests, tools) reads the keys from its
own extra config when they are there, else SGLang's defaults.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

from ..policies import SGLangPrefetchSettings

log = logging.getLogger("mooncake_hicache.sglang")

__all__ = ["sglang_prefetch_settings"]


def _from_server_args() -> Optional[SGLangPrefetchSettings]:
    try:
        from sglang.srt.runtime_context import get_memory
        memory = get_memory()
    except Exception:  # not inside a server (the config is not published), or another SGLang
        return None
    from sglang.srt.mem_cache.hybrid_cache.hybrid_cache_controller import HybridCacheController

    _, threshold, base, per_ki, _ = HybridCacheController.parse_storage_backend_extra_config(
        memory.hicache_storage_backend_extra_config)
    return SGLangPrefetchSettings(threshold_tokens=int(threshold), timeout_base_s=float(base),
                                  timeout_per_ki_token_s=float(per_ki),
                                  stop_policy=str(memory.hicache_storage_prefetch_policy))


def _from_extra_config(extra: Mapping[str, Any]) -> SGLangPrefetchSettings:
    d = SGLangPrefetchSettings()
    return SGLangPrefetchSettings(
        threshold_tokens=int(extra.get("prefetch_threshold", d.threshold_tokens)),
        timeout_base_s=float(extra.get("prefetch_timeout_base", d.timeout_base_s)),
        timeout_per_ki_token_s=float(extra.get("prefetch_timeout_per_ki_token", d.timeout_per_ki_token_s)),
        stop_policy=d.stop_policy)


def sglang_prefetch_settings(storage_config: Any) -> SGLangPrefetchSettings:
    """SGLang's prefetch settings for the backend built with ``storage_config``."""
    extra = dict(getattr(storage_config, "extra_config", None) or {})
    mine = any(k in extra for k in ("prefetch_threshold", "prefetch_timeout_base", "prefetch_timeout_per_ki_token"))
    try:
        settings = None if mine else _from_server_args()
    except Exception:  # an unreadable @file was already reported by SGLang itself
        log.warning("mooncake-hicache: cannot read SGLang's prefetch settings; using its defaults", exc_info=True)
        settings = None
    settings = settings or _from_extra_config(extra)
    log.info("mooncake-hicache: SGLang prefetch settings: threshold %d tokens, timeout %.2f s + %.2f s per 1K tokens "
             "(%s)", settings.threshold_tokens, settings.timeout_base_s, settings.timeout_per_ki_token_s,
             settings.stop_policy)
    return settings
