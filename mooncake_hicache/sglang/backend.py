"""``MooncakeHiCacheStorage``: SGLang's HiCache L3 storage interface on a mooncake-hicache ``Store``.

How pages are stored
--------------------
One stored value per KV page (per pool, per head shard when SGLang splits heads for
heterogeneous TP). The host pool's ``get_page_buffer_meta`` gives the page's pieces (K and V for
``page_first``/``page_first_direct``, K and V of every layer for ``layer_first``, ...); they are
written and read as one scatter-gather list, straight from and into the host pool (zero copy on
our side). Pieces that lie in one host tensor are ordered by address, which makes the value's
bytes exactly SGLang's own flat page (``host_pool.get_data_page(i, flat=True)``): the tensor
calls (``get``/``set``) and the zero-copy calls read each other's pages, and ``layer_first`` and
``page_first_direct`` pools (same flat page) share their pages.

Keys
----
``[tag/]model/scope/pool.format/hash`` where ``scope`` is ``tp{rank}of{size}`` (or ``mla`` for
rank-replicated MLA pools, which every TP rank reads and only the storage-writer rank writes),
then ``pp``, attention-``cp`` and ``dcp`` parts when those are in use; ``format`` names the page
byte order and dtype so a server restarted with another layout misses instead of reading wrong
bytes.

Every call that SGLang's threads make is thread-safe and never raises: a failure is logged
(rate-limited) and reported as misses / ``False``.
"""

from __future__ import annotations

import bisect
import inspect
import logging
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from sglang.srt.mem_cache.hicache_storage import (
    HiCacheStorage,
    HiCacheStorageConfig,
    HiCacheStorageExtraInfo,
    PoolHitPolicy,
    PoolName,
    PoolTransfer,
    PoolTransferResult,
)

from ..errors import ErrorCode, StoreError
from ..store import Store
from .options import BackendOptions, parse_extra_config

log = logging.getLogger("mooncake_hicache.sglang")

__all__ = ["MooncakeHiCacheStorage"]

_GIB = float(1 << 30)
# Layouts whose flat page (get_data_page(i, flat=True)) has the same bytes: layer-major pages.
_LAYER_MAJOR = ("layer_first", "page_first_direct")


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


class _PoolView:
    """How the pages of one host pool become stored values: key prefixes (one per object of a
    page) and the scatter-gather pieces of each object."""

    def __init__(self, pool: Any, name: str, prefixes: List[str], replicated: bool,
                 split_factor: int = 1):
        self.pool = pool
        self.name = str(name)
        self.prefixes = prefixes
        self.objects_per_page = len(prefixes)
        self.replicated = replicated
        self.split_factor = split_factor
        self.page_size = int(getattr(pool, "logical_page_size", None) or getattr(pool, "page_size", 1) or 1)
        self.anchor_only = getattr(pool, "kv_buffer", "missing") is None
        self.tensor_ranges = sorted(_tensor_ranges(_pool_tensors(pool)))

    def object_keys(self, keys: Sequence[str]) -> List[str]:
        return [prefix + key for key in keys for prefix in self.prefixes]

    def scatter_gather(self, host_indices: torch.Tensor, num_pages: int) -> Tuple[List[List[int]], List[List[int]]]:
        """Pieces of every object of ``num_pages`` pages at ``host_indices``: ``(ptrs, sizes)``,
        one list per object, in ``object_keys`` order."""
        if self.split_factor > 1:
            ptrs, sizes = self.pool.get_split_heads_page_buffer_meta(host_indices, self.split_factor)
        else:
            ptrs, sizes = self.pool.get_page_buffer_meta(host_indices)
        objects = num_pages * self.objects_per_page
        if objects == 0 or len(ptrs) % objects or len(ptrs) != len(sizes):
            raise ValueError(f"pool {self.name}: {len(ptrs)} buffer pieces for {num_pages} pages "
                             f"x {self.objects_per_page} objects; cannot split them evenly")
        per = len(ptrs) // objects
        all_ptrs: List[List[int]] = []
        all_sizes: List[List[int]] = []
        for o in range(objects):
            pieces = [(int(p), int(n)) for p, n in zip(ptrs[o * per:(o + 1) * per], sizes[o * per:(o + 1) * per]) if n]
            if len(pieces) > 1 and self._one_tensor(pieces):
                pieces.sort()
            all_ptrs.append([p for p, _ in pieces])
            all_sizes.append([n for _, n in pieces])
        return all_ptrs, all_sizes

    def _one_tensor(self, pieces: List[Tuple[int, int]]) -> bool:
        """True when every piece lies in the same host tensor (then address order is the flat
        page order and is the same in every process)."""
        starts = [s for s, _ in self.tensor_ranges]
        i = bisect.bisect_right(starts, pieces[0][0]) - 1
        if i < 0:
            return False
        lo, hi = self.tensor_ranges[i]
        return all(lo <= p and p + n <= hi for p, n in pieces)


def _pool_tensors(pool: Any) -> List[torch.Tensor]:
    """Every host tensor of ``pool`` that page pieces can point into."""
    found: List[torch.Tensor] = []
    candidates: List[Any] = [getattr(pool, "kv_buffer", None)]
    get_hybrid = getattr(pool, "get_hybrid_pool_buffer", None)
    if callable(get_hybrid):
        try:
            candidates.extend(get_hybrid() or [])
        except Exception:  # some pools build these lazily; the kv_buffer is enough then
            pass
    for attr in ("k_buffer", "v_buffer", "index_k_buffer", "index_k_scale_buffer"):
        try:
            candidates.append(getattr(pool, attr, None))
        except Exception:
            pass
    for t in candidates:
        if isinstance(t, (list, tuple)):
            found.extend(x for x in t if isinstance(x, torch.Tensor))
        elif isinstance(t, torch.Tensor):
            found.append(t)
    return found


def _tensor_ranges(tensors: Sequence[torch.Tensor]) -> List[Tuple[int, int]]:
    """Merged ``[start, end)`` address ranges of the storages behind ``tensors``."""
    ranges = []
    for t in tensors:
        if t.device.type != "cpu":
            continue
        storage = t.untyped_storage()
        if storage.nbytes() > 0:
            ranges.append((storage.data_ptr(), storage.data_ptr() + storage.nbytes()))
    ranges.sort()
    merged: List[Tuple[int, int]] = []
    for s, e in ranges:
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def _subtract(rng: Tuple[int, int], covered: Sequence[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """Parts of ``rng`` outside the sorted, disjoint ranges ``covered``."""
    s, e = rng
    out = []
    for cs, ce in covered:
        if ce <= s or cs >= e:
            continue
        if cs > s:
            out.append((s, cs))
        s = max(s, ce)
        if s >= e:
            break
    if s < e:
        out.append((s, e))
    return out


class MooncakeHiCacheStorage(HiCacheStorage):
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
        self._closed = False
        self._registered: List[Tuple[int, int]] = []  # ranges given to store.register_buffer
        self.registered_pools: Dict[str, Any] = {}
        self._views: Dict[str, _PoolView] = {}
        self._kv_view: Optional[_PoolView] = None
        self.mem_pool_host = None

        c = storage_config
        self.tp_rank = int(getattr(c, "tp_rank", 0) or 0)
        self.tp_size = int(getattr(c, "tp_size", 1) or 1)
        self.pp_rank = int(getattr(c, "pp_rank", 0) or 0)
        self.pp_size = int(getattr(c, "pp_size", 1) or 1)
        self.cp_rank = int(getattr(c, "attn_cp_rank", 0) or 0)
        self.cp_size = int(getattr(c, "attn_cp_size", 1) or 1)
        self.dp_rank = int(getattr(c, "dp_rank", 0) or 0)
        self.dcp_rank = int(getattr(c, "dcp_rank", 0) or 0)
        self.dcp_size = int(getattr(c, "dcp_size", 1) or 1)
        self.is_mla = bool(getattr(c, "is_mla_model", False))
        writer = getattr(c, "is_storage_writer", None) if c is not None else None
        self.is_writer = bool(writer) if writer is not None else (not self.is_mla or self.tp_rank == 0)
        self.enable_metrics = bool(getattr(c, "enable_storage_metrics", False))
        tp_lcm = getattr(c, "tp_lcm_size", None)
        self.split_factor = (int(tp_lcm) // self.tp_size) if (getattr(c, "should_split_heads", False) and tp_lcm) else 1
        self.tp_lcm_size = int(tp_lcm) if tp_lcm else None

        model = getattr(c, "model_name", None)
        if not model:
            log.warning("mooncake-hicache: SGLang passed no model name; pages are stored under 'unnamed-model' "
                        "and would be shared with any other unnamed model using this store")
            model = "unnamed-model"
        self.model_key = "-".join(str(model).split("/"))

        ranks = {"tp_rank": self.tp_rank, "tp_size": self.tp_size, "pp_rank": self.pp_rank,
                 "dp_rank": self.dp_rank, "cp_rank": self.cp_rank}
        self.options: BackendOptions = parse_extra_config(getattr(c, "extra_config", None), ranks)
        self.store = self._open_store(self.options)
        self._depths_supported = "depths" in _parameters(self.store.batch_put_from_multi_buffers)
        self._has_prefetch = callable(getattr(self.store, "prefetch", None))

        self._metrics_lock = threading.Lock()
        self.prefetch_pgs: List[int] = []
        self.backup_pgs: List[int] = []
        self.prefetch_bandwidth: List[float] = []
        self.backup_bandwidth: List[float] = []

        log.info("mooncake-hicache: SGLang storage backend ready (store mode %s, tiers %s, key scope %s, %s)",
                 getattr(self.store, "mode", "in_process"), self._tiers_text(),
                 self._base_prefix(self._scope(self.is_mla)) + "...",
                 "writer" if self.is_writer else "reader (MLA: another rank writes)")

        if mem_pool_host is not None and not isinstance(mem_pool_host, Mapping):
            self.register_mem_pool_host(mem_pool_host)

    # ---- setup -----------------------------------------------------------------------------

    def _open_store(self, options: BackendOptions) -> Store:
        try:
            return Store.from_config(options.store_config)
        except StoreError as e:
            hint = ""
            if "in use" in str(e) or "lock" in str(e).lower():
                hint = (" Each SGLang rank opens its own store when the store runs in-process: give every rank "
                        "its own data file (put {tp_rank} in tiers.nvme.path) or use a DRAM tier so the ranks "
                        "share the host's node.")
            raise StoreError(f"mooncake-hicache: cannot open the store for SGLang: {e}.{hint}") from None

    def _tiers_text(self) -> str:
        tiers = getattr(getattr(self.store, "config", None), "tiers", None)
        if tiers is None:
            return "?"
        names = [n for n in ("dram", "nvme") if getattr(tiers, n, None) is not None]
        return "+".join(names) or "none"

    def _scope(self, replicated: bool, tp_rank: Optional[int] = None, tp_size: Optional[int] = None) -> str:
        parts = ["mla" if replicated else f"tp{self.tp_rank if tp_rank is None else tp_rank}of{self.tp_size if tp_size is None else tp_size}"]
        if self.pp_size > 1:
            parts.append(f"pp{self.pp_rank}of{self.pp_size}")
        if self.cp_size > 1:
            parts.append(f"cp{self.cp_rank}of{self.cp_size}")
        if self.dcp_size > 1:
            lp = getattr(self.storage_config, "logical_page_size", None)
            parts.append(f"dcp{self.dcp_rank}of{self.dcp_size}-tp{self.tp_size}-lp{lp}")
        return ".".join(parts)

    def _base_prefix(self, scope: str) -> str:
        tag = f"{self.options.key_tag}/" if self.options.key_tag else ""
        return f"{tag}{self.model_key}/{scope}/"

    @staticmethod
    def _format_tag(pool: Any) -> str:
        layout = getattr(pool, "layout", None) or "flat"
        layout = "lm" if layout in _LAYER_MAJOR else ("tm" if layout == "page_first" else str(layout))
        dtype = str(getattr(pool, "dtype", "")).replace("torch.", "") or "raw"
        return f"{layout}.{dtype}"

    def _make_view(self, pool: Any, name: str) -> _PoolView:
        name = str(name)
        if name == str(PoolName.KV):
            replicated = self.is_mla
        else:
            replicated = self.is_mla and name != str(PoolName.MAMBA) and not _is_mha_pool(pool)
        fmt = f"{name}.{self._format_tag(pool)}"
        if name == str(PoolName.KV) and self.split_factor > 1 and not replicated:
            base = self.tp_rank * self.split_factor
            prefixes = [self._base_prefix(self._scope(False, base + j, self.tp_lcm_size)) + fmt + "/"
                        for j in range(self.split_factor)]
            return _PoolView(pool, name, prefixes, replicated, self.split_factor)
        return _PoolView(pool, name, [self._base_prefix(self._scope(replicated)) + fmt + "/"], replicated)

    def _register_memory(self, pool: Any) -> None:
        """Give the store every host tensor of ``pool`` once (zero-copy calls need it)."""
        for rng in _tensor_ranges(_pool_tensors(pool)):
            for s, e in _subtract(rng, self._registered):
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

    def _depths(self, extra_info: Optional[HiCacheStorageExtraInfo], pages: Sequence[int], per_page: int) -> Optional[List[int]]:
        prefix = getattr(extra_info, "prefix_keys", None) if extra_info is not None else None
        if not self._depths_supported or prefix is None:
            return None
        return [len(prefix) + p for p in pages for _ in range(per_page)]

    def _check_codes(self, op: str, codes: Sequence[int]) -> None:
        bad = [c for c in codes if c < 0 and c != ErrorCode.NOT_FOUND]
        if bad:
            self._warn(f"{op}-codes", "mooncake-hicache: %s: %d of %d objects failed (first: %s)",
                       op, len(bad), len(codes), ErrorCode.describe(bad[0]))

    def _record(self, kind: str, pages: int, nbytes: int, seconds: float) -> None:
        if not self.enable_metrics or pages <= 0:
            return
        bw = nbytes / _GIB / max(seconds, 1e-9)
        with self._metrics_lock:
            if kind == "get":
                self.prefetch_pgs.append(pages)
                self.prefetch_bandwidth.append(bw)
            else:
                self.backup_pgs.append(pages)
                self.backup_bandwidth.append(bw)

    def _leading_pages(self, view: _PoolView, keys: Sequence[str]) -> Tuple[int, List[str]]:
        """Number of leading pages of ``keys`` whose objects are all stored, and the object keys."""
        obj_keys = view.object_keys(keys)
        found = self.store.batch_is_exist(obj_keys)
        m = view.objects_per_page
        for page in range(len(keys)):
            if any(found[page * m + j] != 1 for j in range(m)):
                return page, obj_keys
        return len(keys), obj_keys

    def _prefetch(self, obj_keys: Sequence[str]) -> None:
        if obj_keys and self.options.prefetch_on_exists and self._has_prefetch:
            try:
                self.store.prefetch(list(obj_keys))
            except Exception:
                self._warn("prefetch", "mooncake-hicache: prefetch failed", exc_info=True)

    def _set_pages(self, view: _PoolView, keys: List[str], host_indices: torch.Tensor,
                   extra_info: Optional[HiCacheStorageExtraInfo]) -> List[bool]:
        n, m = len(keys), view.objects_per_page
        if host_indices.numel() != n * view.page_size:
            self._warn(f"set-{view.name}-len", "mooncake-hicache: %s: %d host indices for %d pages of %d tokens; nothing written",
                       view.name, host_indices.numel(), n, view.page_size)
            return [False] * n
        obj_keys = view.object_keys(keys)
        found = self.store.batch_is_exist(obj_keys)
        todo = [o for o in range(n * m) if found[o] != 1]  # pages already present are not written again
        ok = [True] * (n * m)
        if todo:
            ptrs, sizes = view.scatter_gather(host_indices, n)
            depths = self._depths(extra_info, [o // m for o in todo], 1)
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

    def _get_pages(self, view: _PoolView, keys: List[str], host_indices: torch.Tensor) -> List[bool]:
        n, m = len(keys), view.objects_per_page
        if host_indices.numel() != n * view.page_size:
            self._warn(f"get-{view.name}-len", "mooncake-hicache: %s: %d host indices for %d pages of %d tokens; nothing read",
                       view.name, host_indices.numel(), n, view.page_size)
            return [False] * n
        obj_keys = view.object_keys(keys)
        ptrs, sizes = view.scatter_gather(host_indices, n)
        start = time.perf_counter()
        codes = self.store.batch_get_into_multi_buffers(obj_keys, ptrs, sizes)
        elapsed = time.perf_counter() - start
        self._check_codes(f"get {view.name}", codes)
        ok = [code >= 0 and code == sum(sz) for code, sz in zip(codes, sizes)]
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
            hits, obj_keys = self._leading_pages(view, keys)
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

    # ---- v2: hybrid pools (Mamba, SWA, DSA indexer, ...) -----------------------------------

    def batch_exists_v2(self, keys: List[str], pool_transfers: Optional[List[PoolTransfer]] = None,
                        extra_info: Optional[HiCacheStorageExtraInfo] = None) -> PoolTransferResult:
        try:
            view = self._kv_view
            if not keys or view is None or not self._usable():
                return PoolTransferResult(0, {}, [])
            if view.anchor_only:
                kv_pages, kv_obj_keys = len(keys), []
            else:
                kv_pages, kv_obj_keys = self._leading_pages(view, keys)
            hit_count: Dict[str, int] = {PoolName.KV: kv_pages} if kv_pages else {}
            restorable = list(range(1, kv_pages + 1))
            if not restorable:
                return PoolTransferResult(0, hit_count, [])

            prepared = []
            all_keys: List[str] = []
            for transfer in pool_transfers or []:
                pview = self._views.get(str(transfer.name))
                if pview is None:
                    raise ValueError(f"pool {transfer.name} was never registered (register_mem_host_pool_v2)")
                obj_keys = pview.object_keys(keys[:kv_pages])
                prepared.append((transfer, pview.objects_per_page, len(all_keys), obj_keys))
                all_keys.extend(obj_keys)
            found = self.store.batch_is_exist(all_keys) if all_keys else []

            prefetch_keys = list(kv_obj_keys[:kv_pages * view.objects_per_page])
            for transfer, m, start, obj_keys in prepared:
                present = [all(found[start + p * m + j] == 1 for j in range(m)) for p in range(kv_pages)]
                policy = PoolHitPolicy(transfer.hit_policy)
                if policy == PoolHitPolicy.ALL_PAGES:
                    boundary = present.index(False) if False in present else kv_pages
                    allowed = set(range(1, boundary + 1))
                elif policy == PoolHitPolicy.TRAILING_PAGES:
                    window = max(1, len(transfer.keys) if transfer.keys else 1)
                    allowed = {end for end in range(1, kv_pages + 1)
                               if all(present[max(0, end - window):end])}
                    boundary = max(allowed, default=0)
                else:  # BLOCK_GROUPS: own verdict over leading whole groups; never gates the KV hit
                    group = max(1, int(getattr(transfer, "group_pages", 0) or 1))
                    groups = 0
                    while (groups + 1) * group <= kv_pages and all(present[groups * group:(groups + 1) * group]):
                        groups += 1
                    boundary = groups * group
                    allowed = None
                if boundary:
                    hit_count[transfer.name] = boundary
                if allowed is not None:
                    restorable = [p for p in restorable if p in allowed]
                prefetch_keys.extend(k for p, k in enumerate(obj_keys) if present[p // m])
            final = restorable[-1] if restorable else 0
            self._prefetch(prefetch_keys)
            return PoolTransferResult(final, hit_count, restorable)
        except Exception:
            self._warn("exists_v2", "mooncake-hicache: batch_exists_v2 failed; reporting a miss", exc_info=True)
            return PoolTransferResult(0, {}, [])

    def _batch_io_v2(self, transfers: List[PoolTransfer], is_set: bool,
                     extra_info: Optional[HiCacheStorageExtraInfo]) -> Dict[str, List[bool]]:
        results: Dict[str, List[bool]] = {}
        for transfer in transfers:
            keys = list(transfer.keys or [])
            try:
                view = self._views.get(str(transfer.name))
                if view is None:
                    raise ValueError(f"pool {transfer.name} was never registered (register_mem_host_pool_v2)")
                if not keys or not self._usable():
                    results[transfer.name] = [False] * len(keys)
                    continue
                host_indices = transfer.host_indices
                if host_indices is None:
                    raise ValueError(f"pool {transfer.name}: transfer without host_indices")
                host_indices = host_indices.detach().to("cpu")
                if is_set:
                    if view.replicated and not self.is_writer:
                        results[transfer.name] = [True] * len(keys)
                    else:
                        results[transfer.name] = self._set_pages(view, keys, host_indices, extra_info)
                else:
                    results[transfer.name] = self._get_pages(view, keys, host_indices)
            except Exception:
                self._warn(f"v2-{transfer.name}", "mooncake-hicache: batch_%s_v2 on pool %s failed",
                           "set" if is_set else "get", transfer.name, exc_info=True)
                results[transfer.name] = [False] * len(keys)
        return results

    def batch_get_v2(self, transfers: List[PoolTransfer],
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> Dict[str, List[bool]]:
        try:
            return self._batch_io_v2(list(transfers or []), False, extra_info)
        except Exception:
            self._warn("get_v2", "mooncake-hicache: batch_get_v2 failed", exc_info=True)
            return {t.name: [False] * len(t.keys or []) for t in transfers or []}

    def batch_set_v2(self, transfers: List[PoolTransfer],
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> Dict[str, List[bool]]:
        try:
            return self._batch_io_v2(list(transfers or []), True, extra_info)
        except Exception:
            self._warn("set_v2", "mooncake-hicache: batch_set_v2 failed", exc_info=True)
            return {t.name: [False] * len(t.keys or []) for t in transfers or []}

    # ---- tensor calls (SGLang's generic, non-zero-copy path) -------------------------------

    def _tensor_key(self, key: str) -> str:
        # The KV pool's own key (with the whole page of this rank as one value), so tensor calls
        # and zero-copy calls read each other's pages; "raw" before a host pool is registered.
        view = self._kv_view
        fmt = self._format_tag(view.pool) if view is not None else "raw"
        return self._base_prefix(self._scope(self.is_mla)) + f"{PoolName.KV.value}.{fmt}/" + key

    def _registered_range(self, ptr: int, nbytes: int) -> bool:
        starts = [s for s, _ in self._registered]
        i = bisect.bisect_right(starts, ptr) - 1
        return i >= 0 and ptr + nbytes <= self._registered[i][1]

    def _put_one(self, key: str, value: Any = None, ptr: Any = None, size: Any = None) -> bool:
        skey = self._tensor_key(key)
        if self.store.batch_is_exist([skey])[0] == 1:
            return True  # already stored
        if isinstance(value, torch.Tensor):
            t = value.detach()
            if t.device.type != "cpu":
                t = t.cpu()
            nbytes = t.numel() * t.element_size()
            if t.is_contiguous() and nbytes and self._registered_range(t.data_ptr(), nbytes):
                return self.store.batch_put_from([skey], [t.data_ptr()], [nbytes])[0] == 0
            raw = t.contiguous().reshape(-1).view(torch.uint8).numpy()
            return self.store.put(skey, memoryview(raw)) == 0
        if isinstance(value, (bytes, bytearray, memoryview)):
            return self.store.put(skey, value) == 0
        if ptr is not None and size is not None:
            ptr, size = int(ptr), int(size)
            if self._registered_range(ptr, size):
                return self.store.batch_put_from([skey], [ptr], [size])[0] == 0
            import ctypes
            return self.store.put(skey, ctypes.string_at(ptr, size)) == 0
        raise ValueError("set needs a tensor value, bytes, or target_location and target_sizes")

    def _get_one(self, key: str, target: Any = None, size: Any = None) -> Any:
        skey = self._tensor_key(key)
        if isinstance(target, torch.Tensor):
            nbytes = target.numel() * target.element_size()
            if target.device.type == "cpu" and target.is_contiguous() and nbytes and self._registered_range(target.data_ptr(), nbytes):
                code = self.store.batch_get_into([skey], [target.data_ptr()], [nbytes])[0]
                return target if code == nbytes else None
            data = self.store.get(skey)
            if len(data) != nbytes or not data:
                return None
            src = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(target.dtype).reshape(target.shape)
            target.copy_(src)
            return target
        if target is not None and size is not None:
            ptr, size = int(target), int(size)
            if self._registered_range(ptr, size):
                code = self.store.batch_get_into([skey], [ptr], [size])[0]
                return target if code == size else None
            data = self.store.get(skey)
            if len(data) != size or not data:
                return None
            import ctypes
            ctypes.memmove(ptr, data, size)
            return target
        data = self.store.get(skey)
        if not data:
            return None
        out = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        dtype = getattr(self.mem_pool_host, "dtype", None)
        if isinstance(dtype, torch.dtype) and len(data) % dtype.itemsize == 0:
            out = out.view(dtype)
        return out

    def get(self, key: str, target_location: Optional[Any] = None, target_sizes: Optional[Any] = None) -> Optional[torch.Tensor]:
        try:
            if not self._usable():
                return None
            return self._get_one(key, target_location, target_sizes)
        except Exception:
            self._warn("get", "mooncake-hicache: get failed; reporting a miss", exc_info=True)
            return None

    def batch_get(self, keys: List[str], target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> List[Optional[torch.Tensor]]:
        targets = list(target_locations) if target_locations is not None else [None] * len(keys)
        sizes = list(target_sizes) if target_sizes is not None else [None] * len(keys)
        return [self.get(k, t, s) for k, t, s in zip(keys, targets, sizes)]

    def set(self, key: str, value: Optional[Any] = None, target_location: Optional[Any] = None,
            target_sizes: Optional[Any] = None) -> bool:
        try:
            if not self._usable():
                return False
            if self.is_mla and not self.is_writer:
                return True  # MLA: the writer rank stores what every rank reads
            return self._put_one(key, value, target_location, target_sizes)
        except Exception:
            self._warn("set", "mooncake-hicache: set failed", exc_info=True)
            return False

    def batch_set(self, keys: List[str], values: Optional[Any] = None, target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> bool:
        vals = list(values) if values is not None else [None] * len(keys)
        locs = list(target_locations) if target_locations is not None else [None] * len(keys)
        sizes = list(target_sizes) if target_sizes is not None else [None] * len(keys)
        return all([self.set(k, v, l, s) for k, v, l, s in zip(keys, vals, locs, sizes)])

    def exists(self, key: str) -> bool:
        try:
            if not self._usable():
                return False
            return self.store.batch_is_exist([self._tensor_key(key)])[0] == 1
        except Exception:
            self._warn("exists1", "mooncake-hicache: exists failed; reporting a miss", exc_info=True)
            return False

    # ---- management ------------------------------------------------------------------------

    def clear(self) -> bool:
        """Drop every page in the store (the store has no per-model removal yet)."""
        try:
            if not self._usable():
                return False
            code = self.store.remove_all()
            log.info("mooncake-hicache: cleared the store (%s)", "ok" if code == 0 else ErrorCode.describe(code))
            return code == 0
        except Exception:
            self._warn("clear", "mooncake-hicache: clear failed", exc_info=True)
            return False

    def get_stats(self):
        """SGLang's ``StorageMetrics`` for the calls since the last ``get_stats`` (pages per call and
        GiB/s), filled when SGLang enables storage metrics."""
        try:
            from sglang.srt.observability.metrics_collector import StorageMetrics
        except Exception:
            return None
        metrics = StorageMetrics()
        with self._metrics_lock:
            metrics.prefetch_pgs.extend(self.prefetch_pgs)
            metrics.backup_pgs.extend(self.backup_pgs)
            metrics.prefetch_bandwidth.extend(self.prefetch_bandwidth)
            metrics.backup_bandwidth.extend(self.backup_bandwidth)
            self.prefetch_pgs.clear()
            self.backup_pgs.clear()
            self.prefetch_bandwidth.clear()
            self.backup_bandwidth.clear()
        return metrics

    def store_stats(self) -> dict:
        """The store's own figures (``Store.stats()``), or ``{}`` once closed."""
        try:
            return self.store.stats() if self._usable() else {}
        except Exception:
            return {}

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self.store.close()
        except Exception:
            log.warning("mooncake-hicache: closing the store failed", exc_info=True)


def _is_mha_pool(pool: Any) -> bool:
    try:
        from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost
    except Exception:
        return hasattr(pool, "v_buffer") and hasattr(pool, "head_num")
    return isinstance(pool, MHATokenToKVPoolHost)


def _parameters(fn: Any) -> Mapping[str, Any]:
    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
