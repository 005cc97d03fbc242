"""Metrics: the one stats dict (``Store.stats()`` / ``Node.stats()`` / ``mooncake-hicache stats``)
rendered for Prometheus, and the small HTTP endpoint the node serves it on (``GET /metrics``;
``GET /stats`` gives JSON).

Every field ``stats[section][name]`` becomes ``mooncake_hicache_<section>_<name>``, typed by the
kind the C++ component declares for it (``_native.metric_kinds()``, from the same field list that
writes the figures): counters (exposed with the ``_total`` suffix), gauges, flags (0/1 gauges),
strings (an ``..._info{value="..."} 1`` series), per-label counters such as
``mooncake_hicache_node_requests_by_op_total{op="get_pin"}`` and per-label gauges such as
``mooncake_hicache_cluster_member_up{member="node-b"}`` (a cluster member's view of its peers). Hit rates per tier are derived here
so dashboards need no arithmetic. The exposition text comes from ``prometheus_client``.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from . import _native

PREFIX = "mooncake_hicache"


def _name(*parts: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", "_".join((PREFIX,) + parts))


# Sections the node process adds in Python (cluster/service.py), typed here: the view and, per
# member (label ``member``), its health and figures from the node's probes.
PYTHON_KINDS = {
    "cluster": {"epoch": "gauge", "members": "gauge", "live_members": "gauge", "in_grace": "flag",
                "membership_healthy": "flag", "port": "gauge", "node_id": "info", "membership": "info",
                **{f"member_{k}": "gauge:member" for k in ("up", "dram_pages", "nvme_pages", "dram_bytes",
                                                           "nvme_bytes", "dram_capacity", "nvme_capacity",
                                                           "rtt_ms", "weight")}},
}


@functools.lru_cache(maxsize=1)
def metric_kinds() -> dict:
    """``{section: {field: kind}}`` as the extension (and, for Python sections, PYTHON_KINDS) declare them."""
    return {**_native.metric_kinds(), **PYTHON_KINDS}


def hit_rates(stats: dict) -> dict:
    """Fractions of get requests served by each tier, from the ``tiering`` section."""
    t = stats.get("tiering") or {}
    gets = t.get("dram_hits", 0) + t.get("nvme_hits", 0) + t.get("misses", 0)
    if not gets:
        n = stats.get("nvme") or {}
        gets = n.get("hits", 0) + n.get("misses", 0)
        return {"nvme": n.get("hits", 0) / gets if gets else 0.0}
    return {"dram": t.get("dram_hits", 0) / gets, "nvme": t.get("nvme_hits", 0) / gets,
            "any": (t.get("dram_hits", 0) + t.get("nvme_hits", 0)) / gets}


def _guess_kind(value) -> str:
    """The kind of a field no component declared (figures added in Python)."""
    if isinstance(value, bool):
        return "flag"
    if isinstance(value, (int, float)):
        return "gauge"
    if isinstance(value, str):
        return "info"
    return "skip"


def _family(section: str, key: str, value, kind: str) -> Metric | None:
    name, doc = _name(section, key), f"{section} {key.replace('_', ' ')}"
    if kind.startswith(("counter:", "gauge:")) and isinstance(value, dict):
        cls = CounterMetricFamily if kind.startswith("counter:") else GaugeMetricFamily
        family = cls(name, doc, labels=[kind.split(":", 1)[1]])
        for label, n in sorted(value.items()):
            family.add_metric([str(label)], float(n) if cls is GaugeMetricFamily else n)
        return family
    if kind == "counter":
        return CounterMetricFamily(name, doc, value=value)
    if kind in ("gauge", "flag") and isinstance(value, (int, float)):
        return GaugeMetricFamily(name, doc, value=float(value))
    if kind == "info":
        return InfoMetricFamily(name, doc, value={"value": str(value)})
    return None  # lists (client pids) have no Prometheus form


def families(stats: dict) -> Iterator[Metric]:
    """The metric families of a stats dict, typed by ``metric_kinds()``."""
    kinds = metric_kinds()
    for section, values in sorted(stats.items()):
        if not isinstance(values, dict):
            continue
        declared = kinds.get(section, {})
        for key, value in sorted(values.items()):
            family = _family(section, key, value, declared.get(key) or _guess_kind(value))
            if family is not None:
                yield family
    rates = GaugeMetricFamily(_name("hit_rate"), "fraction of gets served by each tier", labels=["tier"])
    for tier, rate in sorted(hit_rates(stats).items()):
        rates.add_metric([tier], rate)
    yield rates


class _StatsCollector:
    def __init__(self, stats: dict):
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        return families(self._stats)


def to_prometheus(stats: dict) -> str:
    """Render a stats dict in the Prometheus text exposition format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatsCollector(stats))
    return generate_latest(registry).decode()


class MetricsServer:
    """Serves ``stats_fn()`` on ``http://host:port/metrics`` (Prometheus) and ``/stats`` (JSON)
    from a daemon thread. Raises OSError if the port is taken."""

    def __init__(self, host: str, port: int, stats_fn: Callable[[], dict]):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server naming)
                if self.path.split("?")[0] == "/metrics":
                    body, kind = to_prometheus(stats_fn()).encode(), CONTENT_TYPE_LATEST
                elif self.path.split("?")[0] == "/stats":
                    body, kind = json.dumps(stats_fn()).encode(), "application/json"
                else:
                    self.send_error(404, "try /metrics or /stats")
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep the node's log for the cache's own lines
                pass

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
