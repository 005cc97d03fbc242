"""``Prefetcher``: runs the configured prefetch policy on SGLang's existence questions and carries
out its plans with the store's background promotion (``Store.prefetch``).

One per ``Store`` (``Store.prefetcher``); the SGLang backend calls it from ``batch_exists`` and
``batch_exists_v2`` and reports its gets back (``observe_get``), which is what the transfer
estimates learn from. ``Store.stats()["prefetch"]`` shows its counters.

Thread-safe: SGLang's prefetch, prefetch-I/O and scheduler threads call it at once. One lock
guards the counters, the remembered page places and the request chains, held for bookkeeping
only (never across a store call or a policy's ``plan``).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import Counter, OrderedDict
from typing import Any, List, Optional, Sequence, Tuple

from ..config import PrefetchConfig
from .base import PolicyContext, PrefetchPlan, PrefetchPolicy, PrefetchRequest, SGLangPrefetchSettings
from .cost_model import RecomputeModel
from .estimator import Place, TransferEstimator
from .registry import load_policy
from .run_lengths import RunLengths

log = logging.getLogger("mooncake_hicache.prefetch")

__all__ = ["Prefetcher"]

_PLACES_KEPT = 1 << 16   # object keys whose place is remembered, to attribute the gets that follow
_DECLINED_KEPT = 1 << 16  # declined object keys whose recomputed pages are written again (to DRAM)
_CHAINS_KEPT = 1 << 10   # requests whose next batch may still come
_COUNTERS = ("queries", "candidate_pages", "reported_pages", "declined_pages", "declined_tokens", "probe_pages",
             "prefetch_pages", "prefetch_queued", "prefetch_errors", "observed_gets", "plan_errors")


def leading_run(codes: Sequence[int], objects_per_page: int, pages: int, want_tiers: bool
                ) -> Tuple[int, Optional[Sequence[int]]]:
    """Leading pages whose objects are all present (code > 0) and, if wanted, each page's tier
    (its slowest object's: the largest code; a ``bytes`` of tier codes for one object a page)."""
    m = objects_per_page
    if m == 1:
        try:
            b = bytes(codes)   # C speed; fails only on a negative code (a bad key)
        except ValueError:
            n = next(i for i, c in enumerate(codes) if c <= 0)
            return n, (bytes(codes[:n]) if want_tiers else None)
        n = b.find(0)
        n = pages if n < 0 else n
        return n, (b[:n] if want_tiers else None)
    tiers: List[int] = []
    for p in range(pages):
        obj = codes[p * m:(p + 1) * m]
        if min(obj) <= 0:
            break
        tiers.append(max(obj))
    return len(tiers), (tiers if want_tiers else None)


class Prefetcher:
    """See the module doc. ``settings`` are SGLang's prefetch knobs (the backend sets them from
    SGLang's server arguments); ``policy`` overrides ``config.policy`` (tests, benchmarks)."""

    def __init__(self, store: Any, config: Optional[PrefetchConfig] = None, *,
                 settings: Optional[SGLangPrefetchSettings] = None, policy: Optional[PrefetchPolicy] = None):
        # A weak reference: the store holds its Prefetcher, and a cycle would keep a closed store
        # (and its arena) alive until a full garbage collection.
        self._store = weakref.proxy(store) if type(store).__weakrefoffset__ else store
        self.config = config or PrefetchConfig()
        self.settings = settings or SGLangPrefetchSettings()
        self.estimator = TransferEstimator(self.config.estimates)
        self.recompute = RecomputeModel.from_config(self.config.cost_model)
        self.run_lengths = RunLengths()
        self.context = PolicyContext(self.config, self.estimator, self.recompute, self.run_lengths)
        self.policy = policy if policy is not None else load_policy(self.config.policy, self.context)
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._plan_s_total = self._plan_s_max = 0.0
        self._places: "OrderedDict[str, Place]" = OrderedDict()
        self._chains: "OrderedDict[str, Tuple[int, float]]" = OrderedDict()
        self._declined: "OrderedDict[str, None]" = OrderedDict()
        self._thread = threading.local()   # this thread's last reported object keys
        self._warned = False
        log.info("mooncake-hicache: prefetch policy %s", self.policy.name)

    # ---- SGLang's existence question ----------------------------------------------------------

    def leading_pages(self, obj_keys: Sequence[str], objects_per_page: int = 1, *, offset_pages: int = 0,
                      page_tokens: int = 64, page_bytes: int = 0, prev_key: Optional[str] = None,
                      last_key: Optional[str] = None) -> int:
        """How many leading pages to report as hits for one of SGLang's existence questions.

        ``obj_keys`` holds ``objects_per_page`` store keys per page, page by page. ``offset_pages``
        is the request's pages before this batch, ``prev_key``/``last_key`` SGLang's key of the page
        before the batch and of its last page (they link the batches of one request). Carries out
        the policy's prefetch. Store errors propagate (the backend turns them into a miss)."""
        m = max(1, int(objects_per_page))
        batch = len(obj_keys) // m
        wants = self.policy.wants_locations
        codes = self._store.batch_locate(obj_keys) if wants else self._store.batch_is_exist(obj_keys)
        pages, tiers = leading_run(codes, m, batch, wants)
        if pages < batch:
            self.run_lengths.record(offset_pages + pages)   # where this request's stored pages end
        first, before_s = self._chain_start(prev_key, offset_pages)
        request = PrefetchRequest(pages=pages, tiers=tiers, batch_pages=batch, offset_pages=offset_pages,
                                  page_tokens=page_tokens, page_bytes=page_bytes, loaded_before_s=before_s,
                                  requested_tokens=(offset_pages + batch - first) * page_tokens,
                                  settings=self.settings)
        plan, plan_s = self._plan(request)
        report, order = self._checked(plan, pages)
        queued = self._execute(obj_keys, m, order, plan.batch_pages)
        self._thread.reported = frozenset(obj_keys[:report * m])
        self._remember(obj_keys, m, report, tiers)
        if report < pages:
            self._note_declined(obj_keys[report * m:pages * m])
        if pages == batch and report < batch:
            self.run_lengths.record(offset_pages + batch, ended=False)   # reached at least here
        if report == batch and last_key is not None:
            self._chain_extend(last_key, first, before_s + self._load_estimate(request, report))
        self._count(request, report, plan, len(order), queued, plan_s)
        return report

    def prefetch_unplanned(self, obj_keys: Sequence[str]) -> int:
        """Promote keys SGLang reported alongside the last plan of this thread that the plan did not
        cover (side pools of hybrid models), if the policy promotes at all. Returns keys queued."""
        if not obj_keys or not self.policy.prefetches:
            return 0
        reported = getattr(self._thread, "reported", frozenset())
        rest = [k for k in obj_keys if k not in reported]
        return self._execute(rest, 1, range(len(rest)), 0) if rest else 0

    def to_write(self, obj_keys: Sequence[str], found: Sequence[int]) -> List[int]:
        """Which of ``obj_keys`` SGLang's backup should store, given ``Store.batch_is_exist``'s
        ``found``: the absent ones, and the ones a plan declined (SGLang recomputed them, so their
        bytes are at hand: storing them again puts them in DRAM, where the next request finds them
        fast, instead of leaving them on the slow tier that had them declined)."""
        with self._lock:
            declined = self._declined
            out = [i for i, c in enumerate(found) if c != 1 or obj_keys[i] in declined]
            for i in out:
                declined.pop(obj_keys[i], None)
        return out

    def observe_get(self, obj_keys: Sequence[str], nbytes: int, seconds: float) -> None:
        """A get of ``obj_keys`` moved ``nbytes`` in ``seconds``: learn each place's cost from it
        (only when every key's place is known from a recent plan)."""
        if not obj_keys or not self.policy.wants_locations:
            return
        with self._lock:
            places = [self._places.get(k) for k in obj_keys]
        if any(p is None for p in places):
            return
        self.estimator.observe(Counter(places), nbytes, seconds)
        with self._lock:
            self._counts["observed_gets"] += 1

    def stats(self) -> dict:
        """Counters, planning time and the current transfer estimates, as one flat dict."""
        with self._lock:
            out: dict = {"policy": self.policy.name, **self._counts}
            queries = self._counts["queries"]
            out["plan_us_mean"] = round(self._plan_s_total / queries * 1e6, 2) if queries else 0.0
            out["plan_us_max"] = round(self._plan_s_max * 1e6, 2)
        if self.policy.wants_locations:
            out.update(self.estimator.snapshot())
        out.update(self.policy.stats())
        return out

    # ---- helpers ------------------------------------------------------------------------------

    def _plan(self, request: PrefetchRequest) -> Tuple[PrefetchPlan, float]:
        if request.pages == 0:
            return PrefetchPlan(0), 0.0
        t0 = time.perf_counter()
        try:
            plan = self.policy.plan(request)
        except Exception:
            # a broken policy must not cost the hits: report them all, move nothing
            log.warning("mooncake-hicache: prefetch policy %s failed; reporting every hit", self.policy.name,
                        exc_info=not self._warned)
            self._warned = True
            with self._lock:
                self._counts["plan_errors"] += 1
            plan = PrefetchPlan(request.pages)
        return plan, time.perf_counter() - t0

    def _checked(self, plan: PrefetchPlan, pages: int) -> Tuple[int, Sequence[int]]:
        report = max(0, min(int(plan.report), pages))
        order = plan.prefetch
        if isinstance(order, range) and order.step == 1 and (not order or (order[0] >= 0 and order[-1] < report)):
            return report, order   # a run of pages: valid as it is (the common plan)
        order = [i for i in order if 0 <= i < report]
        if len(order) != len(plan.prefetch) or len(set(order)) != len(order) or report != plan.report:
            if not self._warned:
                log.warning("mooncake-hicache: prefetch policy %s returned report=%s of %d pages and prefetch "
                            "entries outside the reported pages or repeated; they were dropped",
                            self.policy.name, plan.report, pages)
                self._warned = True
            order = list(dict.fromkeys(order))
        return report, order

    def _execute(self, obj_keys: Sequence[str], m: int, order: Sequence[int], batch_pages: int) -> int:
        if not order:
            return 0
        keys = [obj_keys[i * m + j] for i in order for j in range(m)]
        try:
            if batch_pages:
                return int(self._store.prefetch(keys, batch_pages * m))
            return int(self._store.prefetch(keys))
        except Exception:
            log.warning("mooncake-hicache: prefetch of %d keys failed", len(keys), exc_info=not self._warned)
            self._warned = True
            with self._lock:
                self._counts["prefetch_errors"] += 1
            return 0

    def _remember(self, obj_keys: Sequence[str], m: int, report: int, tiers: Optional[List[int]]) -> None:
        if tiers is None or report == 0:
            return
        with self._lock:
            places = self._places
            for i in range(report):
                place = (tiers[i], None)
                for j in range(m):
                    key = obj_keys[i * m + j]
                    places[key] = place
                    places.move_to_end(key)
            while len(places) > _PLACES_KEPT:
                places.popitem(last=False)

    def _note_declined(self, keys: Sequence[str]) -> None:
        with self._lock:
            declined = self._declined
            for key in keys:
                declined[key] = None
                declined.move_to_end(key)
            while len(declined) > _DECLINED_KEPT:
                declined.popitem(last=False)

    def _chain_start(self, prev_key: Optional[str], offset_pages: int) -> Tuple[int, float]:
        """(the request's first page offset seen, estimated load of its earlier batches)."""
        if prev_key is not None:
            with self._lock:
                found = self._chains.pop(prev_key, None)
            if found is not None:
                return found
        return offset_pages, 0.0

    def _chain_extend(self, last_key: str, first: int, load_s: float) -> None:
        with self._lock:
            self._chains[last_key] = (first, load_s)
            while len(self._chains) > _CHAINS_KEPT:
                self._chains.popitem(last=False)

    def _load_estimate(self, request: PrefetchRequest, report: int) -> float:
        if request.tiers is None or report == 0:
            return 0.0
        page_bytes = request.page_bytes or self.recompute.shape.kv_bytes_per_token * request.page_tokens
        counts = Counter(request.tiers[:report])
        return sum(self.estimator.seconds((t, None), n * page_bytes) for t, n in counts.items())

    def _count(self, request: PrefetchRequest, report: int, plan: PrefetchPlan, prefetch_pages: int,
               queued: int, plan_s: float) -> None:
        declined = request.pages - report
        with self._lock:
            c = self._counts
            c["queries"] += 1
            c["candidate_pages"] += request.pages
            c["reported_pages"] += report
            c["declined_pages"] += declined
            c["declined_tokens"] += declined * request.page_tokens
            c["probe_pages"] += min(max(0, int(plan.probe_pages)), report)
            c["prefetch_pages"] += prefetch_pages
            c["prefetch_queued"] += queued
            self._plan_s_total += plan_s
            self._plan_s_max = max(self._plan_s_max, plan_s)
