"""``MooncakeHiCacheStorage``: SGLang's HiCache L3 storage interface on a mooncake-hicache ``Store``.

One stored value per KV page (per pool, per head shard when SGLang splits heads for
heterogeneous TP), named as :mod:`.keys` describes and moved as :mod:`.pool_view` describes:
zero copy between SGLang's host pool and the store. The hot path is v1
(``batch_exists``/``batch_set_v1``/``batch_get_v1``, called by SGLang's prefetch, prefetch-IO and
backup threads); v2 (hybrid side pools) is in :mod:`.hybrid_pools` and the generic tensor calls
in :mod:`.tensor_calls`.

Every call that SGLang's threads make is thread-safe and never raises: a failure is logged
(rate-limited) and reported as misses / ``False``. Registration (``register_mem_pool_host``,
``register_mem_host_pool_v2``) runs on SGLang's scheduler thread while it attaches the backend
and takes the instance lock.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from sglang.srt.mem_cache.hicache_storage import (
    HiCacheStorage,
    HiCacheStorageConfig,
    HiCacheStorageExtraInfo,
    PoolName,
)

from .. import __version__
from ..config import load_config
from ..errors import ErrorCode, StoreError
from ..store import Store
from . import keys as keyspace
from . import l3_layout
from .hybrid_pools import HybridPools
from .options import BackendOptions, parse_extra_config
from .pool_view import PoolView, is_mha_pool, pool_tensors, subtract, tensor_ranges
from .prefetch_settings import sglang_prefetch_settings
from .tensor_calls import TensorCalls

log = logging.getLogger("mooncake_hicache.sglang")

__all__ = ["MooncakeHiCacheStorage"]

_GIB = float(1 << 30)
CLASS_PATH = "mooncake_hicache.sglang.MooncakeHiCacheStorage"


class _RateLimitedLog:
    """Log the first failure of each kind at once, then at most one line per ``interval``."""

    def __init__(self, interval: float = 30.0):
        self._interval = interval
        self._lock = threading.Lock()
        self._last: Dict[str, float] = {}
        self._suppressed: Dict[str, int] = {}

    def __call__(self, what: str, message: str, *args: Any, exc_info: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(what)
            if last is not None and now - last < self._interval:
                self._suppressed[what] = self._suppressed.get(what, 0) + 1
                return
            self._last[what] = now
            suppressed = self._suppressed.pop(what, 0)
        if suppressed:
            message += f" ({suppressed} similar messages suppressed)"
        log.warning(message, *args, exc_info=exc_info)


class _Once:
    """A flag that is set by exactly one caller (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = False

    def first(self) -> bool:
        with self._lock:
            done, self._done = self._done, True
        return not done


def selection(mem_pool_host: Any) -> str:
    """How SGLang built us: ``cls(config, host_pool)`` for a registered name (``mooncake``),
    ``cls(config, kwargs)`` for ``--hicache-storage-backend dynamic``."""
    if isinstance(mem_pool_host, Mapping):
        return "--hicache-storage-backend dynamic"
    return "--hicache-storage-backend mooncake" if mem_pool_host is not None else "direct construction"


class MooncakeHiCacheStorage(TensorCalls, HybridPools, HiCacheStorage):
    """SGLang HiCache storage backend on mooncake-hicache.

    Built by SGLang as ``cls(storage_config, mem_pool_host)`` (``--hicache-storage-backend
    mooncake`` once our plugin has registered the name) or ``cls(storage_config, kwargs)``
    (``--hicache-storage-backend dynamic``; the host pool then arrives through
    ``register_mem_pool_host``). ``storage_config.extra_config`` is read by
    :func:`mooncake_hicache.sglang.options.parse_extra_config`."""

    def __init__(self, storage_config: Optional[HiCacheStorageConfig] = None, mem_pool_host: Any = None):
        self.storage_config = storage_config
        self._lock = threading.RLock()
        self._warn = _RateLimitedLog()
        self._no_depths_logged = _Once()
        self._closed = False
        self._registered: List[Tuple[int, int]] = []  # ranges given to store.register_buffer
        self.registered_pools: Dict[str, Any] = {}
        self._views: Dict[str, PoolView] = {}
        self._kv_view: Optional[PoolView] = None
        self._keys: Optional[keyspace.KeySpace] = None
        self.mem_pool_host = None
        self._read_config(storage_config)
        self.store = self._open_store(self.options)
        self._prefix_lru = self._dram_eviction() == "prefix_lru"
        self._has_prefetch = callable(getattr(self.store, "prefetch", None))
        self._prefetcher = self.store.prefetcher  # the prefetch policy (store config's prefetch section)
        self._prefetcher.settings = sglang_prefetch_settings(storage_config)
        self._init_metrics()
        self._log_served_by(selection(mem_pool_host))
        if mem_pool_host is not None and not isinstance(mem_pool_host, Mapping):
            self.register_mem_pool_host(mem_pool_host)

    # ---- setup -----------------------------------------------------------------------------

    def _read_config(self, c: Any) -> None:
        self.ranks = keyspace.RankScope.of(c)
        self.tp_rank, self.tp_size = self.ranks.tp_rank, self.ranks.tp_size
        self.pp_rank, self.pp_size = self.ranks.pp_rank, self.ranks.pp_size
        self.is_mla = bool(getattr(c, "is_mla_model", False))
        writer = getattr(c, "is_storage_writer", None) if c is not None else None
        self.is_writer = bool(writer) if writer is not None else (not self.is_mla or self.tp_rank == 0)
        self.enable_metrics = bool(getattr(c, "enable_storage_metrics", False))
        tp_lcm = getattr(c, "tp_lcm_size", None)
        self.split_factor = (int(tp_lcm) // self.tp_size) if (getattr(c, "should_split_heads", False) and tp_lcm) else 1
        self.tp_lcm_size = int(tp_lcm) if tp_lcm else None
        self.model_key = keyspace.model_key(getattr(c, "model_name", None))
        ranks = {"tp_rank": self.tp_rank, "tp_size": self.tp_size, "pp_rank": self.pp_rank,
                 "dp_rank": int(getattr(c, "dp_rank", 0) or 0), "cp_rank": self.ranks.cp_rank}
        self.options: BackendOptions = parse_extra_config(getattr(c, "extra_config", None), ranks)

    def _open_store(self, options: BackendOptions) -> Store:
        config = load_config(options.store_config)
        try:
            return Store.from_config(config)
        except StoreError as e:
            hint = ""
            if config.resolved_mode == "in_process" and config.tiers.nvme is not None:
                hint = (" With the in-process store every SGLang rank opens its own data file: put {tp_rank} "
                        "in tiers.nvme.path, or add a DRAM tier so the ranks share the host's node.")
            raise StoreError(f"mooncake-hicache: cannot open the store for SGLang: {e}.{hint}") from None

    def _dram_eviction(self) -> Optional[str]:
        dram = getattr(getattr(getattr(self.store, "config", None), "tiers", None), "dram", None)
        return getattr(dram, "eviction", None)

    def _tiers_text(self) -> str:
        tiers = getattr(getattr(self.store, "config", None), "tiers", None)
        names = [n for n in ("dram", "nvme") if getattr(tiers, n, None) is not None]
        return "+".join(names) or "none"

    def _log_served_by(self, how: str) -> None:
        log.info("mooncake-hicache: %s is served by %s (mooncake-hicache %s) on TP rank %d of %d: "
                 "store mode %s, tiers %s, %s", how, CLASS_PATH, __version__, self.tp_rank, self.tp_size,
                 getattr(self.store, "mode", "in_process"), self._tiers_text(),
                 "writer" if self.is_writer else "reader (MLA: the storage-writer rank writes)")

    def _key_space(self, pool: Any) -> keyspace.KeySpace:
        """The instance's key space, fixed by the first pool registered (SGLang's KV pool)."""
        if self._keys is None:
            fp = keyspace.fingerprint(keyspace.model_identity(), keyspace.pool_geometry(pool))
            self._keys = keyspace.KeySpace(self.options.key_tag, self.model_key, fp, self.ranks)
        return self._keys

    def _is_replicated(self, pool: Any, name: str) -> bool:
        if name == str(PoolName.KV):
            return self.is_mla
        return self.is_mla and name != str(PoolName.MAMBA) and not is_mha_pool(pool)

    def _make_view(self, pool: Any, name: str) -> PoolView:
        name = str(name)
        space = self._key_space(pool)
        replicated = self._is_replicated(pool, name)
        suffix = space.suffix(name, pool)
        if name == str(PoolName.KV) and self.split_factor > 1 and not replicated:
            base = self.tp_rank * self.split_factor
            names = [keyspace.ObjectName(space.prefix(False, base + j, self.tp_lcm_size), suffix)
                     for j in range(self.split_factor)]
            return PoolView(pool, name, names, replicated, self.split_factor)
        view = PoolView(pool, name, [keyspace.ObjectName(space.prefix(replicated), suffix)], replicated)
        log.info("mooncake-hicache: pool %s is stored under keys %s_<page hash>%s", name, view.names[0].prefix, suffix)
        return view

    def _register_memory(self, pool: Any) -> None:
        """Give the store every host tensor of ``pool`` once (zero-copy calls need it)."""
        for rng in tensor_ranges(pool_tensors(pool)):
            for s, e in subtract(rng, self._registered):
                self.store.register_buffer(s, e - s)
                bisect.insort(self._registered, (s, e))
                log.info("mooncake-hicache: registered %.1f MiB of host KV pool memory at 0x%x", (e - s) / (1 << 20), s)

    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        with self._lock:
            if mem_pool_host is self.mem_pool_host and self._kv_view is not None:
                return
            super().register_mem_pool_host(mem_pool_host)
            if getattr(mem_pool_host, "kv_buffer", None) is not None:
                self._register_memory(mem_pool_host)
            self._kv_view = self._make_view(mem_pool_host, str(PoolName.KV))
            self._views[str(PoolName.KV)] = self._kv_view

    def register_mem_host_pool_v2(self, host_pool: Any, host_pool_name: Any) -> None:
        with self._lock:
            name = str(host_pool_name)
            if name == str(PoolName.KV) and self._kv_view is not None:
                return  # the anchor arrived through register_mem_pool_host
            super().register_mem_host_pool_v2(host_pool, name)
            self._register_memory(host_pool)
            self._views[name] = self._make_view(host_pool, name)

    # ---- helpers ---------------------------------------------------------------------------

    def _usable(self) -> bool:
        return not self._closed

    def _depths(self, extra_info: Optional[HiCacheStorageExtraInfo], pages: Sequence[int]) -> Optional[List[int]]:
        """Each page's place in its prefix chain, when SGLang passes the chain's earlier keys."""
        prefix = getattr(extra_info, "prefix_keys", None) if extra_info is not None else None
        if prefix is None:
            if self._prefix_lru and self._no_depths_logged.first():
                log.warning("mooncake-hicache: tiers.dram.eviction is prefix_lru, but SGLang passes no prefix "
                            "depths, so every page is depth 0 and prefix_lru acts as lru. Add "
                            "\"hicache_storage_pass_prefix_keys\": true to --hicache-storage-backend-extra-config.")
            return None
        return [len(prefix) + p for p in pages]

    def _check_codes(self, op: str, codes: Sequence[int]) -> None:
        bad = [c for c in codes if c < 0 and c != ErrorCode.NOT_FOUND]
        if bad:
            self._warn(f"{op}-codes", "mooncake-hicache: %s: %d of %d objects failed (first: %s)",
                       op, len(bad), len(codes), ErrorCode.describe(bad[0]))

    def _leading_pages(self, view: PoolView, keys: Sequence[str],
                       extra_info: Optional[HiCacheStorageExtraInfo] = None) -> Tuple[int, List[str]]:
        """Number of leading pages of ``keys`` to report as hits, and the object keys. The prefetch
        policy decides among the leading stored pages and starts moving them into DRAM."""
        obj_keys = view.object_keys(keys)
        prefix = getattr(extra_info, "prefix_keys", None) if extra_info is not None else None
        hits = self._prefetcher.leading_pages(
            obj_keys, view.objects_per_page, offset_pages=len(prefix or ()), page_tokens=view.page_size,
            prev_key=prefix[-1] if prefix else None, last_key=keys[-1] if keys else None)
        return hits, obj_keys

    def _prefetch(self, obj_keys: Sequence[str]) -> None:
        """Promote keys of other pools that go with the planned pages (the policy's own plan is
        carried out in _leading_pages)."""
        if obj_keys and self._has_prefetch:
            try:
                self._prefetcher.prefetch_unplanned(list(obj_keys))
            except Exception:
                self._warn("prefetch", "mooncake-hicache: prefetch failed", exc_info=True)

    def _wrong_length(self, op: str, view: PoolView, host_indices: torch.Tensor, n: int) -> bool:
        if host_indices.numel() == n * view.page_size:
            return False
        self._warn(f"{op}-{view.name}-len", "mooncake-hicache: %s %s: %d host indices for %d pages of %d tokens; "
                   "nothing done", op, view.name, host_indices.numel(), n, view.page_size)
        return True

    def _set_pages(self, view: PoolView, keys: List[str], host_indices: torch.Tensor,
                   extra_info: Optional[HiCacheStorageExtraInfo]) -> List[bool]:
        n, m = len(keys), view.objects_per_page
        if self._wrong_length("put", view, host_indices, n):
            return [False] * n
        obj_keys = view.object_keys(keys)
        found = self.store.batch_is_exist(obj_keys)
        todo = self._prefetcher.to_write(obj_keys, found)  # present pages are not written again, unless declined
        ok = [True] * (n * m)
        if todo:
            ptrs, sizes = view.scatter_gather(host_indices, n)
            depths = self._depths(extra_info, [o // m for o in todo])
            start = time.perf_counter()
            kwargs = {"depths": depths} if depths is not None else {}
            codes = self.store.batch_put_from_multi_buffers(
                [obj_keys[o] for o in todo], [ptrs[o] for o in todo], [sizes[o] for o in todo], **kwargs)
            elapsed = time.perf_counter() - start
            self._check_codes(f"put {view.name}", codes)
            for o, code in zip(todo, codes):
                ok[o] = code == 0
            written = sum(sum(sizes[o]) for o, code in zip(todo, codes) if code == 0)
            self._record("set", len({o // m for o in todo}), written, elapsed)
        return [all(ok[p * m:(p + 1) * m]) for p in range(n)]

    def _get_pages(self, view: PoolView, keys: List[str], host_indices: torch.Tensor) -> List[bool]:
        n, m = len(keys), view.objects_per_page
        if self._wrong_length("get", view, host_indices, n):
            return [False] * n
        obj_keys = view.object_keys(keys)
        ptrs, sizes = view.scatter_gather(host_indices, n)
        start = time.perf_counter()
        codes = self.store.batch_get_into_multi_buffers(obj_keys, ptrs, sizes)
        elapsed = time.perf_counter() - start
        self._check_codes(f"get {view.name}", codes)
        ok = [code >= 0 and code == sum(sz) for code, sz in zip(codes, sizes)]
        if all(ok):  # what the prefetch policy's transfer estimates learn from
            self._prefetcher.observe_get(obj_keys, sum(codes), elapsed)
        pages = [all(ok[p * m:(p + 1) * m]) for p in range(n)]
        self._record("get", sum(pages), sum(sum(sizes[o]) for o in range(n * m) if ok[o]), elapsed)
        return pages

    # ---- v1: the zero-copy hot path --------------------------------------------------------

    def batch_exists(self, keys: List[str], extra_info: Optional[HiCacheStorageExtraInfo] = None) -> int:
        """Number of leading ``keys`` whose pages are stored. Starts promoting the hits to DRAM
        (when the store has a DRAM tier) so the ``batch_get_v1`` that follows reads DRAM."""
        try:
            view = self._kv_view
            if not keys or view is None or view.anchor_only or not self._usable():
                return 0
            hits, obj_keys = self._leading_pages(view, keys, extra_info)
            self._prefetch(obj_keys[:hits * view.objects_per_page])
            return hits
        except Exception:
            self._warn("exists", "mooncake-hicache: batch_exists failed; reporting a miss", exc_info=True)
            return 0

    def batch_set_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> List[bool]:
        n = len(keys)
        try:
            view = self._kv_view
            if view is None or not self._usable():
                return [False] * n
            if n == 0 or view.anchor_only:
                return [True] * n
            if view.replicated and not self.is_writer:
                return [True] * n  # MLA: the writer rank stores the pages every rank reads
            return self._set_pages(view, list(keys), host_indices, extra_info)
        except Exception:
            self._warn("set_v1", "mooncake-hicache: batch_set_v1 failed; %d pages not stored", n, exc_info=True)
            return [False] * n

    def batch_get_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> List[bool]:
        n = len(keys)
        try:
            view = self._kv_view
            if view is None or not self._usable():
                return [False] * n
            if n == 0 or view.anchor_only:
                return [True] * n  # a logical anchor carries no bytes; its side pools do (v2)
            return self._get_pages(view, list(keys), host_indices)
        except Exception:
            self._warn("get_v1", "mooncake-hicache: batch_get_v1 failed; reporting %d misses", n, exc_info=True)
            return [False] * n

    # ---- metrics ---------------------------------------------------------------------------

    def _init_metrics(self) -> None:
        self._metrics_lock = threading.Lock()
        self.prefetch_pgs: List[int] = []
        self.backup_pgs: List[int] = []
        self.prefetch_bandwidth: List[float] = []
        self.backup_bandwidth: List[float] = []

    def _record(self, kind: str, pages: int, nbytes: int, seconds: float) -> None:
        if not self.enable_metrics or pages <= 0:
            return
        bw = nbytes / _GIB / max(seconds, 1e-9)
        with self._metrics_lock:
            pgs, bws = (self.prefetch_pgs, self.prefetch_bandwidth) if kind == "get" else (self.backup_pgs, self.backup_bandwidth)
            pgs.append(pages)
            bws.append(bw)

    def get_stats(self):
        """SGLang's ``StorageMetrics`` for the calls since the last ``get_stats`` (pages per call and
        GiB/s), filled when SGLang enables storage metrics."""
        try:
            from sglang.srt.observability.metrics_collector import StorageMetrics
        except Exception:
            return None
        metrics = StorageMetrics()
        with self._metrics_lock:
            for name in ("prefetch_pgs", "backup_pgs", "prefetch_bandwidth", "backup_bandwidth"):
                getattr(metrics, name).extend(getattr(self, name))
                getattr(self, name).clear()
        return metrics

    def store_stats(self) -> dict:
        """The store's own figures (``Store.stats()``), or ``{}`` once closed."""
        try:
            return self.store.stats() if self._usable() else {}
        except Exception:
            return {}

    # ---- management ------------------------------------------------------------------------

    def key_prefixes(self) -> List[str]:
        """The key prefixes this instance writes under (one per rank scope), each ending in ``_``."""
        with self._lock:
            return sorted({name.prefix + "_" for view in self._views.values() for name in view.names})

    def clear(self) -> bool:
        """Remove this server's pages, and only those: every stored object whose key starts with
        one of this instance's key prefixes (``key_prefixes()``: tag, model and fingerprint, rank
        scope), from every tier of the shared store and for good. Other servers' and tenants'
        pages stay. Logs how many objects it removed; False (and a warning) if a removal failed."""
        try:
            if not self._usable():
                return False
            removed, failed = 0, []
            for prefix in self.key_prefixes():
                n = self.store.remove_prefix(prefix)
                if n < 0:
                    failed.append(f"{prefix} ({ErrorCode.describe(n)})")
                else:
                    removed += n
            if failed:
                log.warning("mooncake-hicache: clear() removed %d objects but failed for %s%s", removed, ", ".join(failed),
                            "; a DRAM-only store needs tiers.dram.keep_keys: true" if "UNSUPPORTED" in "".join(failed) else "")
                return False
            log.info("mooncake-hicache: clear() removed %d objects (keys starting with %s)", removed,
                     ", ".join(self.key_prefixes()) or "-")
            return True
        except Exception:
            self._warn("clear", "mooncake-hicache: clear failed", exc_info=True)
            return False

    def describe_l3_object_layout(self, *, sidecar_pool_specs: Sequence[Any] = (),
                                  swa_trailing_pages: Optional[int] = None, page_size: Optional[int] = None) -> dict:
        """The object layout of our keys in the envelope SGLang defines for KV routers (see
        :mod:`.l3_layout`)."""
        with self._lock:
            views = dict(self._views)
        return l3_layout.describe(views, is_mla=self.is_mla, pp_rank=self.pp_rank, pp_size=self.pp_size,
                                  sidecar_pool_specs=sidecar_pool_specs, swa_trailing_pages=swa_trailing_pages,
                                  page_size=page_size)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self.store.close()
        except Exception:
            log.warning("mooncake-hicache: closing the store failed", exc_info=True)
