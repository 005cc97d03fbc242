"""How far the stored prefixes of recent requests reached, for the value of letting SGLang go on.

SGLang asks about a request 128 pages at a time and stops at the first batch that reports fewer
pages than it asked about. So a policy that declines part of a full batch also gives up every
later page of the request, and the later pages are the ones that cost the most to recompute (the
attention term grows with the position): for a long prompt, slow pages early can be worth loading
for the pages they let through. ``RunLengths`` keeps where the stored run of pages of recent
requests ended (the absolute page of the first missing page), in bins of 128 pages, so a policy
can weigh each later page by the chance the request's stored prefix reaches it.

Thread-safe (one lock, held for a few list operations).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Iterator, Tuple

__all__ = ["RunLengths"]

BIN_PAGES = 128
BINS = 1024            # up to 131,072 pages (8.4 M tokens of 64-token pages); longer runs fall in the last bin


class RunLengths:
    """The ends of the last ``keep`` stored runs, as counts per 128-page bin: runs that ended
    (their first missing page is known) and runs cut short by a decline (they reached at least
    that page: censored), so the chance of going on is a Kaplan-Meier estimate, not biased toward
    the runs a policy happened to see end."""

    def __init__(self, keep: int = 4096):
        self._lock = threading.Lock()
        self._recent: deque = deque()   # (bin, ended) of the recorded runs, oldest first
        self._keep = keep
        self._ended = [0] * BINS
        self._cut = [0] * BINS

    def record(self, end_page: int, ended: bool = True) -> None:
        """A request's stored pages ran up to ``end_page`` (its first missing page), or, with
        ``ended`` false, at least that far (a decline stopped SGLang's questions there)."""
        b = min(max(0, int(end_page)) // BIN_PAGES, BINS - 1)
        with self._lock:
            if len(self._recent) == self._keep:
                old, old_ended = self._recent.popleft()
                (self._ended if old_ended else self._cut)[old] -= 1
            self._recent.append((b, ended))
            (self._ended if ended else self._cut)[b] += 1

    def __len__(self) -> int:
        return len(self._recent)

    def beyond(self, page: int) -> Iterator[Tuple[int, int, float]]:
        """``(first page, end page, chance)`` for each 128-page bin from ``page`` on: the chance
        that a run which reached ``page`` also reaches the bin (the product over the bins before
        it of 1 - ended there / still running there)."""
        with self._lock:
            ended, cut = list(self._ended), list(self._cut)
        b0 = min(max(0, int(page)) // BIN_PAGES, BINS - 1)
        at_risk = sum(ended[b0:]) + sum(cut[b0:])
        chance = 1.0
        for b in range(b0, BINS):
            if at_risk <= 0 or chance <= 0:
                return
            yield max(page, b * BIN_PAGES), (b + 1) * BIN_PAGES, chance
            chance *= 1.0 - ended[b] / at_risk
            at_risk -= ended[b] + cut[b]
