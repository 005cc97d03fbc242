"""``prefix_order``: report every leading hit and promote them all, in prefix order, 16 pages a step
(the behaviour before policies existed, and the default)."""

from __future__ import annotations

from .base import PrefetchPlan, PrefetchPolicy, PrefetchRequest

__all__ = ["PrefixOrderPolicy"]


class PrefixOrderPolicy(PrefetchPolicy):
    name = "prefix_order"
    wants_locations = False  # the store skips pages already in DRAM itself

    def plan(self, request: PrefetchRequest) -> PrefetchPlan:
        return PrefetchPlan(report=request.pages, prefetch=range(request.pages))
