"""Placement of keys on members: ``Placement`` (weighted rendezvous hashing, implemented in C++:
csrc/cluster/placement.h) and ``movement()``, which measures what a membership change moves.

``Placement([(id, weight), ...])`` gives ``holders(key, replicas)`` (ids, best first),
``batch_holders(keys, replicas)`` and ``route(keys, replicas, fanout, cost)`` (a batch grouped by
member: one request per member). ``View.placement`` builds one for a view's live members.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .._native import Placement

__all__ = ["Movement", "Placement", "movement"]


@dataclass(frozen=True)
class Movement:
    """What a change from one placement to another does to a set of keys.

    ``moved``: the fraction of holder slots (key x replica) whose member changed. ``ideal``: the
    least any placement that gives members weight-proportional shares must move (the total
    variation distance between the shares before and after). ``foreign``: keys whose holders
    changed without the change going to or from a member whose weight changed (must be 0).
    """

    keys: int
    replicas: int
    changed_members: tuple[str, ...]
    moved: float
    ideal: float
    foreign: int

    @property
    def ratio(self) -> float:
        """``moved / ideal`` (1.0 is the least possible; 0 when nothing needed to move)."""
        return self.moved / self.ideal if self.ideal else 0.0


def _shares(p: Placement) -> dict[str, float]:
    total = sum(p.weights)
    return {i: w / total for i, w in zip(p.ids, p.weights)}


def movement(before: Placement, after: Placement, keys: Sequence[str], replicas: int = 1) -> Movement:
    """Place ``keys`` with both placements and compare (``Movement``)."""
    w_before, w_after = dict(zip(before.ids, before.weights)), dict(zip(after.ids, after.weights))
    changed = {i for i in set(w_before) | set(w_after) if w_before.get(i) != w_after.get(i)}
    s_before, s_after = _shares(before), _shares(after)
    ideal = sum(max(0.0, s_after.get(i, 0.0) - s_before.get(i, 0.0)) for i in set(s_before) | set(s_after))
    moved_slots = foreign = 0
    for old, new in zip(before.batch_holders(keys, replicas), after.batch_holders(keys, replicas)):
        gained, lost = set(new) - set(old), set(old) - set(new)
        moved_slots += max(len(gained), len(lost))
        if (gained or lost) and not (gained <= changed or lost <= changed):
            foreign += 1
    slots = len(keys) * min(replicas, len(after) or 1)
    return Movement(len(keys), replicas, tuple(sorted(changed)), moved_slots / slots if slots else 0.0, ideal,
                    foreign)
