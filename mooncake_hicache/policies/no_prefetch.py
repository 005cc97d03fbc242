"""``none``: report every leading hit, move nothing ahead of SGLang's get (which then reads NVMe
pages itself, promoting them as it goes)."""

from __future__ import annotations

from .base import PrefetchPlan, PrefetchPolicy, PrefetchRequest

__all__ = ["NoPrefetchPolicy"]


class NoPrefetchPolicy(PrefetchPolicy):
    name = "none"
    wants_locations = False
    prefetches = False

    def plan(self, request: PrefetchRequest) -> PrefetchPlan:
        return PrefetchPlan(report=request.pages)
