"""Weighted rendezvous placement (csrc/cluster/placement.h through _native.Placement): holders,
determinism, weight proportionality, what a membership change moves, and batch routing.

Every key set here is fixed (sha256 of a counter), so every figure is the same on every run: the
tolerances cover the hash's deviation from ideal shares, not chance. ``bench/placement_bench.py``
prints the same movement figures and the speed.
"""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys

import pytest

from mooncake_hicache.cluster import Placement, movement


def sha_keys(n: int, salt: str = "") -> list[str]:
    """n SGLang-like keys (64 hex digits), the same on every run."""
    return [hashlib.sha256(f"{salt}{i}".encode()).hexdigest() for i in range(n)]


KEYS_100K = sha_keys(100_000)
MEMBERS = [("node-a", 1.0), ("node-b", 2.0), ("node-c", 3.0), ("node-d", 1.0)]


# ---- holders ---------------------------------------------------------------------------------

def test_holders_are_distinct_members_capped_at_the_member_count():
    p = Placement(MEMBERS)
    for key in sha_keys(200):
        assert len(p.holders(key, 1)) == 1
        two = p.holders(key, 2)
        assert len(set(two)) == 2 and two[0] == p.holders(key, 1)[0]
        everyone = p.holders(key, 9)
        assert sorted(everyone) == sorted(p.ids) and everyone[:2] == two


def test_placement_does_not_depend_on_the_order_members_are_given_in():
    keys = sha_keys(5000)
    reference = Placement(MEMBERS).batch_holders(keys, 3)
    for order in ([3, 2, 1, 0], [1, 3, 0, 2]):
        assert Placement([MEMBERS[i] for i in order]).batch_holders(keys, 3) == reference


def test_placement_is_the_same_in_another_process():
    keys = sha_keys(2000)
    script = ("import json, sys; from mooncake_hicache.cluster import Placement; "
              "m, keys = json.load(sys.stdin); print(json.dumps(Placement([tuple(x) for x in m]).batch_holders(keys, 2)))")
    import json
    out = subprocess.run([sys.executable, "-c", script], input=json.dumps([MEMBERS, keys]), capture_output=True,
                         text=True, check=True, timeout=60, env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin"})
    assert json.loads(out.stdout) == Placement(MEMBERS).batch_holders(keys, 2)


def test_placement_function_is_pinned():
    """Placement is part of the cluster's contract: nodes and clients of different builds must
    agree on every key's holders. If this fails, the change reshuffles every running cluster's
    keys: keep the old function, or make it a new protocol version."""
    p = Placement(MEMBERS)
    assert p.holders("mooncake", 4) == ["node-c", "node-d", "node-b", "node-a"]
    assert p.holders("0" * 64, 4) == ["node-a", "node-c", "node-b", "node-d"]
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(1000)]
    joined = "|".join(",".join(h) for h in p.batch_holders(keys, 2))
    assert hashlib.sha256(joined.encode()).hexdigest() == \
        "657bb6b11ddbe49ed16159312bb13138d7c17484338465a4ae976565a6edd29f"


def test_scaling_every_weight_changes_nothing():
    keys = sha_keys(20_000)
    gib = float(1 << 30)
    assert Placement([(i, w * 64 * gib) for i, w in MEMBERS]).batch_holders(keys, 2) == \
        Placement(MEMBERS).batch_holders(keys, 2)


def test_each_member_holds_a_share_proportional_to_its_weight():
    weights = {"w1": 1.0, "w2": 2.0, "w3": 3.0, "w4": 4.0, "w10": 10.0}
    p = Placement(list(weights.items()))
    counts = {i: 0 for i in weights}
    for (holder,) in p.batch_holders(KEYS_100K, 1):
        counts[holder] += 1
    total = sum(weights.values())
    for member, w in weights.items():
        expected = len(KEYS_100K) * w / total
        # binomial sd is <= 1% of expected here; 4% allows > 4 sd for the fixed key set
        assert abs(counts[member] - expected) <= 0.04 * expected, (member, counts[member], expected)


def test_equal_members_share_replica_slots_evenly():
    p = Placement([(f"n{i}", 1.0) for i in range(6)])
    counts = {i: 0 for i in p.ids}
    for holders in p.batch_holders(KEYS_100K[:60_000], 3):
        for h in holders:
            counts[h] += 1
    for member, c in counts.items():
        assert abs(c - 30_000) <= 0.03 * 30_000, (member, c)


# ---- what a membership change moves --------------------------------------------------------

BASE = [(f"n{i}", float(1 + i % 3)) for i in range(8)]  # weights 1, 2, 3, 1, 2, 3, 1, 2
EQUAL = [(f"n{i}", 1.0) for i in range(8)]
CHANGES = {
    "add a member": lambda m: m + [("new", 2.0)],
    "remove a member": lambda m: m[1:],
    "raise one weight": lambda m: [(i, w * 2 if i == "n3" else w) for i, w in m],
    "lower one weight": lambda m: [(i, w / 2 if i == "n3" else w) for i, w in m],
}


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("members,replicas", [(BASE, 1), (EQUAL, 2)], ids=["weighted-R1", "equal-R2"])
def test_a_change_moves_at_most_1_2x_the_ideal_and_only_to_or_from_that_member(change, members, replicas):
    after = CHANGES[change](members)
    m = movement(Placement(members), Placement(after), KEYS_100K, replicas)
    print(f"{change}, R={replicas}: moved {m.moved:.4f} of slots, ideal {m.ideal:.4f}, ratio {m.ratio:.3f}")
    assert m.ideal > 0.02 and m.moved > 0
    assert m.moved <= 1.2 * m.ideal
    assert m.foreign == 0


def test_keys_move_to_an_added_member_and_away_from_a_removed_one():
    before, after = Placement(BASE), Placement(BASE + [("new", 2.0)])
    for old, new in zip(before.batch_holders(KEYS_100K[:20_000]), after.batch_holders(KEYS_100K[:20_000])):
        assert new == old or new == ["new"]
    smaller = Placement(BASE[1:])
    for old, new in zip(before.batch_holders(KEYS_100K[:20_000]), smaller.batch_holders(KEYS_100K[:20_000])):
        assert new == old or old == ["n0"]


def test_an_unchanged_membership_moves_nothing():
    m = movement(Placement(BASE), Placement(list(reversed(BASE))), KEYS_100K[:10_000], 2)
    assert (m.moved, m.ideal, m.foreign, m.changed_members) == (0.0, 0.0, 0, ())


# ---- routing a batch -------------------------------------------------------------------------

def test_route_all_sends_each_key_to_every_holder_once():
    p, keys = Placement(MEMBERS), sha_keys(128)
    groups = p.route(keys, 2, "all")
    holders = p.batch_holders(keys, 2)
    for member, indices in groups.items():
        assert indices == sorted(indices)
        assert indices == [k for k in range(len(keys)) if member in holders[k]]
    assert sum(len(v) for v in groups.values()) == 2 * len(keys)


def test_route_one_sends_each_key_to_its_best_holder_when_costs_are_equal():
    p, keys = Placement(MEMBERS), sha_keys(128)
    groups = p.route(keys, 2, "one")
    firsts = [h[0] for h in p.batch_holders(keys, 2)]
    assert {m: v for m, v in groups.items()} == {m: [k for k, f in enumerate(firsts) if f == m] for m in set(firsts)}


def test_route_one_prefers_the_cheapest_holder_and_never_a_down_one():
    p, keys = Placement(MEMBERS), sha_keys(256)
    holders = p.batch_holders(keys, 2)
    cost = {"node-a": -1.0, "node-b": 5.0, "node-c": math.inf, "node-d": 2.0}  # a is local, c is down
    groups = p.route(keys, 2, "one", cost)
    assert "node-c" not in groups
    sent = {k: m for m, ks in groups.items() for k in ks}
    for k, hs in enumerate(holders):
        live = [h for h in hs if cost[h] != math.inf]
        assert sent[k] == min(live, key=lambda h: (cost[h], hs.index(h)))


def test_route_one_leaves_out_keys_whose_holders_are_all_down():
    p, keys = Placement(MEMBERS), sha_keys(256)
    down = {"node-b": math.inf, "node-c": math.inf}
    groups = p.route(keys, 2, "one", down)
    routed = sorted(k for ks in groups.values() for k in ks)
    expected = [k for k, hs in enumerate(p.batch_holders(keys, 2)) if set(hs) - set(down)]
    assert routed == expected and len(routed) < len(keys)


def test_an_empty_placement_holds_nothing():
    p = Placement([])
    assert len(p) == 0 and p.holders("k", 2) == [] and p.route(["k"], 1, "all") == {}


# ---- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("members,fragment", [
    ([("a", 1.0), ("a", 2.0)], "appears twice"),
    ([("", 1.0)], "empty"),
    ([("a", 0.0)], "weight"),
    ([("a", -1.0)], "weight"),
    ([("a", math.nan)], "weight"),
    ([("a", math.inf)], "weight"),
    ([("a", 1e-320)], "weight"),
])
def test_bad_members_are_refused(members, fragment):
    with pytest.raises(ValueError, match=fragment):
        Placement(members)


def test_bad_calls_are_refused():
    p = Placement(MEMBERS)
    with pytest.raises(ValueError, match="replicas"):
        p.holders("k", 0)
    with pytest.raises(ValueError, match="fanout"):
        p.route(["k"], 1, "some")
    with pytest.raises(ValueError, match="not a member"):
        p.route(["k"], 1, "one", {"node-x": 1.0})
    assert p.index_of("node-c") == p.ids.index("node-c") and p.index_of("node-x") == -1


def test_the_placement_bench_runs_and_meets_its_movement_target():
    import json
    import os
    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "placement_bench.py")
    r = subprocess.run([sys.executable, bench, "--quick", "--keys", "20000"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["bench"] == "placement" and result["ok"]
    assert len(result["speed"]) == 8 and all(row["us_per_batch"] > 0 for row in result["speed"])
    assert all(row["foreign"] == 0 for row in result["movement"])
