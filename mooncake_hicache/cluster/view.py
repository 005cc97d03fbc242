"""The membership view: who is in the cluster at one epoch, and where each key lives in it.

A ``View`` is immutable: a membership source (``membership.py``) builds a new one for every
change and keeps the one before it as ``previous``, so the read path can also ask the previous
epoch's holders of a key during the grace window after a change (pages written before the change
are still there until the new holders have them). Thread-safe by immutability.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional

__all__ = ["Member", "View"]


@dataclass(frozen=True)
class Member:
    """One node of the cluster: its id, the address its listener is reachable at, its placement
    weight (the capacity it contributes) and whether it is considered up. A member that is down
    or weighs nothing holds no keys."""

    id: str
    host: str
    port: int
    weight: float
    healthy: bool = True

    @property
    def address(self) -> str:
        """``host:port`` (``[host]:port`` for an IPv6 address)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def live(self) -> bool:
        return self.healthy and self.weight > 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class View:
    """The members at ``epoch`` (sorted by id), and the view this one replaced.

    ``epoch`` grows with every change: the etcd revision of the change for etcd membership, 1 for
    a static list. ``changed_at`` is the ``time.monotonic()`` of the change, as seen here.
    """

    epoch: int
    members: tuple[Member, ...]
    previous: Optional["View"] = field(default=None, compare=False, repr=False)
    changed_at: float = field(default_factory=time.monotonic, compare=False)

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.members, key=lambda m: m.id))
        ids = [m.id for m in ordered]
        if len(set(ids)) != len(ids):
            raise ValueError(f"a view lists a member id twice: {ids}")
        object.__setattr__(self, "members", ordered)

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self.members]

    def member(self, member_id: str) -> Optional[Member]:
        return next((m for m in self.members if m.id == member_id), None)

    def live_members(self) -> tuple[Member, ...]:
        """The members that hold keys: up and with a positive weight."""
        return tuple(m for m in self.members if m.live)

    @functools.cached_property
    def placement(self):
        """The ``_native.Placement`` of the live members (built once per view)."""
        from .. import _native
        return _native.Placement([(m.id, m.weight) for m in self.live_members()])

    def holders(self, key: str, replicas: int = 1) -> list[str]:
        """The ids of the live members that hold ``key``, best first."""
        return self.placement.holders(key, replicas)

    def read_views(self, grace_s: float, now: Optional[float] = None) -> tuple["View", ...]:
        """The views a read should ask, newest first: this one, and the previous one while the
        change is less than ``grace_s`` seconds old."""
        now = time.monotonic() if now is None else now
        if self.previous is not None and now - self.changed_at < grace_s:
            return (self, self.previous)
        return (self,)

    def successor(self, epoch: int, members: Iterable[Member]) -> "View":
        """The view after a change: this view becomes ``previous`` (its own previous is dropped,
        so views never chain more than one deep)."""
        return View(epoch, tuple(members), previous=dataclasses.replace(self, previous=None))

    def with_health(self, member_id: str, healthy: bool) -> "View":
        """The same view (same epoch and previous) with one member marked up or down, as the data
        path observes it; the view is returned unchanged when the member is absent."""
        if self.member(member_id) is None:
            return self
        members = [dataclasses.replace(m, healthy=healthy) if m.id == member_id else m for m in self.members]
        return dataclasses.replace(self, members=tuple(members))

    def diff(self, older: "View") -> tuple[list[str], list[str], list[str]]:
        """``(joined, left, changed)`` member ids from ``older`` to this view."""
        mine, theirs = {m.id: m for m in self.members}, {m.id: m for m in older.members}
        joined = sorted(set(mine) - set(theirs))
        left = sorted(set(theirs) - set(mine))
        changed = sorted(i for i in set(mine) & set(theirs) if mine[i] != theirs[i])
        return joined, left, changed

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "members": [m.to_dict() for m in self.members]}
