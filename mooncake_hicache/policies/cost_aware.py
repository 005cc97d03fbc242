"""``cost_aware``: report the leading pages whose load beats recomputing them, and promote the
reported pages that are not in DRAM yet in deadline order.

Reporting the first ``k`` leading pages saves their prefill, ``R(k)`` (the recompute cost of the
tokens they hold, at their position; ``cost_model.py``), and costs their load, ``L(k)`` (the
transfer estimates of each page's place, plus the latency of the get). The rest of the request is
prefilled either way, so the time to first token is smallest for the ``k`` that minimises
``L(k) - R(k)``, among the ``k`` whose load ends before SGLang's prefetch deadline. The pages past
that ``k`` are declined: SGLang recomputes them, and they stay where they are.

Finding that ``k`` takes a look at a few points per run of pages on the same place, not at every
page: within a run, ``L`` grows linearly and ``R`` grows faster and faster (the attention term), so
``L - R`` is concave there and its least value is at an end of the run.

Pages of a place the policy keeps declining are never measured again; every ``probe_every``
declining plans of a place, ``probe_pages`` more pages of it are reported (``probe_pages`` in the
stats) so the estimate follows the hardware.
"""

from __future__ import annotations

import re
from typing import List, Optional, Sequence, Tuple

from ..tiers import Tier
from .base import PrefetchPlan, PrefetchPolicy, PrefetchRequest
from .estimator import Place

__all__ = ["CostAwarePolicy"]

_RUNS = re.compile(rb"(.)\1*", re.DOTALL)
Run = Tuple[int, int, Place]   # pages [start, end) at one place


def runs_of(tiers: Optional[Sequence[int]], nodes: Optional[Sequence[Optional[str]]], n: int) -> List[Run]:
    """The maximal runs of consecutive pages at the same place. Unknown tiers count as NVMe."""
    if tiers is None:
        return [(0, n, (int(Tier.NVME), None))] if n else []
    if nodes is None and all(0 <= t < 256 for t in tiers[:n]):
        return [(m.start(), m.end(), (m.group()[0], None)) for m in _RUNS.finditer(bytes(tiers[:n]))]
    out: List[Run] = []
    start = 0
    for i in range(1, n + 1):
        if i == n or tiers[i] != tiers[start] or (nodes is not None and nodes[i] != nodes[start]):
            out.append((start, i, (int(tiers[start]), None if nodes is None else nodes[start])))
            start = i
    return out


class CostAwarePolicy(PrefetchPolicy):
    name = "cost_aware"

    def plan(self, request: PrefetchRequest) -> PrefetchPlan:
        r = request
        if r.pages <= 0:
            return PrefetchPlan(0)
        runs = runs_of(r.tiers, r.nodes, r.pages)
        page_bytes = r.page_bytes or self.context.recompute.shape.kv_bytes_per_token * r.page_tokens
        best = self.best_prefix(r, runs, page_bytes)
        report, probe = best, self._probe(r, runs, best)
        report += probe
        order: Sequence[int] = ()
        more_to_come = report == r.pages == r.batch_pages
        if more_to_come or (r.offset_pages + report) * r.page_tokens >= r.settings.threshold_tokens:
            order = self.deadline_order(runs, report, page_bytes)   # SGLang drops shorter hits
        return PrefetchPlan(report=report, prefetch=order, batch_pages=self.context.config.batch_pages,
                            probe_pages=probe)

    def best_prefix(self, r: PrefetchRequest, runs: List[Run], page_bytes: int) -> int:
        """The ``k`` that minimises ``L(k) - R(k)`` with ``L(k)`` within SGLang's deadline (0 if
        no prefix saves time)."""
        est, rec = self.context.estimator, self.context.recompute
        first_token = r.offset_pages * r.page_tokens
        deadline = r.settings.deadline_s(max(r.requested_tokens, r.batch_pages * r.page_tokens, 1))
        budget = float("inf") if deadline is None else deadline - r.loaded_before_s
        best_k, best_gain = 0, 0.0
        load = latency = 0.0
        for start, end, place in runs:
            spb, lat = est.cost(place)
            per_page = page_bytes * spb
            latency = max(latency, lat)
            room = budget - latency - load
            if per_page * (end - start) <= room:
                fits = end - start
            else:
                fits = min(end - start, int(room // per_page)) if room > 0 and per_page > 0 else 0
            for k in {start + 1, start + fits} if fits else ():
                gain = latency + load + (k - start) * per_page - rec.seconds(first_token, k * r.page_tokens)
                if gain < best_gain:
                    best_k, best_gain = k, gain
            if fits < end - start:
                break  # later pages land after SGLang's deadline
            load += (end - start) * per_page
        return best_k

    def _probe(self, r: PrefetchRequest, runs: List[Run], report: int) -> int:
        """Pages to report past ``report`` to measure the first declined place again (0 mostly)."""
        if report >= r.pages:
            return 0
        est = self.context.estimator
        declined = [place for start, end, place in runs if end > report]
        for place in dict.fromkeys(declined):
            est.note_declined(place)
        pages = self.context.config.estimates.probe_pages
        if pages and est.needs_probe(declined[0]):
            return min(pages, r.pages - report)
        return 0

    @staticmethod
    def _moves(place: Place) -> bool:
        return place[0] != Tier.DRAM or place[1] is not None

    def deadline_order(self, runs: List[Run], report: int, page_bytes: int) -> List[int]:
        """Reported pages not in local DRAM, the one that must start loading soonest first: a
        page is needed once the pages before it are loaded, and must start its own load that much
        earlier (for one such place, this is prefix order)."""
        moving = [(s, min(e, report), p) for s, e, p in runs if s < report and self._moves(p)]
        if len({p for _, _, p in moving}) <= 1:
            return [i for s, e, _ in moving for i in range(s, e)]
        est = self.context.estimator
        keyed = []
        before = 0.0   # estimated time for the get to reach the start of the run
        for s, e, p in runs:
            if s >= report:
                break
            per_page = page_bytes * est.cost(p)[0]
            if self._moves(p):
                keyed.extend((before + (i - s) * per_page - per_page, i) for i in range(s, min(e, report)))
            before += (min(e, report) - s) * per_page
        return [i for _, i in sorted(keyed)]
