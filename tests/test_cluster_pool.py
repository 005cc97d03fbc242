"""The pooled DRAM tier across hosts, with real node processes on 127.0.0.1 (each with its own
Unix socket, NVMe file and TCP port; tests/cluster_helpers.py): a rank of one node writes, a rank
of another reads the same bytes; a batch costs one request per node; reads prefer the local
node; exists, single-key calls, removal and bad buffers across nodes; a dead holder's writes
spill to the next candidate and readers find them there; `cluster status` and /metrics show
every member; an autostarted member gets its inline secret through an owner-only file."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from cluster_helpers import SECRET, Cluster
from etcd_server import free_port
from conftest import Buffer, pattern
from mooncake_hicache import ErrorCode
from mooncake_hicache.cluster import Placement

PAGE = 64 * 1024
N = 128


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("pool"), ["a", "b", "c"])
    c["a"].config["metrics"]["port"] = free_port()
    c.start()
    yield c
    c.close()


@pytest.fixture(scope="module")
def placement(cluster):
    return Placement([(i, 1.0) for i in ("a", "b", "c")])


def rank(cluster, node_id, pages=N, page=PAGE):
    """A Store on node_id's host and a registered buffer of `pages` pages."""
    s = cluster.store(node_id)
    buf = Buffer(pages * page)
    s.register_buffer(buf.addr, buf.size)
    return s, buf


def put(store, buf, keys, page=PAGE):
    for i, k in enumerate(keys):
        buf.write(i * page, pattern(k, page))
    return store.batch_put_from(keys, [buf.addr + i * page for i in range(len(keys))], [page] * len(keys))


def get(store, buf, keys, page=PAGE):
    buf.write(0, b"\0" * len(keys) * page)
    return store.batch_get_into(keys, [buf.addr + i * page for i in range(len(keys))], [page] * len(keys))


def wrong_pages(buf, keys, results, page=PAGE):
    return [k for i, k in enumerate(keys) if results[i] == page and buf.read(i * page, page) != pattern(k, page)]


def peer_counts(cluster, op):
    return {n: cluster[n].peer_requests(op) for n in cluster.nodes}


def test_a_page_written_on_one_host_is_read_on_another_with_the_same_bytes(cluster, placement):
    a, abuf = rank(cluster, "a")
    b, bbuf = rank(cluster, "b")
    keys = [f"cross-{i}" for i in range(N)]
    assert put(a, abuf, keys) == [0] * N
    assert {h[0] for h in placement.batch_holders(keys)} == {"a", "b", "c"}  # the batch spans every node
    got = get(b, bbuf, keys)
    assert got == [PAGE] * N
    assert wrong_pages(bbuf, keys, got) == []
    assert b.batch_is_exist(keys + ["cross-never-written"]) == [1] * N + [0]


def test_a_batch_costs_one_request_per_node_and_reads_prefer_the_local_node(cluster, placement):
    a, abuf = rank(cluster, "a")
    c, cbuf = rank(cluster, "c")
    keys = [f"batch-{i}" for i in range(N)]
    before = peer_counts(cluster, "peer_put")
    assert put(a, abuf, keys) == [0] * N
    after = peer_counts(cluster, "peer_put")
    # a's share goes over its own socket; b and c get exactly one PEER_PUT each for 128 pages
    assert {n: after[n] - before[n] for n in after} == {"a": 0, "b": 1, "c": 1}

    before = peer_counts(cluster, "peer_get")
    local_before = c.stats()["pool"]["keys_found_local"]
    got = get(c, cbuf, keys)
    after = peer_counts(cluster, "peer_get")
    assert got == [PAGE] * N and wrong_pages(cbuf, keys, got) == []
    assert {n: after[n] - before[n] for n in after} == {"a": 1, "b": 1, "c": 0}
    held_by_c = sum(h[0] == "c" for h in placement.batch_holders(keys))
    assert c.stats()["pool"]["keys_found_local"] - local_before == held_by_c

    before = peer_counts(cluster, "exists")
    assert c.batch_is_exist(keys) == [1] * N
    after = peer_counts(cluster, "exists")
    assert all(after[n] - before[n] <= 1 for n in after)  # holders and spill candidates: one request each


def test_single_key_calls_and_removal_reach_the_holder(cluster, placement):
    a, _ = rank(cluster, "a", pages=1)
    b, _ = rank(cluster, "b", pages=1)
    key = next(f"one-{i}" for i in range(100) if placement.holders(f"one-{i}")[0] == "c")
    value = pattern(key, 12345)
    assert a.put(key, value) == 0
    assert b.get(key) == value
    assert b.get_size(key) == len(value)
    assert b.is_exist(key) == 1
    assert b.remove(key) == 0
    assert a.is_exist(key) == 0 and a.get(key) == b""
    assert a.get_size(key) == ErrorCode.NOT_FOUND


def test_a_remote_value_larger_than_the_buffer_is_buffer_too_small(cluster, placement):
    a, abuf = rank(cluster, "a", pages=1)
    key = next(f"big-{i}" for i in range(100) if placement.holders(f"big-{i}")[0] == "b")
    assert put(a, abuf, [key]) == [0]
    assert a.batch_get_into([key], [abuf.addr], [PAGE // 2]) == [ErrorCode.BUFFER_TOO_SMALL]
    assert a.batch_get_into_multi_buffers([key], [[abuf.addr, abuf.addr + PAGE // 2]], [[PAGE // 2, PAGE // 2]]) \
        == [PAGE]
    assert abuf.read(0, PAGE) == pattern(key, PAGE)


def test_writes_spill_past_a_dead_holder_and_readers_find_them(tmp_path):
    cl = Cluster(tmp_path, ["a", "b", "c"], request_timeout_ms=1000).start()
    try:
        p = Placement([(i, 1.0) for i in ("a", "b", "c")])
        keys = [k for k in (f"spill-{i}" for i in range(400)) if p.holders(k)[0] == "c"][:16]
        cl["c"].kill(signal.SIGKILL)
        a, abuf = rank(cl, "a", pages=len(keys))
        t0 = time.monotonic()
        assert put(a, abuf, keys) == [0] * len(keys)  # c refuses connections: the next candidate takes them
        assert time.monotonic() - t0 < 1.0
        assert a.stats()["pool"]["spilled_writes"] == len(keys)
        b, bbuf = rank(cl, "b", pages=len(keys))
        got = get(b, bbuf, keys)
        assert got == [PAGE] * len(keys) and wrong_pages(bbuf, keys, got) == []
        assert b.stats()["pool"]["replica_reads"] >= len(keys)
    finally:
        cl.close()


def test_exists_names_the_cheapest_holders_tier_and_prefetch_carries_its_step(tmp_path):
    """Store.batch_locate in a pool: 1/2 for the local node's DRAM/NVMe, 3/4 for another member's
    (Tier.REMOTE_DRAM/REMOTE_NVME, which the prefetch policy learns apart); a prefetch with a step
    reaches the remote holder, which promotes its NVMe pages into its DRAM."""
    cl = Cluster(tmp_path, ["a", "b"]).start()
    try:
        p = Placement([("a", 1.0), ("b", 1.0)])
        keys = [f"tier-{i}" for i in range(32)]
        at_b = [p.holders(k)[0] == "b" for k in keys]
        assert any(at_b) and not all(at_b)
        a, abuf = rank(cl, "a", pages=len(keys))
        assert put(a, abuf, keys) == [0] * len(keys)
        assert a.batch_locate(keys) == [3 if b else 1 for b in at_b]
        assert a.batch_is_exist(keys) == [1] * len(keys)

        cl["b"].stop()  # b's DRAM goes, its NVMe (write-through) stays
        cl["b"].start()
        cl.wait_all_up()
        assert cl.store("b").batch_locate(keys) == [2 if b else 3 for b in at_b]
        a = cl.store("a")  # a new pool client: the old one may still hold b as down
        assert a.batch_locate(keys) == [4 if b else 1 for b in at_b]

        b_keys = [k for k, b in zip(keys, at_b) if b]
        assert a.prefetch(b_keys, batch_pages=4) == len(b_keys)
        deadline = time.monotonic() + 10
        while a.batch_locate(b_keys) != [3] * len(b_keys) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert a.batch_locate(b_keys) == [3] * len(b_keys)
    finally:
        cl.close()


def test_cluster_status_and_metrics_show_every_member(cluster):
    cmd = [sys.executable, "-m", "mooncake_hicache", "cluster", "status", "--config", cluster["b"].config_path]
    table = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("epoch 1, 3 members, 3 up")
    assert [line.split()[0] for line in lines[2:]] == ["a", "b*", "c"]
    status = json.loads(subprocess.run(cmd + ["--format", "json"], capture_output=True, text=True, timeout=30).stdout)
    assert {m["id"]: m["up"] for m in status["members"]} == {"a": True, "b": True, "c": True}
    assert all(m["dram_capacity"] == 64 << 20 for m in status["members"])
    port = cluster["a"].config["metrics"]["port"]
    deadline = time.monotonic() + 5  # the node probes its members once a second
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        if 'mooncake_hicache_cluster_member_up{member="c"} 1.0' in text:
            break
        assert time.monotonic() < deadline, text[-3000:]
        time.sleep(0.2)
    assert "mooncake_hicache_cluster_epoch 1.0" in text and "mooncake_hicache_cluster_live_members 3.0" in text
    assert 'mooncake_hicache_cluster_member_dram_pages{member="b"}' in text
    assert 'mooncake_hicache_peer_requests_by_op_total{op="peer_get"}' in text
    assert "mooncake_hicache_peer_auth_failures_total" in text


def test_an_autostarted_member_gets_its_inline_secret_through_an_owner_only_file(tmp_path):
    import tempfile
    from mooncake_hicache import Store
    sock_dir = tempfile.mkdtemp(prefix="mcha", dir="/tmp")
    port = free_port()
    config = {"mode": "node", "tiers": {"dram": {"capacity": "16MiB", "slab_size": "1MiB", "hugepages": False}},
              "node": {"socket": os.path.join(sock_dir, "n.sock"), "autostart": True}, "metrics": {"port": 0},
              "cluster": {"node_id": "solo", "listen_port": port, "secret": SECRET,
                          "members": [{"id": "solo", "host": "127.0.0.1", "port": port}]}}
    store = Store.from_config(config)
    pid = None
    try:
        written = os.path.join(sock_dir, "n.sock.yaml")
        assert stat.S_IMODE(os.stat(written).st_mode) == 0o600
        assert yaml.safe_load(open(written))["cluster"]["secret"] == SECRET
        assert store.put("k", b"v" * 100) == 0 and store.get("k") == b"v" * 100
        pid = store.stats()["node"]["pid"]
        status = store.stats()["pool"]
        assert (status["epoch"], status["self_id"], status["members"]) == (1, "solo", 1)
    finally:
        store.close()
        if pid:
            os.kill(pid, signal.SIGTERM)
            for _ in range(200):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
        import shutil
        shutil.rmtree(sock_dir, ignore_errors=True)
