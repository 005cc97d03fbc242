"""The pool across hosts. docs/cluster.md describes it.

* ``placement``: ``Placement`` (weighted rendezvous hashing, in C++) and ``movement()``, which
  measures how many keys a membership change moves.
"""

from .placement import Movement, Placement, movement

__all__ = ["Movement", "Placement", "movement"]
