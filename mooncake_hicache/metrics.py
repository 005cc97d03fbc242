"""Metrics: the one stats dict (``Store.stats()`` / ``Node.stats()``) rendered for Prometheus,
and the small HTTP endpoint the node serves it on (``GET /metrics``; ``GET /stats`` gives JSON).

Every numeric leaf ``stats[section][name]`` becomes ``mooncake_hicache_<section>_<name>``;
booleans become 0/1 and strings become a ``..._info{name="value"} 1`` series. Hit rates per tier
are derived here so dashboards need no arithmetic.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

PREFIX = "mooncake_hicache"


def _name(*parts: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", "_".join((PREFIX,) + parts))


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


def to_prometheus(stats: dict) -> str:
    """Render a stats dict in the Prometheus text exposition format."""
    lines = []
    for section, values in sorted(stats.items()):
        if not isinstance(values, dict):
            continue
        for key, value in sorted(values.items()):
            if isinstance(value, bool):
                value = int(value)
            if isinstance(value, (int, float)):
                lines.append(f"{_name(section, key)} {value}")
            elif isinstance(value, str):
                escaped = value.replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'{_name(section, key, "info")}{{value="{escaped}"}} 1')
    for tier, rate in sorted(hit_rates(stats).items()):
        lines.append(f'{_name("hit_rate")}{{tier="{tier}"}} {rate:.6f}')
    return "\n".join(lines) + "\n"


class MetricsServer:
    """Serves ``stats_fn()`` on ``http://host:port/metrics`` (Prometheus) and ``/stats`` (JSON)
    from a daemon thread. Raises OSError if the port is taken."""

    def __init__(self, host: str, port: int, stats_fn: Callable[[], dict]):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server naming)
                if self.path.split("?")[0] == "/metrics":
                    body, kind = to_prometheus(stats_fn()).encode(), "text/plain; version=0.0.4"
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
