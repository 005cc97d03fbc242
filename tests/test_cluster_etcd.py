"""etcd membership with real node processes and a REAL etcd server (tests/etcd_server.py; the test
skips, saying why, only when the etcd binary is missing): a join and a leave are seen by every
node within TTL + 1 s; pages written before a join are still found through the previous view's
holders (grace window); etcd going away keeps the last view serving and is reported, and its
return is reported; a node cut off from etcd past its lease leaves the others' views and
registers again when the link is back."""

from __future__ import annotations

import json
import signal
import time
import urllib.request

import pytest

from cluster_helpers import Cluster
from conftest import Buffer, pattern
from etcd_server import ETCD, SKIP_REASON, EtcdServer, TcpProxy, free_port
from mooncake_hicache.cluster import Placement

TTL = 2
PAGE = 64 * 1024

pytestmark = pytest.mark.skipif(ETCD is None, reason=SKIP_REASON)


def wait_for(predicate, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - t0


def node_stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=2) as r:
        return json.loads(r.read())


def write(store, keys):
    buf = Buffer(len(keys) * PAGE)
    store.register_buffer(buf.addr, buf.size)
    for i, k in enumerate(keys):
        buf.write(i * PAGE, pattern(k, PAGE))
    res = store.batch_put_from(keys, [buf.addr + i * PAGE for i in range(len(keys))], [PAGE] * len(keys))
    store.unregister_buffer(buf.addr)
    buf.close()
    return res


def read(store, keys):
    buf = Buffer(len(keys) * PAGE)
    store.register_buffer(buf.addr, buf.size)
    res = store.batch_get_into(keys, [buf.addr + i * PAGE for i in range(len(keys))], [PAGE] * len(keys))
    wrong = [k for i, k in enumerate(keys) if res[i] == PAGE and buf.read(i * PAGE, PAGE) != pattern(k, PAGE)]
    store.unregister_buffer(buf.addr)
    buf.close()
    return res, wrong


def test_etcd_membership_with_node_processes(tmp_path):
    etcd = EtcdServer(str(tmp_path / "etcd-data")).start()
    cl = Cluster(tmp_path, ["a", "b", "c"], etcd={"endpoints": [etcd.url], "prefix": "/cluster-test/",
                                                  "lease_ttl_s": TTL}, grace_window_ms=60000, spill_depth=0)
    metrics_port = free_port()
    cl["a"].config["metrics"]["port"] = metrics_port
    proxy = TcpProxy(etcd.client_port)  # a reaches etcd through it, so the test can cut a off
    cl["a"].config["cluster"]["etcd"] = dict(cl["a"].config["cluster"]["etcd"], endpoints=[proxy.url])
    try:
        cl["a"].start(wait=False)
        cl["b"].start()
        cl["a"].wait_ready()
        wait_for(lambda: all(cl[n].member_ids() == ["a", "b"] for n in "ab"), TTL + 1, "a and b see each other")
        a, b = cl.store("a"), cl.store("b")
        before_join = [f"grace-{i}" for i in range(64)]
        res = write(a, before_join)
        assert res == [0] * len(before_join)

        # join: c registers; every node sees it within TTL + 1 s
        cl["c"].start()
        took = wait_for(lambda: all(cl[n].member_ids() == ["a", "b", "c"] for n in "abc"), TTL + 1, "the join")
        print(f"join seen by every node in {took:.2f} s")
        # pages written before the join whose holder is now c: found at their previous holders
        # (spill_depth 0 here: with 1, the spill candidate of such a key IS its previous holder,
        # since rendezvous hashing keeps the ranking of the members that stay)
        moved = [k for k in before_join if Placement([(i, 1.0) for i in "abc"]).holders(k)[0] == "c"]
        assert moved
        time.sleep(0.6)  # the ranks refresh their view from their node (every 500 ms)
        got, wrong = read(b, before_join)
        assert got == [PAGE] * len(before_join) and wrong == []
        assert b.stats()["pool"]["grace_hits"] >= len(moved)
        c = cl.store("c")
        res = write(c, [f"after-join-{i}" for i in range(32)])
        assert res == [0] * 32
        got, wrong = read(a, [f"after-join-{i}" for i in range(32)])
        assert got == [PAGE] * 32 and wrong == []

        # leave: c is killed; its lease expires; every node drops it within TTL + 1 s
        cl["c"].kill(signal.SIGKILL)
        took = wait_for(lambda: all(cl[n].member_ids() == ["a", "b"] for n in "ab"), TTL + 1.5, "the leave")
        print(f"leave seen by every node in {took:.2f} s")

        # etcd goes away: the last view keeps serving, and the node says so
        etcd.kill()
        wait_for(lambda: not node_stats(metrics_port)["cluster"]["membership_healthy"], TTL + 2,
                 "a reports etcd unreachable")
        res = write(a, [f"etcd-gone-{i}" for i in range(32)])
        assert res == [0] * 32
        got, wrong = read(b, [f"etcd-gone-{i}" for i in range(32)])
        assert got == [PAGE] * 32 and wrong == []
        assert cl["a"].member_ids() == ["a", "b"]

        # etcd returns: the nodes are healthy again, registered, and their views converge
        etcd.start()
        wait_for(lambda: node_stats(metrics_port)["cluster"]["membership_healthy"], 3 * TTL + 2,
                 "a reports etcd reachable again")
        wait_for(lambda: all(cl[n].member_ids() == ["a", "b"] for n in "ab"), 3 * TTL + 2, "views converge")
        assert "etcd unreachable" in cl["a"].log() and "etcd reachable again" in cl["a"].log()

        # a is cut off from etcd past its lease: b drops it; when the link is back a registers again
        registered = node_stats(metrics_port)["cluster"]["membership_registrations"]
        proxy.cut()
        wait_for(lambda: cl["b"].member_ids() == ["b"], 3 * TTL + 2, "b drops the cut-off a")
        proxy.restore()
        wait_for(lambda: all(cl[n].member_ids() == ["a", "b"] for n in "ab"), 3 * TTL + 2, "a registers again")
        assert node_stats(metrics_port)["cluster"]["membership_registrations"] == registered + 1
    finally:
        cl.close()
        proxy.close()
        etcd.kill()
