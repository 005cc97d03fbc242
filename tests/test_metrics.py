"""One field list per component: the node's /metrics endpoint and `mooncake-hicache stats --format
prometheus` expose the same series, typed (counters vs gauges) by the kinds the C++ components
declare, including the per-op request counters."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request

import pytest

from mooncake_hicache import _native
from mooncake_hicache.config import load_config
from mooncake_hicache.metrics import MetricsServer, metric_kinds, to_prometheus
from mooncake_hicache.node import Node
from mooncake_hicache.store import Store

MiB = 1 << 20


@pytest.fixture
def node_with_metrics(tmp_path):
    sock_dir = tempfile.mkdtemp(prefix="mchm", dir="/tmp")  # short: sun_path holds 107 bytes
    config = load_config({
        "mode": "node",
        "node": {"socket": os.path.join(sock_dir, "n.sock"), "autostart": False},
        "tiers": {"dram": {"capacity": "64MiB", "slab_size": "1MiB", "hugepages": False},
                  "nvme": {"path": str(tmp_path / "nvme.data"), "capacity": "16MiB", "region_size": "2MiB"}},
        "metrics": {"port": 0},
    })
    node = Node(config)
    metrics = MetricsServer("127.0.0.1", 0, node.stats)
    try:
        yield node, config, metrics
    finally:
        metrics.close()
        node.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


def _series(text: str) -> set[str]:
    """Series names with their label names (not values) of an exposition text."""
    out = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            labels = tuple(sorted(re.findall(r'(\w+)="', rest))) if rest else ()
            out.add((name.split(" ")[0], labels))
    return out


def _some_traffic(config) -> None:
    with Store(config) as s:
        assert s.put("k", b"x" * 4096) == 0
        assert s.get("k") == b"x" * 4096
        assert s.is_exist("k") == 1


def test_metrics_endpoint_and_cli_expose_the_same_series(node_with_metrics):
    node, config, metrics = node_with_metrics
    _some_traffic(config)
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=10).read().decode()
    cli = subprocess.run([sys.executable, "-m", "mooncake_hicache", "stats", "--socket", config.node.socket,
                          "--format", "prometheus"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert _series(body) == _series(cli.stdout)
    assert ("mooncake_hicache_node_requests_by_op_total", ("op",)) in _series(body)
    assert re.search(r'^mooncake_hicache_node_requests_by_op_total\{op="get_pin"\} [1-9]', body, re.M), body


def test_counters_and_gauges_are_typed(node_with_metrics):
    node, config, metrics = node_with_metrics
    _some_traffic(config)
    text = to_prometheus(node.stats())
    assert "# TYPE mooncake_hicache_tiering_puts_total counter" in text
    assert "# TYPE mooncake_hicache_nvme_checksum_failures_total counter" in text
    assert "# TYPE mooncake_hicache_dram_entries gauge" in text
    assert "# TYPE mooncake_hicache_node_connections gauge" in text
    assert re.search(r'^mooncake_hicache_nvme_io_backend_info\{value="(io_uring|threads)"\} 1', text, re.M)
    assert "# HELP mooncake_hicache_dram_value_bytes" in text


def test_every_field_of_the_node_stats_has_a_declared_kind(node_with_metrics):
    node, _, _ = node_with_metrics
    stats = node.stats()
    kinds = metric_kinds()
    for section in ("dram", "tiering", "nvme", "node"):
        assert set(stats[section]) == set(kinds[section]), section
    assert set(kinds["node"]["requests_by_op"].split(":")) == {"counter", "op"}


def test_node_stats_equal_what_a_client_reads(node_with_metrics):
    node, config, _ = node_with_metrics
    client = _native.NodeClient(config.node.socket, 5000)
    try:
        remote = json.loads(client.stats_json())
    finally:
        client.close()
    local = node.stats()
    assert set(remote) == set(local)
    for section in remote:
        assert set(remote[section]) == set(local[section]), section
