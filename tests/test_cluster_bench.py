"""bench/cluster_bench.py in smoke mode: the limits alone (always), our pool against them (needs
the cluster transport), Mooncake beside it (needs bench/.mooncake-venv, never the project's
.venv); and the pieces whose mistakes would make its figures lie: the page check of its worker,
the CPU reading, the search for Mooncake's interpreter."""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

from mooncake_hicache import _native

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
sys.path.insert(0, BENCH)
import cluster_pools  # noqa: E402
import cluster_worker  # noqa: E402
import mooncake_env  # noqa: E402

needs_pool = pytest.mark.skipif(not hasattr(_native, "PoolClient"),
                                reason="cluster transport not built (mooncake_hicache._native has no PoolClient)")


def run_bench(*args: str, timeout: float = 240, env: dict = None) -> dict:
    r = subprocess.run([sys.executable, os.path.join(BENCH, "cluster_bench.py"), "--smoke", *args],
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=dict(os.environ, **(env or {})))
    lines = [l for l in r.stdout.splitlines() if l.startswith('{"bench": "cluster"')]
    assert r.returncode == 0 and lines, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return json.loads(lines[-1])


def systems(result: dict, op: str) -> dict:
    return result["results"][0]["ops"][op]["systems"]


def check_clean(figures: dict) -> None:
    assert figures["gbps"] > 0 and figures["batches"] >= 2 and figures["batch_ms_p99"] >= figures["batch_ms_p50"] > 0
    assert figures["wrong"] == figures["misses"] == figures["errors"] == 0


def test_smoke_measures_the_limits_alone():
    result = run_bench("--only", "limits")
    assert result["ok"] and result["only"] == "limits" and result["exists"] is None
    for op in ("get", "put"):
        got = systems(result, op)
        assert set(got) == {"tcp4", "tcp1", "memcpy"}
        for figures in got.values():
            check_clean(figures)
            assert figures["client_cores_per_gbps"] > 0
        assert got["tcp4"]["node_cores_per_gbps"] > 0  # the sender's CPU is read from /proc


@needs_pool
def test_smoke_measures_our_pool_against_the_limits():
    result = run_bench("--mooncake", "off")
    assert result["ok"], result["failures"]
    for op in ("get", "put"):
        got = systems(result, op)
        assert set(got) == {"ours", "tcp4", "tcp1", "memcpy"}
        check_clean(got["ours"])
        assert got["ours"]["node_cores_per_gbps"] > 0
        ratios = result["results"][0]["ops"][op]["ratios"]
        assert ratios["vs_tcp4"]["ratio"] > 0 and result["results"][0]["ops"][op]["pairs"] % 2 == 0
    assert result["exists"]["ours"]["calls"] == 20 and result["exists"]["ours"]["p50_us"] > 0


@needs_pool
def test_smoke_runs_our_pool_over_rdma_on_the_fake_verbs_provider():
    # No RDMA NIC here: the FAKE verbs provider proves the option and the path, not the figures
    # (tests/hw/ runs it on a device).
    result = run_bench("--mooncake", "off", "--transport", "rdma", env={"MOONCAKE_HICACHE_FAKE_VERBS": "1"})
    assert result["ok"], result["failures"]
    assert result["transport"] == "rdma" and any("FAKE verbs provider" in n for n in result["notes"])
    for op in ("get", "put"):
        check_clean(systems(result, op)["ours"])


MOONCAKE_PYTHON, MOONCAKE_VERSION, MOONCAKE_MISSING = mooncake_env.find()


@needs_pool
@pytest.mark.skipif(MOONCAKE_PYTHON is None, reason=f"Mooncake is not installed for the bench: {MOONCAKE_MISSING}")
def test_smoke_measures_mooncake_beside_ours():
    result = run_bench("--mooncake", "require")
    assert result["mooncake"] == MOONCAKE_VERSION
    for op in ("get", "put"):
        check_clean(systems(result, op)["mooncake"])
    assert result["exists"]["mooncake"]["calls"] == 20


def test_the_project_venv_cannot_import_mooncake():
    """SGLang changes its behaviour when Mooncake imports: it lives in a venv of its own."""
    assert importlib.util.find_spec("mooncake") is None
    python, _, why = mooncake_env.find(sys.executable)
    assert python is None and "cannot import mooncake.store" in why


def test_the_worker_page_check_catches_wrong_torn_and_foreign_pages():
    size = 64 * 1024
    sl = cluster_worker.Slots(size, 4)
    try:
        def deliver(j: int, index: int, key: str) -> None:
            sl.stamp(j, index, key)
            ctypes.memmove(sl.addr(sl.get, j), sl.addr(sl.put, j), size)
            sl.unstamp(j)

        deliver(1, 5, "k5")
        assert sl.verify(1, 5, "k5")
        deliver(1, 5, "k5")
        assert not sl.verify(1, 5, "other-key")   # a page of another key
        deliver(1, 5, "k5")
        assert not sl.verify(1, 9, "k5")          # an older round of the same slot
        deliver(1, 5, "k5")
        sl.get.view[1 * size + 3 * 4096 + 100] ^= 0xFF
        assert not sl.verify(1, 5, "k5")          # one byte flipped
        deliver(2, 6, "k6")
        deliver(1, 5, "k5")
        half = sl.addr(sl.get, 1) + size // 2
        ctypes.memmove(half, sl.addr(sl.get, 2) + size // 2, size // 2)
        assert not sl.verify(1, 5, "k5")          # torn: its second half is another page's
    finally:
        sl.close()


def test_cpu_seconds_follow_a_busy_process():
    p = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                          "while time.process_time() - t < 0.5: pass\nimport sys; sys.stdin.read()"],
                         stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while cluster_pools.cpu_seconds(p.pid) < 0.4:
            assert time.monotonic() < deadline, "no CPU seen"
            time.sleep(0.05)
    finally:
        p.communicate(b"", timeout=30)
    assert cluster_pools.cpu_seconds(p.pid) == 0.0  # gone (reaped)
