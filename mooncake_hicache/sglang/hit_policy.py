"""SGLang's per-pool hit policies for ``batch_exists_v2`` (hybrid models: SWA, Mamba, DSA, ...).

Given which leading KV pages are present in one side pool, a policy answers: up to which page
does this pool have a verdict (``boundary``, reported per pool) and which prefix lengths may be
restored (``allowed``; ``None`` when the pool never gates the KV hit). The semantics are those
of ``PoolHitPolicy`` in ``sglang.srt.mem_cache.hicache_storage`` (0.5.23), checked against
SGLang's own file backend in the tests.
"""

from __future__ import annotations

from typing import Any, List, Optional, Set, Tuple

from sglang.srt.mem_cache.hicache_storage import PoolHitPolicy


def all_pages(present: List[bool]) -> Tuple[int, Optional[Set[int]]]:
    """Every page in ``[0, end)`` must be present (e.g. a DSA indexer)."""
    boundary = present.index(False) if False in present else len(present)
    return boundary, set(range(1, boundary + 1))


def trailing_pages(present: List[bool], window: int) -> Tuple[int, Optional[Set[int]]]:
    """Only the last ``window`` pages before ``end`` must be present (SWA, Mamba state)."""
    allowed = {end for end in range(1, len(present) + 1) if all(present[max(0, end - window):end])}
    return max(allowed, default=0), allowed


def block_groups(present: List[bool], group: int) -> Tuple[int, Optional[Set[int]]]:
    """Whole groups of ``group`` pages from the start; a verdict of its own, never a gate."""
    groups = 0
    while (groups + 1) * group <= len(present) and all(present[groups * group:(groups + 1) * group]):
        groups += 1
    return groups * group, None


def verdict(transfer: Any, present: List[bool]) -> Tuple[int, Optional[Set[int]]]:
    """``(boundary, allowed)`` of one ``PoolTransfer`` given its pages' presence."""
    policy = PoolHitPolicy(transfer.hit_policy)
    if policy == PoolHitPolicy.ALL_PAGES:
        return all_pages(present)
    if policy == PoolHitPolicy.TRAILING_PAGES:
        return trailing_pages(present, max(1, len(transfer.keys) if transfer.keys else 1))
    return block_groups(present, max(1, int(getattr(transfer, "group_pages", 0) or 1)))
