"""Online estimates of what moving pages costs, per place (a tier, and later a node), learned from
the store's own completed transfers.

Each place keeps an exponentially weighted least-squares fit of ``seconds = latency + bytes * spb``
over its recent transfers (``spb``: seconds per byte, the inverse bandwidth). A new transfer gets
weight ``smoothing`` and every older one is scaled by ``1 - smoothing`` (an exponential moving
average of the fit's sums). While every recent transfer has about the same size, the latency cannot
be told apart from the bandwidth and the fit goes through the origin (latency 0). Before the first
transfer of a place, its configured starting bandwidth is used (``prefetch.estimates``).

A transfer that mixed places (a get of DRAM and NVMe pages) teaches the place known least (the
fewest transfers so far; among equals, the one that should have taken most of the time): the
others' share, at their current estimates, is taken off first. So a few NVMe pages reported
among many DRAM pages (a probe) measure NVMe, not DRAM.

Places that a policy keeps declining are never measured again on their own; ``note_declined``
counts such plans and ``needs_probe`` says when a place is due for a re-measurement.
"""

from __future__ import annotations

import threading
from typing import Dict, Hashable, Mapping, Optional, Tuple

from ..config import EstimatesConfig
from ..tiers import Tier

__all__ = ["Place", "TransferEstimator"]

Place = Tuple[int, Optional[str]]
"""Where pages are: ``(tier code, node id)``; node ``None`` is this host."""

_FLAT_X = 0.05  # relative spread of transfer sizes below which the latency is not fitted


class _Fit:
    """Decayed sums of one place's transfers (bytes x, seconds y). Guarded by the estimator's lock."""

    __slots__ = ("w", "sx", "sy", "sxx", "sxy", "samples")

    def __init__(self) -> None:
        self.w = self.sx = self.sy = self.sxx = self.sxy = 0.0
        self.samples = 0

    def add(self, x: float, y: float, alpha: float) -> None:
        keep = 1.0 - alpha if self.samples else 0.0   # the first transfer starts the sums
        add = alpha if self.samples else 1.0
        self.w = keep * self.w + add
        self.sx = keep * self.sx + add * x
        self.sy = keep * self.sy + add * y
        self.sxx = keep * self.sxx + add * x * x
        self.sxy = keep * self.sxy + add * x * y
        self.samples += 1

    def solve(self) -> Tuple[float, float]:
        """(seconds per byte, latency seconds) of the fit."""
        mx, my = self.sx / self.w, self.sy / self.w
        var = self.sxx / self.w - mx * mx
        if var > (_FLAT_X * mx) ** 2:
            slope = (self.sxy / self.w - mx * my) / var
            latency = my - slope * mx
            if slope > 0 and latency >= 0:
                return slope, latency
        return (self.sxy / self.sxx if self.sxx > 0 else 0.0), 0.0


class TransferEstimator:
    """Per-place transfer cost estimates. Thread-safe (one lock, held for a few arithmetic steps)."""

    def __init__(self, config: Optional[EstimatesConfig] = None):
        self.config = config or EstimatesConfig()
        self._prior = {int(Tier.DRAM): 1.0 / (self.config.dram_gbps * 1e9),
                       int(Tier.NVME): 1.0 / (self.config.nvme_gbps * 1e9)}
        self._lock = threading.Lock()
        self._fits: Dict[Hashable, _Fit] = {}
        self._solved: Dict[Hashable, Tuple[float, float]] = {}   # cache of solve() per place
        self._declined: Dict[Hashable, int] = {}

    def cost(self, place: Place) -> Tuple[float, float]:
        """(seconds per byte, latency seconds) of moving pages from ``place``."""
        got = self._solved.get(place)  # a dict read is atomic; a stale value is fine
        if got is not None:
            return got
        return self._prior.get(place[0], self._prior[int(Tier.NVME)]), 0.0

    def seconds(self, place: Place, nbytes: float) -> float:
        """Estimated seconds of one transfer of ``nbytes`` from ``place``."""
        spb, latency = self.cost(place)
        return latency + nbytes * spb

    def observe(self, pages: Mapping[Place, int], nbytes: float, seconds: float) -> None:
        """Learn from one completed transfer of ``nbytes`` bytes in ``seconds``, ``pages[place]``
        of its pages (or objects: any unit of equal size) from each place."""
        total = sum(pages.values())
        if total <= 0 or nbytes <= 0 or seconds <= 0:
            return
        per = nbytes / total
        with self._lock:
            main = min(pages, key=lambda p: (self._samples(p), -self.seconds(p, pages[p] * per)))
            others = sum(self.seconds(p, n * per) for p, n in pages.items() if p != main and n)
            y = max(seconds - others, 0.1 * seconds)   # the main place took at least a tenth
            fit = self._fits.get(main)
            if fit is None:
                fit = self._fits[main] = _Fit()
            fit.add(pages[main] * per, y, self.config.smoothing)
            self._solved[main] = fit.solve()
            for p in pages:
                self._declined[p] = 0

    def _samples(self, place: Place) -> int:
        fit = self._fits.get(place)
        return fit.samples if fit else 0

    def note_declined(self, place: Place) -> None:
        """A plan declined pages at ``place`` (so they were not measured)."""
        with self._lock:
            self._declined[place] = self._declined.get(place, 0) + 1

    def needs_probe(self, place: Place) -> bool:
        """Whether ``place`` has gone unmeasured for ``probe_every`` plans that declined it; the
        next ``needs_probe`` is then false until it goes unmeasured that long again."""
        with self._lock:
            if self._declined.get(place, 0) < self.config.probe_every:
                return False
            self._declined[place] = 0
            return True

    def snapshot(self) -> dict:
        """Flat figures for stats: ``<tier>_gbps``, ``<tier>_latency_us``, ``<tier>_transfers``
        (``<tier>@<node>_...`` for remote places)."""
        out: dict = {}
        with self._lock:
            places = set(self._fits) | {(t, None) for t in self._prior}
            for place in sorted(places, key=lambda p: (p[0], p[1] or "")):
                spb, latency = self.cost(place)
                name = Tier(place[0]).name.lower() if place[0] in Tier._value2member_map_ else str(place[0])
                if place[1] is not None:
                    name += f"@{place[1]}"
                fit = self._fits.get(place)
                out[f"{name}_gbps"] = round(1.0 / spb / 1e9, 4) if spb > 0 else None
                out[f"{name}_latency_us"] = round(latency * 1e6, 2)
                out[f"{name}_transfers"] = fit.samples if fit else 0
        return out
