"""How the pages of one SGLang host pool become stored values.

A ``PoolView`` knows, for one registered host pool, the names of a page's objects (one per page,
or one per head shard when SGLang splits heads for heterogeneous TP) and the scatter-gather
pieces of each object in host memory (from the pool's own ``get_page_buffer_meta``). Pieces
that lie in one host tensor are put in address order, which makes a value's bytes exactly
SGLang's own flat page (``host_pool.get_data_page(i, flat=True)``): the tensor calls and the
zero-copy calls read each other's pages, and pools of one byte order share pages.

Read-only after construction; any thread may use it.
"""

from __future__ import annotations

import bisect
from typing import Any, List, Sequence, Tuple

import torch

from .keys import ObjectName, object_keys


class PoolView:
    """Object names and host-memory pieces of the pages of one host pool."""

    def __init__(self, pool: Any, name: str, names: List[ObjectName], replicated: bool, split_factor: int = 1):
        self.pool = pool
        self.name = str(name)
        self.names = names
        self.objects_per_page = len(names)
        self.replicated = replicated
        self.split_factor = split_factor
        self.page_size = int(getattr(pool, "logical_page_size", None) or getattr(pool, "page_size", 1) or 1)
        self.anchor_only = getattr(pool, "kv_buffer", "missing") is None
        self.tensor_ranges = sorted(tensor_ranges(pool_tensors(pool)))

    def object_keys(self, keys: Sequence[str]) -> List[str]:
        return object_keys(self.names, list(keys))

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


def pool_tensors(pool: Any) -> List[torch.Tensor]:
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


def tensor_ranges(tensors: Sequence[torch.Tensor]) -> List[Tuple[int, int]]:
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


def subtract(rng: Tuple[int, int], covered: Sequence[Tuple[int, int]]) -> List[Tuple[int, int]]:
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


def is_mha_pool(pool: Any) -> bool:
    try:
        from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost
    except Exception:
        return hasattr(pool, "v_buffer") and hasattr(pool, "head_num")
    return isinstance(pool, MHATokenToKVPoolHost)
