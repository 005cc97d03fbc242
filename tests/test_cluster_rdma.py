"""The RDMA data path of the pool end to end, in real processes: two node processes (each with its
Unix socket, NVMe file and TCP port on 127.0.0.1) and a rank process (tests/netns_pool_client.py)
with ``cluster.transport: rdma``.

These machines have no RDMA NIC and no Soft-RoCE, so every process here runs on the **FAKE verbs
provider** (``MOONCAKE_HICACHE_FAKE_VERBS=1``; csrc/transport/rdma/fake_verbs.h): the only fake
allowed. It keeps queue-pair states, memory regions and keys like a NIC, and its "HCA" moves the
bytes between the processes with process_vm_readv/writev, so the rest is the product's real path:
the RDMA_CONNECT handshake over the authenticated TCP connection, descriptors of the rank's
registered buffer in the requests, the nodes' RDMA READs (puts) and WRITEs (gets) into it, the
completion threads, failed completions, a hung transfer, and a node restart detected by its
incarnation. On
hardware, tests/hw/ runs the same over a real device.

The test process itself never opens the fake (the verbs provider is chosen once per process).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from cluster_helpers import ROOT, Cluster, RankProcess
from mooncake_hicache import _native
from mooncake_hicache.cluster.transport import choose_transport
from mooncake_hicache.config import load_config
from mooncake_hicache.errors import ConfigError, ErrorCode

FAKE = {"MOONCAKE_HICACHE_FAKE_VERBS": "1"}
PAGE = 64 * 1024
CALL_S = 30.0

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the fake verbs provider moves bytes with process_vm_*")


def fake_popen(args, **kw):
    return subprocess.Popen(args, env=dict(os.environ, **FAKE), **kw)


@pytest.fixture
def rdma_pool(tmp_path):
    """Nodes a and b on the FAKE verbs provider with transport rdma, and a rank on a's host."""
    cluster = Cluster(tmp_path, ["a", "b"], replicas=1, transport="rdma")
    for n in cluster.nodes.values():
        n.env.update(FAKE)
    ranks = []

    def rank() -> RankProcess:
        r = RankProcess(fake_popen, cluster["a"].config_path, 30.0, CALL_S, PAGE)
        ranks.append(r)
        return r

    cluster.rank = rank
    try:
        yield cluster
    finally:
        for r in ranks:
            r.close()
        cluster.close()


def keys_on(node_id: str, cluster: Cluster, n: int, prefix: str) -> list:
    """n keys whose holder (replicas 1) is node_id."""
    from mooncake_hicache.cluster import Placement
    view = cluster["a"].view()
    placement = Placement([(m["id"], m["weight"]) for m in view["members"]])
    out, i = [], 0
    while len(out) < n:
        k = f"{prefix}-{i}"
        if placement.holders(k, 1)[0] == node_id:
            out.append(k)
        i += 1
    return out


def assert_all_read(reply: dict, keys: list) -> None:
    assert reply["wrong"] == []
    assert reply["codes"] == [PAGE] * len(keys)


def test_pages_move_between_node_processes_with_one_sided_rdma(rdma_pool):
    rdma_pool.start()
    rank = rdma_pool.rank()
    keys = keys_on("b", rdma_pool, 48, "page")
    assert rank.call("put", keys)["codes"] == [0] * len(keys)
    assert_all_read(rank.call("get", keys), keys)
    pool = rank.call("stats")["pool"]["rdma"]
    assert pool["transport"] == "rdma" and pool["provider"].startswith("fake")
    assert pool["tcp_fallbacks"] == 0 and pool["rdma_requests"] >= 2 and pool["lanes_up"] >= 1
    node = rdma_pool["b"].stats()["peer"]
    # The values crossed as RDMA READs (put) and WRITEs (get); none travelled in the TCP stream.
    assert node["rdma"]["bytes_read"] == len(keys) * PAGE
    assert node["rdma"]["bytes_written"] == len(keys) * PAGE
    assert node["bytes_staged"] == 0 and node["rdma"]["refused_descriptors"] == 0
    assert node["rdma"]["registered_bytes"] > 0 and node["rdma"]["memory_regions"] >= 1


def test_a_failed_completion_fails_its_pages_and_the_lane_reconnects(rdma_pool):
    # b's fifth RDMA work request completes with a remote access error: RC flushes the ones after it.
    rdma_pool["b"].env["MOONCAKE_HICACHE_FAKE_VERBS_FAIL"] = "remote_access@5"
    for n in rdma_pool.nodes.values():
        n.config["cluster"]["spill_depth"] = 0  # the failure shows (else the pages go to a)
    rdma_pool.start()
    rank = rdma_pool.rank()
    keys = keys_on("b", rdma_pool, 16, "fault")
    codes = rank.call("put", keys)["codes"]
    assert codes[:4] == [0] * 4  # the four READs before the failure moved whole
    assert set(codes[4:]) == {ErrorCode.IO_ERROR}
    failed = [k for k, c in zip(keys, codes) if c != 0]
    get = rank.call("get", keys)
    assert get["wrong"] == []  # a page whose transfer failed is a miss, never garbage
    assert [c == PAGE for c in get["codes"]] == [c == 0 for c in codes]
    # The lane was reset and connected again: the failed pages go over RDMA now.
    assert rank.call("put", failed)["codes"] == [0] * len(failed)
    assert_all_read(rank.call("get", keys), keys)
    node = rdma_pool["b"].stats()["peer"]["rdma"]
    assert node["failed_transfers"] >= 1 and node["lane_breaks"] >= 1
    assert node["reconnects"] + node["connects"] >= 2
    pool = rank.call("stats")["pool"]["rdma"]
    assert pool["lane_failures"] >= 1 and pool["lanes_up"] >= 1


def test_a_hung_transfer_costs_one_timeout_and_the_lane_comes_back(rdma_pool):
    # b's third work request never executes and never completes (a hung NIC): the request times
    # out at the rank, the node gives its queue pair up (then the NIC touches none of the slots'
    # memory) before it releases the reservations, and both sides connect the lane anew.
    rdma_pool["b"].env["MOONCAKE_HICACHE_FAKE_VERBS_FAIL"] = "stall@3"
    for n in rdma_pool.nodes.values():
        n.config["cluster"]["spill_depth"] = 0
    rdma_pool.start()
    rank = rdma_pool.rank()
    keys = keys_on("b", rdma_pool, 8, "hung")
    put = rank.call("put", keys)
    assert put["codes"] == [ErrorCode.NODE_UNAVAILABLE] * len(keys)
    assert put["seconds"] < 2.0 + 1.5  # request_timeout_ms 2000: one timeout, no hang
    deadline = time.monotonic() + 15
    while rdma_pool["b"].stats()["peer"]["rdma"]["given_up"] < 1:
        assert time.monotonic() < deadline, "the node did not give the hung queue pair up"
        time.sleep(0.2)
    time.sleep(2.5)  # the member's cool-down at the rank
    assert rank.call("put", keys)["codes"] == [0] * len(keys)
    assert_all_read(rank.call("get", keys), keys)
    node = rdma_pool["b"].stats()["peer"]["rdma"]
    assert node["reconnects"] >= 1 and node["bytes_written"] == len(keys) * PAGE
    assert rank.call("stats")["pool"]["rdma"]["tcp_fallbacks"] == 0


def test_a_restarted_node_refuses_the_old_lane_by_its_incarnation(rdma_pool):
    rdma_pool.start()
    rank = rdma_pool.rank()
    keys = keys_on("b", rdma_pool, 8, "before")
    assert rank.call("put", keys)["codes"] == [0] * len(keys)
    rdma_pool["b"].kill(signal.SIGKILL)
    rdma_pool["b"].start()
    rdma_pool.wait_all_up()
    later = keys_on("b", rdma_pool, 8, "after")
    # The first request names b's earlier incarnation: refused before anything is posted (its
    # rkeys are never used), sent again in the same call over TCP; the lane is then set up anew.
    assert rank.call("put", later)["codes"] == [0] * len(later)
    assert rdma_pool["b"].stats()["peer"]["rdma"]["stale_lanes"] >= 1
    before = rank.call("stats")["pool"]["rdma"]["rdma_requests"]
    assert_all_read(rank.call("get", later), later)
    pool = rank.call("stats")["pool"]["rdma"]
    assert pool["rdma_requests"] > before and pool["connects"] >= 2


def test_auto_without_a_usable_device_uses_tcp_and_logs_why(tmp_path):
    cluster = Cluster(tmp_path, ["a"], transport="auto")
    try:
        cluster.start()
        log = cluster["a"].log()
        assert "cluster transport of node a: tcp (cluster.transport is auto and" in log
        assert log.count("cluster transport of node a") == 1
    finally:
        cluster.close()


def test_rdma_names_the_devices_there_are_when_a_configured_one_is_missing(tmp_path):
    cluster = Cluster(tmp_path, ["a"], transport="rdma", rdma={"devices": ["mlx5_9"]})
    node = cluster["a"]
    node.write_config()
    out = subprocess.run([sys.executable, "-m", "mooncake_hicache", "node", "--config", node.config_path],
                         env=dict(os.environ, **FAKE), capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2, out.stderr
    assert "cluster.rdma.devices[0]" in out.stderr and "'mlx5_9' is not on this host" in out.stderr
    assert "mch_fake0, mch_fake1" in out.stderr
    cluster.close()


def test_rdma_on_a_host_without_rdma_is_a_config_error(tmp_path):
    cluster = Cluster(tmp_path, ["a"], transport="rdma")
    config = load_config(cluster.store_config("a"))
    info = _native.rdma_devices()
    if info["devices"]:
        pytest.skip("this host has RDMA devices")
    with pytest.raises(ConfigError) as e:
        choose_transport(config.cluster)
    assert "cluster.transport" in str(e.value) and "set cluster.transport: tcp" in str(e.value)
    if not _native.RDMA_COMPILED_IN:
        assert "libibverbs-dev" in str(e.value)
    cluster.close()


def test_gid_index_out_of_range_is_refused():
    with pytest.raises(ConfigError, match=r"cluster.rdma.gid_index.*out of range"):
        load_config({"tiers": {"dram": {"capacity": "64MiB"}},
                     "cluster": {"node_id": "a", "members": [{"id": "a", "host": "127.0.0.1", "port": 7700}],
                                 "listen_port": 7700, "secret": "0123456789abcdef0123", "transport": "rdma",
                                 "rdma": {"gid_index": 300}}})


def test_devices_command_answers_no_devices_without_rdma():
    out = subprocess.run([sys.executable, "-m", "mooncake_hicache", "devices"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    if "no devices" not in out.stdout:
        pytest.skip(f"this host has RDMA devices:\n{out.stdout}")
    assert out.stdout.startswith("no devices")


def test_check_config_says_what_the_transport_would_be_on_this_host(tmp_path):
    cluster = Cluster(tmp_path, ["a"], transport="rdma", rdma={"devices": ["mlx5_9"]})
    node = cluster["a"]
    node.write_config()
    out = subprocess.run([sys.executable, "-m", "mooncake_hicache", "check-config", node.config_path],
                         env=dict(os.environ, **FAKE), capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr  # a config may be meant for another host: reported, not refused
    assert "# cluster.transport on this host: not usable on this host: cluster.rdma.devices[0]" in out.stdout
    assert "devices here: mch_fake0, mch_fake1" in out.stdout
    cluster.close()
