"""RDMA on real hardware: two node processes on this host and a rank, all over a real RDMA device
(loopback through the HCA), then bench/cluster_bench.py with ``--transport rdma``.

Skipped, with the reason, where this process sees no real RDMA device with an active port (no
NIC, no RDMA core in the kernel, a build without libibverbs-dev, or the FAKE verbs provider
selected). Run on a machine with a NIC:

    .venv/bin/python -m pytest tests/hw -q -rs                 # the tests
    MCH_HW_BENCH_ARGS="--sizes 1MiB --seconds 10" .venv/bin/python -m pytest tests/hw -q -s -k bench

The bench test prints the table and the JSON line (keep them with the figures you publish).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cluster_helpers import ROOT, Cluster, RankProcess  # noqa: E402

from mooncake_hicache import _native  # noqa: E402

PAGE = 1 << 20


def _no_device_reason() -> str:
    if os.environ.get("MOONCAKE_HICACHE_FAKE_VERBS") == "1":
        return "MOONCAKE_HICACHE_FAKE_VERBS=1 selects the fake provider; tests/hw needs a real device"
    info = _native.rdma_devices()
    if not info["provider"] or info["error"]:
        return f"no RDMA here: {info['error']}"
    if not any(d["usable"] for d in info["devices"]):
        names = ", ".join(d["name"] for d in info["devices"]) or "none"
        return f"no RDMA device with an active port (devices: {names})"
    return ""


REASON = _no_device_reason()
pytestmark = pytest.mark.skipif(bool(REASON), reason=REASON or "-")


@pytest.fixture
def hw_pool(tmp_path):
    cluster = Cluster(tmp_path, ["a", "b"], node_options={"dram": "512MiB", "nvme": None}, replicas=1,
                      transport="rdma")
    rank = None
    try:
        cluster.start()
        rank = RankProcess(subprocess.Popen, cluster["a"].config_path, 30.0, 60.0, PAGE)
        yield cluster, rank
    finally:
        if rank is not None:
            rank.close()
        cluster.close()


def test_pages_cross_a_real_device_both_ways(hw_pool):
    cluster, rank = hw_pool
    keys = [f"hw-{i}" for i in range(24)]
    assert rank.call("put", keys)["codes"] == [0] * len(keys)
    got = rank.call("get", keys)
    assert got["wrong"] == [] and got["codes"] == [PAGE] * len(keys)
    pool = rank.call("stats")["pool"]["rdma"]
    assert pool["provider"] == "libibverbs" and pool["rdma_requests"] >= 2 and pool["tcp_fallbacks"] == 0
    moved = sum(cluster[n].stats()["peer"]["rdma"]["bytes_read"] for n in ("b",))
    assert moved > 0


def test_cluster_bench_over_rdma():
    extra = shlex.split(os.environ.get("MCH_HW_BENCH_ARGS", "--smoke"))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "cluster_bench.py"), "--transport", "rdma",
                        "--mooncake", "off", *extra], capture_output=True, text=True, timeout=1800, cwd=ROOT)
    print(r.stdout)
    lines = [line for line in r.stdout.splitlines() if line.startswith('{"bench": "cluster"')]
    assert r.returncode == 0 and lines, r.stderr[-3000:]
    result = json.loads(lines[-1])
    assert result["ok"] and result["transport"] == "rdma"
