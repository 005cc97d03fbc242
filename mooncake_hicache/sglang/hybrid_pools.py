"""SGLang's v2 storage calls for hybrid models: side pools (SWA, Mamba, DSA indexer, drafts, ...)
next to the KV pool, each registered with ``register_mem_host_pool_v2`` and moved by
``batch_exists_v2``/``batch_get_v2``/``batch_set_v2`` with one ``PoolTransfer`` per pool.

A mixin of :class:`~mooncake_hicache.sglang.backend.MooncakeHiCacheStorage`: it uses the
backend's ``store``, ``_kv_view``/``_views``, ``_leading_pages``, ``_get_pages``/``_set_pages``,
``_prefetch``, ``_usable()``, ``_warn`` and ``is_writer``. Thread-safe; every call reports
failures as misses (``PoolTransferResult`` built with keywords against SGLang's dataclass, or
``False`` per page) and never raises into SGLang's threads.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from sglang.srt.mem_cache.hicache_storage import (
    HiCacheStorageExtraInfo,
    PoolName,
    PoolTransfer,
    PoolTransferResult,
)

from . import hit_policy


def no_hit() -> PoolTransferResult:
    return PoolTransferResult(kv_hit_pages=0, extra_pool_hit_pages={}, restorable_prefix_pages=[])


def _all_false(transfers: Optional[List[PoolTransfer]]) -> Dict[str, List[bool]]:
    out: Dict[str, List[bool]] = {}
    try:
        for t in transfers or []:
            out[t.name] = [False] * len(t.keys or [])
    except Exception:  # a malformed transfer list: nothing more can be said about it
        pass
    return out


class HybridPools:
    """``batch_exists_v2``, ``batch_get_v2`` and ``batch_set_v2`` of ``HiCacheStorage``."""

    def _side_pages_present(self, transfers: List[PoolTransfer], keys: List[str], kv_pages: int) -> List[List[bool]]:
        """For each transfer, whether each of the first ``kv_pages`` pages has all its objects."""
        prepared, all_keys = [], []
        for transfer in transfers:
            view = self._views.get(str(transfer.name))
            if view is None:
                raise ValueError(f"pool {transfer.name} was never registered (register_mem_host_pool_v2)")
            obj_keys = view.object_keys(keys[:kv_pages])
            prepared.append((view.objects_per_page, len(all_keys), obj_keys))
            all_keys.extend(obj_keys)
        found = self.store.batch_is_exist(all_keys) if all_keys else []
        return [[all(found[start + p * m + j] == 1 for j in range(m)) for p in range(kv_pages)]
                for m, start, _ in prepared]

    def _exists_v2(self, keys: List[str], transfers: List[PoolTransfer]) -> PoolTransferResult:
        view = self._kv_view
        if view.anchor_only:
            kv_pages, kv_obj_keys = len(keys), []
        else:
            kv_pages, kv_obj_keys = self._leading_pages(view, keys)
        hit_count: Dict[str, int] = {PoolName.KV: kv_pages} if kv_pages else {}
        if not kv_pages:
            return PoolTransferResult(kv_hit_pages=0, extra_pool_hit_pages=hit_count, restorable_prefix_pages=[])
        restorable = list(range(1, kv_pages + 1))
        prefetch_keys = list(kv_obj_keys[:kv_pages * view.objects_per_page])
        for transfer, present in zip(transfers, self._side_pages_present(transfers, keys, kv_pages)):
            boundary, allowed = hit_policy.verdict(transfer, present)
            if boundary:
                hit_count[transfer.name] = boundary
            if allowed is not None:
                restorable = [p for p in restorable if p in allowed]
            side = self._views[str(transfer.name)]
            side_keys = side.object_keys(keys[:kv_pages])
            prefetch_keys.extend(k for o, k in enumerate(side_keys) if present[o // side.objects_per_page])
        self._prefetch(prefetch_keys)
        return PoolTransferResult(kv_hit_pages=restorable[-1] if restorable else 0,
                                  extra_pool_hit_pages=hit_count, restorable_prefix_pages=restorable)

    def batch_exists_v2(self, keys: List[str], pool_transfers: Optional[List[PoolTransfer]] = None,
                        extra_info: Optional[HiCacheStorageExtraInfo] = None) -> PoolTransferResult:
        try:
            if not keys or self._kv_view is None or not self._usable():
                return no_hit()
            return self._exists_v2(list(keys), list(pool_transfers or []))
        except Exception:
            self._warn("exists_v2", "mooncake-hicache: batch_exists_v2 failed; reporting a miss", exc_info=True)
            return no_hit()

    def _transfer_io(self, transfer: PoolTransfer, is_set: bool,
                     extra_info: Optional[HiCacheStorageExtraInfo]) -> List[bool]:
        keys = list(transfer.keys or [])
        view = self._views.get(str(transfer.name))
        if view is None:
            raise ValueError(f"pool {transfer.name} was never registered (register_mem_host_pool_v2)")
        if not keys or not self._usable():
            return [False] * len(keys)
        if transfer.host_indices is None:
            raise ValueError(f"pool {transfer.name}: transfer without host_indices")
        host_indices = transfer.host_indices.detach().to("cpu")
        if not is_set:
            return self._get_pages(view, keys, host_indices)
        if view.replicated and not self.is_writer:
            return [True] * len(keys)  # the writer rank stores what every rank reads
        return self._set_pages(view, keys, host_indices, extra_info)

    def _batch_io_v2(self, transfers: List[PoolTransfer], is_set: bool,
                     extra_info: Optional[HiCacheStorageExtraInfo]) -> Dict[str, List[bool]]:
        results: Dict[str, List[bool]] = {}
        for transfer in transfers:
            try:
                results[transfer.name] = self._transfer_io(transfer, is_set, extra_info)
            except Exception:
                name = getattr(transfer, "name", None)
                self._warn(f"v2-{name}", "mooncake-hicache: batch_%s_v2 on pool %s failed",
                           "set" if is_set else "get", name, exc_info=True)
                results.update(_all_false([transfer]))
        return results

    def _safe_io_v2(self, transfers, is_set: bool, extra_info) -> Dict[str, List[bool]]:
        try:
            return self._batch_io_v2(list(transfers or []), is_set, extra_info)
        except Exception:
            self._warn(f"io_v2-{is_set}", "mooncake-hicache: batch_%s_v2 failed", "set" if is_set else "get", exc_info=True)
            return _all_false(transfers)

    def batch_get_v2(self, transfers: List[PoolTransfer],
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> Dict[str, List[bool]]:
        return self._safe_io_v2(transfers, False, extra_info)

    def batch_set_v2(self, transfers: List[PoolTransfer],
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> Dict[str, List[bool]]:
        return self._safe_io_v2(transfers, True, extra_info)
