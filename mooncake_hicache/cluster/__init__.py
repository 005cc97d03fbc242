"""The pool across hosts: membership (who is in the cluster, at which epoch) and placement
(which members hold a key). docs/cluster.md describes both.

* ``view``: ``Member`` and ``View`` (immutable; a view knows its placement and the view before it);
* ``membership``: ``StaticMembership`` (``cluster.members``), ``EtcdMembership`` (``cluster.etcd``),
  ``open_membership(config)``;
* ``placement``: ``Placement`` (weighted rendezvous hashing, in C++) and ``movement()``, which
  measures how many keys a membership change moves.
"""

from .membership import (DuplicateMemberError, EtcdMembership, Membership, MembershipError, StaticMembership,
                         open_membership, own_weight)
from .placement import Movement, Placement, movement
from .view import Member, View

__all__ = ["DuplicateMemberError", "EtcdMembership", "Member", "Membership", "MembershipError", "Movement",
           "Placement", "StaticMembership", "View", "movement", "open_membership", "own_weight"]
