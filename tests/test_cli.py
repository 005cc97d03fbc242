"""The ``mooncake-hicache`` command, run as a newcomer would: ``python -m mooncake_hicache ...``
in a subprocess. Help texts, check-config on the shipped configs and on a bad one, a small
``bench`` (private node, byte-verified), and ``stats`` against a real node started by a Store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from mooncake_hicache import Store, _native
from mooncake_hicache.bench_command import node_pids_for, stop_node, stop_private_nodes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = [os.path.join(ROOT, "configs", name) for name in ("single-host.yaml", "dram-only.yaml")]
SUBCOMMANDS = ["node", "check-config", "stats", "bench", "devices"]

needs_node = pytest.mark.skipif(not hasattr(_native, "NodeClient"),
                                reason="this build has no node transport (_native.NodeClient)")


def cli(*args: str, timeout: float = 60, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mooncake_hicache", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)


def clean_env() -> dict:
    """The environment without MOONCAKE_HICACHE_* overrides, so the configs are checked as shipped."""
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("MOONCAKE_HICACHE_")}


# ---- help ---------------------------------------------------------------------------------------

def test_help_exits_0_and_lists_every_command():
    r = cli("--help")
    assert r.returncode == 0, r.stderr
    for name in SUBCOMMANDS:
        assert name in r.stdout


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help_exits_0(command):
    r = cli(command, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: mooncake-hicache " + command)


def test_no_command_is_a_usage_error():
    r = cli()
    assert r.returncode == 2
    assert "usage:" in r.stderr


# ---- check-config -------------------------------------------------------------------------------

@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_shipped_configs_are_valid(path):
    r = cli("check-config", path, env=clean_env())
    assert r.returncode == 0, r.stderr
    assert "valid (mode resolves to node)" in r.stdout


def test_single_host_config_has_both_tiers_and_dram_only_has_no_nvme():
    import yaml
    single = yaml.safe_load(cli("check-config", CONFIGS[0], env=clean_env()).stdout)
    dram_only = yaml.safe_load(cli("check-config", CONFIGS[1], env=clean_env()).stdout)
    assert single["tiers"]["dram"] and single["tiers"]["nvme"]
    assert dram_only["tiers"]["dram"] and dram_only["tiers"]["nvme"] is None


def test_shipped_configs_comment_every_field():
    """Each setting line is preceded by (or carries) a comment, for a newcomer."""
    for path in CONFIGS + [os.path.join(ROOT, "configs", "cluster.yaml")]:
        lines = open(path).read().splitlines()
        for i, line in enumerate(lines):
            text = line.strip()
            if not text or text.startswith("#") or text.endswith(":"):
                continue  # comments and section headers
            commented = "#" in line or (i > 0 and lines[i - 1].strip().startswith("#"))
            assert commented, f"{os.path.basename(path)}:{i + 1} has no comment: {line!r}"


@pytest.mark.parametrize("body, field", [
    ("tiers:\n  dram:\n    capacity: lots\n", "tiers.dram.capacity"),
    ("tiers:\n  dram:\n    eviction: random\n", "tiers.dram.eviction"),
    ("tiers:\n  dram: {}\nnode:\n  timeout_ms: 0\n", "node.timeout_ms"),
    ("tiers:\n  dram: {}\n  nvme:\n    capcity: 1GiB\n", "tiers.nvme.capcity"),
])
def test_bad_config_exits_2_naming_the_field(tmp_path, body, field):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    r = cli("check-config", str(path), env=clean_env())
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert f"ConfigError: {field}" in r.stderr


def test_missing_config_file_exits_2(tmp_path):
    r = cli("check-config", str(tmp_path / "nope.yaml"), env=clean_env())
    assert r.returncode == 2
    assert "ConfigError:" in r.stderr and "not found" in r.stderr


# ---- bench ---------------------------------------------------------------------------------------

@needs_node
def test_small_bench_prints_one_verified_json_line():
    r = cli("bench", "--pages", "64", "--page-size", "256KiB", "--json", timeout=120, env=clean_env())
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, r.stdout  # --json: only the JSON line on stdout
    res = json.loads(lines[0])
    assert res["bench"] == "store" and res["ok"] is True
    assert res["mode"] == "node" and res["node_pid"]
    assert res["mismatches"] == 0 and res["failures"] == []
    ph = res["phases"]
    assert ph["write"]["pages"] == 64 and ph["write"]["errors"] == 0
    assert ph["exists"]["found"] == 64
    # 16 pages fit in DRAM: the last-written come from DRAM, the first-written from NVMe.
    assert ph["read_dram"]["dram_hits"] == ph["read_dram"]["pages"] > 0
    assert ph["read_nvme"]["nvme_hits"] == ph["read_nvme"]["pages"] > 0
    assert res["verified_pages"] == sum(ph[k]["verified_pages"] for k in ("read_dram", "read_nvme", "reread"))
    assert res["verified_pages"] >= 3 * 16
    # the node it started is gone, and so is its private directory
    pid = res["node_pid"]
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] == "Z"


def test_bench_rejects_a_bad_page_size():
    r = cli("bench", "--page-size", "huge", "--json", env=clean_env())
    assert r.returncode == 2
    assert "ConfigError: --page-size" in r.stderr


# ---- stats against a live node ---------------------------------------------------------------

@pytest.fixture
def live_node(tmp_path):
    """A node started by a Store (node mode, short socket path in a fresh /tmp dir), with a few
    pages in it; yields (store, socket). Stops the node and removes its files afterwards."""
    sock_dir = tempfile.mkdtemp(prefix="mch", dir="/tmp")
    sock = os.path.join(sock_dir, "node.sock")
    config = {
        "mode": "node",
        "tiers": {"dram": {"capacity": "8MiB", "slab_size": "1MiB"},
                  "nvme": {"path": str(tmp_path / "nvme.data"), "capacity": "32MiB", "region_size": "4MiB"}},
        "node": {"socket": sock, "timeout_ms": 5000},
        "metrics": {"port": 0},
        "logging": {"level": "WARNING"},
    }
    store = None
    pid = None
    try:
        store = Store.from_config(config)
        pid = (store.stats().get("node") or {}).get("pid")
        if not pid:  # stats() names no pid: the node the Store started, by its command line
            pids = node_pids_for(sock)
            assert len(pids) == 1, pids
            pid = pids[0]
        assert pid != os.getpid()
        for i in range(12):  # 12 x 1 MiB into 8 MiB of DRAM: some pages are demoted to NVMe
            assert store.put(f"page-{i}", bytes([i]) * (1 << 20)) == 0
        assert store.get("page-0") == bytes([0]) * (1 << 20)
        yield store, sock
    finally:
        if store is not None:
            store.close()
        if pid:
            stop_node(pid)
        stop_private_nodes(sock)
        shutil.rmtree(sock_dir, ignore_errors=True)


@needs_node
def test_stats_table_has_dram_and_nvme_rows(live_node):
    _, sock = live_node
    r = cli("stats", "--socket", sock, env=clean_env())
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0] for line in r.stdout.splitlines() if line.strip()}
    assert "dram" in rows and "nvme" in rows, r.stdout


@needs_node
def test_stats_prometheus_and_json(live_node):
    _, sock = live_node
    r = cli("stats", "--socket", sock, "--format", "prometheus", env=clean_env())
    assert r.returncode == 0, r.stderr
    metrics = [line for line in r.stdout.splitlines() if line and not line.startswith("#")]
    assert metrics and all(line.startswith("mooncake_hicache_") for line in metrics), r.stdout
    assert any(line.startswith("mooncake_hicache_dram_") for line in metrics)
    assert any(line.startswith("mooncake_hicache_nvme_") for line in metrics)
    j = cli("stats", "--socket", sock, "--format", "json", env=clean_env())
    assert j.returncode == 0, j.stderr
    stats = json.loads(j.stdout)
    assert stats["tiering"]["puts"] >= 12 and stats["tiering"]["demoted"] >= 1


@needs_node
def test_stats_without_a_node_says_how_to_start_one():
    sock_dir = tempfile.mkdtemp(prefix="mch", dir="/tmp")
    try:
        r = cli("stats", "--socket", os.path.join(sock_dir, "none.sock"), env=clean_env())
        assert r.returncode != 0
        assert "mooncake-hicache node" in r.stderr or "no node" in r.stderr
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_bench_page_check_catches_wrong_stale_and_swapped_pages():
    """The pattern bench verifies with: a flipped byte, a page left from an earlier batch in the
    same slot, and another key's page all fail; the right page passes."""
    import ctypes
    from mooncake_hicache.bench_command import PageSlots, make_keys
    size, slots = 64 << 10, 4
    ps = PageSlots(size, slots)
    try:
        keys, _ = make_keys(12)

        def deliver(src_index, dst_index):  # what a correct get of src_index into dst's slot does
            ps.stamp(src_index, keys[src_index])
            ctypes.memmove(ps.slot_addr(ps.get, dst_index), ps.slot_addr(ps.put, src_index), size)

        deliver(5, 5)
        assert ps.verify(5, keys[5])
        ps.get.mm[(5 % slots) * size + 3000] ^= 0xFF  # one flipped byte
        assert not ps.verify(5, keys[5])
        deliver(1, 1)  # slot 1 still holds page 1 when page 9 (same slot) is read: stale
        assert not ps.verify(9, keys[9])
        deliver(2, 2)
        assert not ps.verify(2, keys[3])  # right slot, wrong key
    finally:
        ps.close()
