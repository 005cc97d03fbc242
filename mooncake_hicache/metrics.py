"""Metrics: the one stats dict (``Store.stats()`` / ``Node.stats()`` / ``mooncake-hicache stats``)
rendered for Prometheus, and the small HTTP endpoint the node serves it on (``GET /metrics``;
``GET /stats`` gives JSON), bounded in connections and time (``MetricsServer``).

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
import logging
import re
import threading
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
                "membership_registrations": "counter", "membership_watch_restarts": "counter",
                "membership_etcd_failures": "counter",
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


def _section_families(sections: dict, kinds: dict, outer: tuple) -> Iterator[Metric]:
    """Families of every section of ``sections``; a nested section (such as ``peer.rdma``, whose
    declared kind is a dict of kinds) is named ``<section>_<nested>``."""
    for section, values in sorted(sections.items()):
        if not isinstance(values, dict):
            continue
        declared = kinds.get(section, {})
        name = "_".join(outer + (section,))
        for key, value in sorted(values.items()):
            kind = declared.get(key) or _guess_kind(value)
            if isinstance(kind, dict):
                yield from _section_families({key: value}, {key: kind}, (name,))
                continue
            family = _family(name, key, value, kind)
            if family is not None:
                yield family


def families(stats: dict) -> Iterator[Metric]:
    """The metric families of a stats dict, typed by ``metric_kinds()``."""
    yield from _section_families(stats, metric_kinds(), ())
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


def public_stats(stats: dict) -> dict:
    """``stats`` without what identifies the node's clients (``node.client_pids``): the figures
    the metrics port serves to anyone who can reach it."""
    node = stats.get("node")
    if not isinstance(node, dict) or "client_pids" not in node:
        return stats
    return {**stats, "node": {k: v for k, v in node.items() if k != "client_pids"}}


class MetricsServer:
    """Serves ``stats_fn()`` on ``http://host:port/metrics`` (Prometheus) and ``/stats`` (JSON),
    both without client pids (``public_stats``), from one thread.

    The HTTP server is waitress: one event loop for every connection (no thread per
    connection) and a small pool of worker threads; at most ``max_connections`` connections are
    open at once (more wait in the listen backlog), a connection idle for ``timeout_s`` is closed
    (checked every second), request headers are limited to 8 KiB and bodies are not read. So a
    flood of the port can delay scrapes, never exhaust the node's threads or memory. Raises
    OSError if the port is taken."""

    def __init__(self, host: str, port: int, stats_fn: Callable[[], dict], max_connections: int = 16,
                 timeout_s: int = 5):
        from waitress.server import create_server

        def app(environ, start_response):
            path = environ.get("PATH_INFO", "")
            if path == "/metrics":
                body, kind = to_prometheus(public_stats(stats_fn())).encode(), CONTENT_TYPE_LATEST
                status = "200 OK"
            elif path == "/stats":
                body, kind, status = json.dumps(public_stats(stats_fn())).encode(), "application/json", "200 OK"
            else:
                body, kind, status = b"try /metrics or /stats\n", "text/plain", "404 Not Found"
            start_response(status, [("Content-Type", kind), ("Content-Length", str(len(body)))])
            return [body] if environ.get("REQUEST_METHOD") != "HEAD" else []

        # Its "connection limit reached" line would repeat at every swing of a flood.
        logging.getLogger("waitress").setLevel(logging.ERROR)
        # connection_limit counts the listening socket and the wake-up pipe too.
        self._server = create_server(app, host=host, port=port, threads=2, connection_limit=max_connections + 2,
                                     channel_timeout=timeout_s, cleanup_interval=1, max_request_header_size=8192,
                                     max_request_body_size=0, ident="mooncake-hicache", expose_tracebacks=False,
                                     asyncore_use_poll=True)
        self.port = self._server.effective_port
        self._thread = threading.Thread(target=self._server.run, name="metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.close()
        self._thread.join(timeout=5)
