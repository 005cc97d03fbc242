#!/usr/bin/env python3
"""Placement: how fast a batch of keys is routed to its holders, and what a membership change moves.

1. **Speed.** ``Placement.route`` of one SGLang batch (128 keys of 64 hex digits) over 3 to 16
   members: reads (``fanout one``, R=1) and writes (``fanout all``, R=2), timed in C++
   (``_native._placement_route_ns``: no Python in the loop) and through the Python binding (what a
   Python caller pays, key conversion included). The limit it is compared with, measured in the
   same run and taken alternately with ours (A B B A ... per round, median of the rounds): grouping
   the same keys by ``XXH3(key) % members`` in C++, the least any hash router does (one hash per
   key and a group per member). Weighted rendezvous computes one hash, one logarithm and one
   multiply per key and member, so expect it to cost several times the floor, growing with the
   number of members.
2. **Movement.** Over ``--keys`` fixed keys (sha256 of a counter): add a member, remove one, raise
   and lower one weight, with R=1 and R=2, weighted members. Prints the fraction of holder slots
   that moved, the ideal (the least any weight-proportional placement must move) and the ratio
   (target: at most 1.2), whether any key moved without the changed member being its source or
   destination (must be 0), and what ``hash % members`` would move for the same change (``-``
   for a weight change: it has no weights).

Output: both tables on stdout, then one JSON line ``{"bench": "placement", ...}``. Progress goes to
stderr. Exit status 1 when a movement target is missed.

Examples::

    .venv/bin/python bench/placement_bench.py            # about 20 seconds
    .venv/bin/python bench/placement_bench.py --quick    # a few seconds: fewer keys and rounds
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _bench_common as bc  # noqa: E402
from mooncake_hicache import _native  # noqa: E402
from mooncake_hicache.cluster import Placement, movement  # noqa: E402

BATCH = 128
MEMBER_COUNTS = (3, 4, 8, 16)
CASES = (("read", 1, "one"), ("write", 2, "all"))  # name, replicas, fanout


def sha_keys(n: int, salt: str = "") -> list[str]:
    return [hashlib.sha256(f"{salt}{i}".encode()).hexdigest() for i in range(n)]


def weighted_members(n: int) -> list[tuple[str, float]]:
    """n members contributing 32, 64 or 96 GiB (as bytes), like a mixed fleet."""
    return [(f"node-{i:02d}", float((32 << 30) * (1 + i % 3))) for i in range(n)]


def python_route_us(p: Placement, keys: list[str], replicas: int, fanout: str, iterations: int) -> float:
    t0 = time.perf_counter()
    for _ in range(iterations):
        p.route(keys, replicas, fanout)
    return (time.perf_counter() - t0) / iterations * 1e6


def speed_row(n: int, case: tuple, keys: list[str], rounds: int, iterations: int) -> dict:
    name, replicas, fanout = case
    p = Placement(weighted_members(n))
    ours, floor = [], []
    for r in range(rounds):  # A B B A: ours first on even rounds, the floor first on odd ones
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for which in order:
            if which == 0:
                ours.append(_native._placement_route_ns(p, keys, replicas, fanout, iterations) / 1e3)
            else:
                floor.append(_native._hash_mod_route_ns(keys, n, iterations) / 1e3)
    us, floor_us = statistics.median(ours), statistics.median(floor)
    return {"op": name, "members": n, "replicas": replicas, "fanout": fanout, "us_per_batch": us,
            "ns_per_key_member": us * 1e3 / (len(keys) * n),
            "python_us_per_batch": python_route_us(p, keys, replicas, fanout, iterations),
            "floor_us_per_batch": floor_us, "ratio_to_floor": us / floor_us}


def mod_n_moved(before: list[str], after: list[str], keys: list[str]):
    """The fraction of keys that ``hash % members`` moves for the same change; None when the
    member list is the same (it has no weights, so a weight change means nothing to it)."""
    if before == after:
        return None

    def holder(ids: list[str], key: str) -> str:
        return ids[int(key[:16], 16) % len(ids)]
    return sum(holder(before, k) != holder(after, k) for k in keys) / len(keys)


def scenarios() -> dict:
    base = weighted_members(8)
    return {
        "add a member (8 -> 9)": (base, base + [("node-new", float(64 << 30))]),
        "remove a member (8 -> 7)": (base, base[1:]),
        "double one weight": (base, [(i, w * 2 if i == "node-03" else w) for i, w in base]),
        "halve one weight": (base, [(i, w / 2 if i == "node-03" else w) for i, w in base]),
    }


def movement_rows(keys: list[str]) -> list[dict]:
    rows = []
    for name, (before, after) in scenarios().items():
        for replicas in (1, 2):
            bc.progress(f"movement: {name}, R={replicas}")
            m = movement(Placement(before), Placement(after), keys, replicas)
            rows.append({"change": name, "replicas": replicas, "ideal": m.ideal, "moved": m.moved,
                         "ratio": m.ratio, "foreign": m.foreign,
                         "mod_n_moved": mod_n_moved([i for i, _ in before], [i for i, _ in after], keys)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer keys and rounds (a smoke run)")
    ap.add_argument("--keys", type=int, default=None, help="keys for the movement figures (default 100000)")
    ap.add_argument("--rounds", type=int, default=None, help="alternating timing rounds (default 8)")
    args = ap.parse_args(argv)
    n_keys = args.keys or (20_000 if args.quick else 100_000)
    rounds = args.rounds or (2 if args.quick else 8)
    iterations = 200 if args.quick else 2000

    batch = sha_keys(BATCH, salt="batch")
    speed = []
    for n in MEMBER_COUNTS:
        for case in CASES:
            bc.progress(f"speed: {case[0]} over {n} members")
            speed.append(speed_row(n, case, batch, rounds, iterations))
    moves = movement_rows(sha_keys(n_keys))

    print(f"Routing one batch of {BATCH} keys (median of {rounds} alternating rounds of {iterations} calls)")
    bc.print_table(
        ["op", "members", "R", "us/batch (C++)", "ns/key/member", "us/batch (Python)", "floor us", "x floor"],
        [[r["op"], r["members"], r["replicas"], f"{r['us_per_batch']:.1f}", f"{r['ns_per_key_member']:.1f}",
          f"{r['python_us_per_batch']:.1f}", f"{r['floor_us_per_batch']:.1f}", f"{r['ratio_to_floor']:.1f}"]
         for r in speed])
    print(f"\nWhat a change moves ({n_keys} keys; weights 32/64/96 GiB; target ratio <= 1.2, foreign 0)")
    bc.print_table(["change", "R", "ideal", "moved", "ratio", "foreign", "hash%n moves"],
                   [[r["change"], r["replicas"], f"{r['ideal']:.4f}", f"{r['moved']:.4f}", f"{r['ratio']:.3f}",
                     r["foreign"], "-" if r["mod_n_moved"] is None else f"{r['mod_n_moved']:.4f}"]
                    for r in moves])
    ok = all(r["ratio"] <= 1.2 and r["foreign"] == 0 for r in moves)
    bc.json_line({"bench": "placement", "ok": ok, "batch": BATCH, "rounds": rounds, "iterations": iterations,
                  "keys": n_keys, "speed": speed, "movement": moves, "machine": bc.machine_info(HERE)})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
