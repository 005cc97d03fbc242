"""A holder that dies or freezes, with real node processes and two client processes under load
(tests/cluster_load_client.py): never a wrong byte, no call longer than its timeout, the
survivors keep serving; with R=2 reads come from the replica, with R=1 the dead node's pages are
misses; a SIGKILLed node restarts and rejoins with its NVMe pages; a SIGSTOPped one is marked
down (in the rank's pool and in the node's view) and up again after SIGCONT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cluster_helpers import Cluster
from conftest import Buffer, pattern
from mooncake_hicache.cluster import Placement
from mooncake_hicache.cluster.status import cluster_status
from mooncake_hicache.config import load_config

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT_MS = 1000
SLACK_S = 1.0  # scheduling on a loaded 2-core machine
PAGE = 64 * 1024


def start_clients(cl, tmp_path, nodes, seconds, n_keys=96):
    procs = []
    for n in nodes:
        out = str(tmp_path / f"load-{n}.json")
        procs.append((subprocess.Popen([sys.executable, os.path.join(HERE, "cluster_load_client.py"),
                                        cl[n].config_path, f"load-{n}", str(n_keys), str(seconds), out],
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT), out))
    return procs


def wait_loaded(tmp_path, cl, nodes, timeout=30.0):
    """Until every client has written its keys (it starts reading then)."""
    deadline = time.monotonic() + timeout
    prefixes = [f"load-{n}-95" for n in nodes]
    probe = cl.store(nodes[0])
    while time.monotonic() < deadline:
        if all(probe.is_exist(k) == 1 for k in prefixes):
            return
        time.sleep(0.05)
    raise AssertionError("the load clients did not write their keys in time")


def results(procs):
    out = []
    for p, path in procs:
        log = p.communicate(timeout=60)[0]
        assert p.returncode == 0, log.decode(errors="replace")
        with open(path) as f:
            out.append(json.load(f))
    return out


def check_bounded_and_correct(runs):
    calls = [c for r in runs for c in r["calls"]]
    assert calls, "the clients made no calls"
    assert sum(c[5] for c in calls) == 0, "wrong bytes (or unexpected codes) were returned"
    slowest = max(c[1] for c in calls)
    assert slowest < TIMEOUT_MS / 1000 + SLACK_S, f"a call took {slowest:.2f} s"
    return calls


def check_after_kill(calls, killed_at, replicas):
    after = [c for c in calls if c[0] > killed_at + 0.1]
    gets, puts = [c for c in after if c[2] == "get"], [c for c in after if c[2] == "put"]
    assert gets and puts, "no calls after the kill"
    if replicas == 2:
        assert sum(c[4] for c in gets) == 0, "a page with a live replica was missed"
        assert sum(c[6] for c in puts) == 0, "writes failed although two holders were alive"
        return
    p = Placement([(i, 1.0) for i in "abc"])
    missed = {k for c in gets for k in c[7]}
    assert missed and all(p.holders(k)[0] == "c" for k in missed), "only the dead node's pages may miss"
    assert sum(c[3] for c in gets) > 0, "the survivors stopped serving"


def check_rejoined(cl, c_held):
    """The restarted node has the pages it held (from its NVMe) and serves them to its rank."""
    assert all(e > 0 for e in cl["c"].client().batch_exists(c_held))  # 1 DRAM or 2 NVMe (after the restart)
    c_keys = c_held[:16]
    store = cl.store("c")
    buf = Buffer(len(c_keys) * PAGE)
    store.register_buffer(buf.addr, buf.size)
    got = store.batch_get_into(c_keys, [buf.addr + i * PAGE for i in range(len(c_keys))], [PAGE] * len(c_keys))
    assert got == [PAGE] * len(c_keys)
    assert all(buf.read(i * PAGE, PAGE) == pattern(k, PAGE) for i, k in enumerate(c_keys))
    assert store.stats()["pool"]["keys_found_local"] == len(c_keys)  # from c's own NVMe, not a replica


@pytest.mark.parametrize("replicas", [2, 1])
def test_a_holder_killed_under_load_costs_no_wrong_bytes_and_no_hang(tmp_path, replicas):
    cl = Cluster(tmp_path, ["a", "b", "c"], node_options={"nvme": "128MiB"}, replicas=replicas,
                 request_timeout_ms=TIMEOUT_MS).start()
    try:
        procs = start_clients(cl, tmp_path, ["a", "b"], seconds=3.0)
        wait_loaded(tmp_path, cl, ["a", "b"])
        written = [f"load-{n}-{i}" for n in "ab" for i in range(96)]
        c_held = [k for k, e in zip(written, cl["c"].client().batch_exists(written)) if e > 0]
        assert c_held  # (a holder that timed out on a loaded machine is spilled past: not every key)
        time.sleep(0.5)
        killed_at = time.time()
        cl["c"].kill(signal.SIGKILL)
        calls = check_bounded_and_correct(results(procs))
        check_after_kill(calls, killed_at, replicas)
        cl["c"].start()
        check_rejoined(cl, c_held)
    finally:
        cl.close()


def test_a_frozen_holder_costs_one_timeout_per_window_and_is_marked_down_then_up(tmp_path):
    cl = Cluster(tmp_path, ["a", "b", "c"], request_timeout_ms=TIMEOUT_MS).start()
    try:
        p = Placement([(i, 1.0) for i in "abc"])
        keys = [k for k in (f"frozen-{i}" for i in range(300)) if p.holders(k)[0] == "c"][:8]
        a = cl.store("a")
        buf = Buffer(len(keys) * PAGE)
        a.register_buffer(buf.addr, buf.size)
        for i, k in enumerate(keys):
            buf.write(i * PAGE, pattern(k, PAGE))
        ptrs, sizes = [buf.addr + i * PAGE for i in range(len(keys))], [PAGE] * len(keys)
        assert a.batch_put_from(keys, ptrs, sizes) == [0] * len(keys)
        config = load_config(cl["b"].config_path)
        cl["c"].send(signal.SIGSTOP)
        durations, t_end = [], time.monotonic() + 2.5
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            res = a.batch_get_into(keys, ptrs, sizes)
            durations.append(time.monotonic() - t0)
            assert set(res) <= {PAGE, -704}
            assert all(buf.read(i * PAGE, PAGE) == pattern(k, PAGE) for i, k in enumerate(keys) if res[i] == PAGE)
            time.sleep(0.05)
        assert max(durations) < TIMEOUT_MS / 1000 + SLACK_S
        assert sum(d > 0.5 for d in durations) <= 3, f"more than one timeout per window: {durations}"
        assert len(durations) > 10  # the calls between timeouts were quick misses
        assert not a.stats()["pool"]["peers"]["c"]["up"]
        view = wait_for_view(config, lambda m: not m["in_view_healthy"], "c marked down in b's view")
        assert not view["up"]
        cl["c"].send(signal.SIGCONT)
        wait_for_view(config, lambda m: m["in_view_healthy"] and m["up"], "c marked up again")
        deadline = time.monotonic() + 2 * TIMEOUT_MS / 1000 + 3
        while a.batch_get_into(keys, ptrs, sizes) != [PAGE] * len(keys):
            assert time.monotonic() < deadline, "c's pages were not served again after SIGCONT"
            time.sleep(0.1)
        assert a.stats()["pool"]["peers"]["c"]["up"]
    finally:
        cl["c"].send(signal.SIGCONT)
        cl.close()


def wait_for_view(config, predicate, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = cluster_status(config, timeout_ms=500)
        member = next(m for m in status["members"] if m["id"] == "c")
        if predicate(member):
            return member
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s")
