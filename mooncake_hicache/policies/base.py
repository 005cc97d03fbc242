"""The prefetch policy interface (docs/prefetch.md has a worked example).

SGLang asks its storage backend, batch by batch (at most 128 pages), how many leading pages of a
request it holds (``batch_exists``), then reads that many pages (``batch_get_v1``). On each such
question the :class:`~mooncake_hicache.policies.Prefetcher` finds the leading pages the store holds
and where each one is, and asks the policy for a :class:`PrefetchPlan`:

* ``report``: how many of those leading pages to tell SGLang are hits (the rest it recomputes);
* ``prefetch``: which of the reported pages to move into this host's DRAM before SGLang's get
  arrives, in which order, ``batch_pages`` at a time (the store's promotion workers carry it out).

A policy is a class with a ``plan(request) -> PrefetchPlan`` method, built once per store as
``cls(context)``. ``plan`` is called from SGLang's prefetch thread (and from others at once in a
server with several storage threads): it must be thread-safe and quick (it runs before SGLang
may start its get).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..config import PrefetchConfig
from .cost_model import RecomputeModel
from .estimator import TransferEstimator
from .run_lengths import RunLengths

__all__ = ["PolicyContext", "PrefetchPlan", "PrefetchPolicy", "PrefetchRequest", "SGLangPrefetchSettings"]

STOP_POLICIES = ("best_effort", "wait_complete", "timeout")


@dataclass(frozen=True)
class SGLangPrefetchSettings:
    """SGLang's own prefetch knobs (``--hicache-storage-backend-extra-config`` keys
    ``prefetch_threshold``, ``prefetch_timeout_base``, ``prefetch_timeout_per_ki_token`` and the
    ``--hicache-storage-prefetch-policy`` flag), with SGLang 0.5.23's defaults."""

    threshold_tokens: int = 256
    """SGLang drops a storage hit shorter than this many tokens (it is not worth the transfer)."""
    timeout_base_s: float = 1.0
    timeout_per_ki_token_s: float = 0.25
    stop_policy: str = "timeout"
    """``timeout``: SGLang waits for a prefetch until its deadline; ``best_effort``: it takes what
    has landed when it schedules the request; ``wait_complete``: it waits for all of it."""

    def deadline_s(self, tokens: int) -> Optional[float]:
        """Seconds SGLang waits for the prefetch of ``tokens`` tokens, or None if it does not
        cut prefetches off at a deadline (``base + tokens / 1024 * per_ki_token``)."""
        if self.stop_policy != "timeout":
            return None
        return self.timeout_base_s + tokens / 1024.0 * self.timeout_per_ki_token_s


@dataclass(frozen=True)
class PrefetchRequest:
    """One of SGLang's existence questions, as a policy sees it."""

    pages: int
    """Leading pages of this batch that the store holds: the candidates for ``report``."""
    tiers: Optional[Sequence[int]]
    """Where each of those pages is (a ``Tier`` code; for a page of several objects, its slowest
    object's), or None when the policy does not want locations (``wants_locations = False``).
    A sequence of ints (often a ``bytes`` object: index it, iterate it, compare with ``Tier``)."""
    nodes: Optional[Sequence[Optional[str]]] = None
    """Which node holds each page (None: this host), once pages can live on other hosts."""
    batch_pages: int = 0
    """Pages SGLang asked about in this call (``pages`` or more). When every one of them is
    reported, SGLang asks about the next batch of the request."""
    offset_pages: int = 0
    """Pages of the request before this batch (from SGLang's prefix keys; 0 when SGLang passes
    none, i.e. ``hicache_storage_pass_prefix_keys`` is off)."""
    page_tokens: int = 64
    page_bytes: int = 0
    """Bytes this process moves per page (all its objects), or 0 when not known yet."""
    loaded_before_s: float = 0.0
    """Estimated load time of this request's earlier batches (when they were seen)."""
    requested_tokens: int = 0
    """Tokens of this request asked about so far, this batch included (for SGLang's deadline)."""
    settings: SGLangPrefetchSettings = field(default_factory=SGLangPrefetchSettings)


@dataclass(frozen=True)
class PrefetchPlan:
    """A policy's answer. The Prefetcher clamps ``report`` to ``[0, pages]`` and drops prefetch
    entries that are not reported pages (with a warning)."""

    report: int
    """Leading pages to report as hits."""
    prefetch: Sequence[int] = ()
    """Indexes (< ``report``) of pages to move into this host's DRAM before the get, in this order."""
    batch_pages: int = 0
    """Pages per promotion step (a step lands in DRAM together); 0: the store's default (16)."""
    probe_pages: int = 0
    """How many of the reported pages were reported only to measure their tier again (stats)."""


@dataclass(frozen=True)
class PolicyContext:
    """What a policy is built with: the ``prefetch`` configuration, the store's transfer estimates
    (learned from its completed gets), the recompute cost model, and how far the stored prefixes of
    recent requests reached (``RunLengths``; None when not tracked)."""

    config: PrefetchConfig
    estimator: TransferEstimator
    recompute: RecomputeModel
    run_lengths: Optional[RunLengths] = None


class PrefetchPolicy(ABC):
    """Base class of prefetch policies (see the module doc). Subclasses set ``name`` and implement
    ``plan``; ``stats`` may add figures to ``Store.stats()["prefetch"]``."""

    name: str = "custom"
    wants_locations: bool = True
    """Ask the store where each page is before planning (``PrefetchRequest.tiers``)."""
    prefetches: bool = True
    """Whether the pages of other pools that SGLang asks about alongside (hybrid models' side
    pools) are promoted too."""

    def __init__(self, context: PolicyContext):
        self.context = context

    @abstractmethod
    def plan(self, request: PrefetchRequest) -> PrefetchPlan:
        """The plan for one existence question."""

    def stats(self) -> dict:
        """Extra figures of this policy (flat: names to numbers)."""
        return {}
