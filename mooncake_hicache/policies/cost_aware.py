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

SGLang asks about a request 128 pages at a time and stops at the first batch that reports fewer
pages than it asked about, so declining part of a full batch also gives up the request's later
pages, the dearest to recompute. When a full batch would be cut, the policy weighs the later pages
by the chance the request's stored prefix reaches them (``RunLengths``, from recent requests) at
the batch's last tier, stopping where that expectation is best; if going on saves time, the whole
batch is reported (``continued_batches`` in the stats).

Pages of a place the policy keeps declining are never measured again; every ``probe_every``
declining plans of a place, ``probe_pages`` more pages of it are reported (``probe_pages`` in the
stats) so the estimate follows the hardware.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate, compress, repeat
from operator import add, sub
import threading
from typing import List, Optional, Sequence, Tuple

from ..tiers import Tier
from .base import PrefetchPlan, PrefetchPolicy, PrefetchRequest
from .estimator import Place

__all__ = ["CostAwarePolicy"]

Run = Tuple[int, int, Place]   # pages [start, end) at one place
MANY_RUNS = 24                # past this many runs, one pass over the pages costs less than the loop
_ON_NVME = frozenset((int(Tier.NVME), int(Tier.REMOTE_NVME)))
MIN_RUNS_SEEN = 32            # request ends seen before later pages are weighed (continuation)


def runs_of(tiers: Optional[Sequence[int]], nodes: Optional[Sequence[Optional[str]]], n: int,
            limit: Optional[int] = None) -> Optional[List[Run]]:
    """The maximal runs of consecutive pages at the same place (unknown tiers count as NVMe), or
    None once there are more than ``limit``."""
    if tiers is None:
        return [(0, n, (int(Tier.NVME), None))] if n else []
    if nodes is None:
        try:
            codes = bytes(tiers if len(tiers) == n else tiers[:n])   # every tier code fits a byte
        except ValueError:
            codes = None
        if codes is not None:
            return _byte_runs(codes, limit)
    out: List[Run] = []
    start = 0
    for i in range(1, n + 1):
        if i == n or tiers[i] != tiers[start] or (nodes is not None and nodes[i] != nodes[start]):
            out.append((start, i, (int(tiers[start]), None if nodes is None else nodes[start])))
            if limit is not None and len(out) > limit:
                return None
            start = i
    return out


def _byte_runs(codes: bytes, limit: Optional[int]) -> Optional[List[Run]]:
    """runs_of for tier codes in a bytes object: each run's end is found with bytes.find (memchr)
    of the other codes present, so a batch of few runs costs a few C calls."""
    n, values = len(codes), set(codes)
    others = {v: [w for w in values if w != v] for v in values}
    out: List[Run] = []
    start = 0
    while start < n:
        if limit is not None and len(out) == limit:
            return None
        v = codes[start]
        end = n
        for w in others[v]:
            i = codes.find(w, start)
            if 0 <= i < end:
                end = i
        out.append((start, end, (v, None)))
        start = end
    return out


def _running_latency(keys: Sequence, costs: dict) -> List[float]:
    """Per page, the largest latency of the places up to it (it changes where a place first
    appears: a few list extensions, not a call per page)."""
    firsts = sorted((keys.index(k), costs[k][1]) for k in costs)
    out: List[float] = []
    top = 0.0
    for j, (start, lat) in enumerate(firsts):
        top = max(top, lat)
        end = firsts[j + 1][0] if j + 1 < len(firsts) else len(keys)
        out.extend([top] * (end - start))
    return out


class CostAwarePolicy(PrefetchPolicy):
    name = "cost_aware"

    def __init__(self, context):
        super().__init__(context)
        self._lock = threading.Lock()   # guards _continued
        self._continued = 0

    def stats(self) -> dict:
        with self._lock:
            return {"continued_batches": self._continued}

    def plan(self, request: PrefetchRequest) -> PrefetchPlan:
        r = request
        if r.pages <= 0:
            return PrefetchPlan(0)
        page_bytes = r.page_bytes or self.context.recompute.shape.kv_bytes_per_token * r.page_tokens
        runs = runs_of(r.tiers, r.nodes, r.pages, limit=MANY_RUNS)
        if runs is None:   # pages of many short runs: one pass over every page instead
            return self._plan_paged(r, page_bytes)
        best, best_gain, all_gain = self.best_prefix(r, runs, page_bytes)
        best = self._go_on(r, best, best_gain, all_gain, runs[-1][2], page_bytes)
        probe = self._probe(r, [place for start, end, place in runs if end > best], best)
        report = best + probe
        order: Sequence[int] = ()
        if self._worth_moving(r, report):
            order = self.deadline_order(runs, report, page_bytes)
        return PrefetchPlan(report=report, prefetch=order, batch_pages=self.context.config.batch_pages,
                            probe_pages=probe)

    @staticmethod
    def _worth_moving(r: PrefetchRequest, report: int) -> bool:
        """SGLang drops a hit shorter than its threshold, unless the batch goes on in the next one."""
        more_to_come = report == r.pages == r.batch_pages
        return more_to_come or (r.offset_pages + report) * r.page_tokens >= r.settings.threshold_tokens

    def _budget(self, r: PrefetchRequest) -> float:
        """Seconds of load SGLang waits for, counting the request's earlier batches."""
        deadline = r.settings.deadline_s(max(r.requested_tokens, r.batch_pages * r.page_tokens, 1))
        return float("inf") if deadline is None else deadline - r.loaded_before_s

    def best_prefix(self, r: PrefetchRequest, runs: List[Run], page_bytes: int) -> Tuple[int, float, Optional[float]]:
        """The ``k`` that minimises ``L(k) - R(k)`` with ``L(k)`` within SGLang's deadline (0 if
        no prefix saves time), that least ``L - R``, and ``L - R`` of every page (None when they do
        not all land before the deadline)."""
        est = self.context.estimator
        recompute = self._recompute_of_first(r)
        budget = self._budget(r)
        costs = {place: est.cost(place) for place in {place for _, _, place in runs}}
        best_k, best_gain = 0, 0.0
        load = latency = 0.0
        for start, end, place in runs:
            spb, lat = costs[place]
            per_page = page_bytes * spb
            latency = max(latency, lat)
            room = budget - latency - load
            if per_page * (end - start) <= room:
                fits = end - start
            else:
                fits = min(end - start, int(room // per_page)) if room > 0 and per_page > 0 else 0
            if fits:
                # the ends of the stretch where L - R is concave (k = start was looked at before)
                for k in ((start + 1, start + fits) if fits > 1 else (start + 1,)):
                    gain = latency + load + (k - start) * per_page - recompute(k)
                    if gain < best_gain:
                        best_k, best_gain = k, gain
            if fits < end - start:
                return best_k, best_gain, None   # later pages land after SGLang's deadline
            load += (end - start) * per_page
        return best_k, best_gain, latency + load - recompute(r.pages)

    def _go_on(self, r: PrefetchRequest, best: int, best_gain: float, all_gain: Optional[float],
               last: Place, page_bytes: int) -> int:
        """``r.pages`` instead of ``best`` when the batch is full and reporting all of it, so that
        SGLang asks about the request's later pages, is expected to save more."""
        if best >= r.pages or r.pages != r.batch_pages or all_gain is None:
            return best
        if all_gain + self._later_pages_gain(r, last, page_bytes, all_gain) >= best_gain:
            return best
        with self._lock:
            self._continued += 1
        return r.pages

    def _later_pages_gain(self, r: PrefetchRequest, last: Place, page_bytes: int, all_gain: float) -> float:
        """Expected ``L - R`` of the request's pages after this batch at ``last``'s cost, each
        128-page bin weighted by the chance the stored prefix reaches it, up to the best bin to
        stop after and within SGLang's deadline (0 until enough requests were seen)."""
        lengths = self.context.run_lengths
        if lengths is None or len(lengths) < MIN_RUNS_SEEN:
            return 0.0
        per_page = page_bytes * self.context.estimator.cost(last)[0]
        rec, tokens = self.context.recompute, r.page_tokens
        room = self._budget(r) - (all_gain + rec.seconds(r.offset_pages * tokens, r.pages * tokens))
        total = best = 0.0
        for start, end, chance in lengths.beyond(r.offset_pages + r.pages):
            room -= (end - start) * per_page
            if room < 0:
                break
            total += chance * ((end - start) * per_page - rec.seconds(start * tokens, (end - start) * tokens))
            best = min(best, total)
        return best

    def _plan_paged(self, r: PrefetchRequest, page_bytes: int) -> PrefetchPlan:
        """The same plan as ``plan``, for pages in many short runs: ``L(k) - R(k)`` at every ``k``
        from a few C-speed passes over the pages (accumulate, map) instead of a Python loop over
        the runs."""
        keys = r.tiers[:r.pages] if r.nodes is None else list(zip(r.tiers[:r.pages], r.nodes[:r.pages]))
        place = (lambda k: (int(k), None)) if r.nodes is None else (lambda k: (int(k[0]), k[1]))
        costs = {k: self.context.estimator.cost(place(k)) for k in set(keys)}
        per_page = list(map({k: page_bytes * c[0] for k, c in costs.items()}.__getitem__, keys))
        load = list(map(add, accumulate(per_page), _running_latency(keys, costs)))   # L(k) at index k - 1
        fits = bisect_right(load, self._budget(r))                    # L only grows
        rec = self._recompute_of_first(r)
        a2 = (rec(2) - 2 * rec(1)) / 2                                # R(k) = a1 k + a2 k^2
        recompute = accumulate(accumulate(repeat(2 * a2, fits - 1), initial=rec(1)))
        gain = list(map(sub, load[:fits], recompute))
        low = min(gain, default=0.0)
        best = gain.index(low) + 1 if low < 0 else 0
        best = self._go_on(r, best, min(low, 0.0), gain[-1] if fits == r.pages else None, place(keys[-1]), page_bytes)
        probe = self._probe(r, [place(k) for k in dict.fromkeys(keys[best:])], best)
        report = best + probe
        order: Sequence[int] = ()
        if self._worth_moving(r, report):
            movers = {k for k in costs if self._moves(place(k))}
            moving = list(compress(range(report), map(movers.__contains__, keys[:report])))
            if len({keys[i] for i in moving}) > 1:   # by latest start: reached at L(i) - c_i, takes c_i
                moving.sort(key=lambda i: load[i] - 2 * per_page[i])
            order = moving
        return PrefetchPlan(report=report, prefetch=order, batch_pages=self.context.config.batch_pages,
                            probe_pages=probe)

    def _recompute_of_first(self, r: PrefetchRequest):
        """``k -> R(k)``: seconds to recompute the batch's first ``k`` pages (cost_model.py's
        formula, with the constants taken out of the loop)."""
        rec = self.context.recompute
        shape, first, tokens = rec.shape, float(r.offset_pages * r.page_tokens), r.page_tokens
        dense, attention, flops = 2.0 * shape.params, 4.0 * shape.layers * shape.q_dim, rec.flops_per_s

        def recompute(k: int) -> float:
            n = float(k * tokens)
            return (dense * n + attention * (first * n + n * (n - 1.0) / 2.0)) / flops
        return recompute

    def _probe(self, r: PrefetchRequest, declined: Sequence[Place], report: int) -> int:
        """Pages to report past ``report`` to measure the first declined place again (0 mostly);
        ``declined``: the places of the pages past ``report``, in page order (repeats allowed)."""
        if report >= r.pages:
            return 0
        est = self.context.estimator
        for place in dict.fromkeys(declined):
            est.note_declined(place)
        pages = self.context.config.estimates.probe_pages
        if pages and est.needs_probe(declined[0]):
            return min(pages, r.pages - report)
        return 0

    @staticmethod
    def _moves(place: Place) -> bool:
        """Whether a prefetch helps: the holder promotes NVMe pages into its DRAM; a page in any
        member's DRAM is read from there as it is."""
        return place[0] in _ON_NVME

    def deadline_order(self, runs: List[Run], report: int, page_bytes: int) -> Sequence[int]:
        """Reported pages on an NVMe tier (``_moves``), the one that must start loading soonest first: a
        page is needed once the pages before it are loaded, and must start its own load that much
        earlier (for one such place, this is prefix order)."""
        moving = [(s, min(e, report), p) for s, e, p in runs if s < report and self._moves(p)]
        if len(moving) == 1:
            return range(moving[0][0], moving[0][1])
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
