"""The per-host node: one process that owns the DRAM arena and the NVMe file and serves them to
every process on the host over a Unix socket plus shared memory.

* ``Node`` runs inside the node process (``mooncake-hicache node --config FILE``): it builds the
  ``TieredStore``, listens on ``node.socket``, serves Prometheus metrics, and on SIGTERM/SIGINT
  stops listening and closes the tiers (sealing the NVMe region, so a restart finds every page that
  reached NVMe; DRAM pages that were never demoted are gone).
* ``NodeConnection`` is what a ``Store`` in node mode talks to: a ``NodeClient`` that starts the
  node when none answers (``node.autostart``), and restarts it after it died.

Starting is race-free: processes that start together (the ranks of one server) take an exclusive
``flock`` on ``<socket>.lock``; the holder checks again whether a node answers and, if not, starts
one and waits until it does, so exactly one node is started.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

import yaml

from . import _native
from .config import Config, load_config
from .errors import ConfigError, StoreError
from .metrics import MetricsServer
from .tiers import log_notes, open_tiers

log = logging.getLogger("mooncake_hicache.node")

START_TIMEOUT_S = 60.0
RESTART_INTERVAL_S = 1.0


class Node:
    """The node process's main object. ``serve_forever()`` blocks until SIGTERM/SIGINT."""

    def __init__(self, config: Config):
        if config.tiers.dram is None:
            raise ConfigError("tiers.dram", "the node needs a DRAM tier (its arena is shared with clients); add tiers.dram")
        self.config = config
        os.makedirs(os.path.dirname(os.path.abspath(config.node.socket)) or ".", exist_ok=True)
        self.store = open_tiers(config)
        self.cluster = None
        try:
            self.server = _native.NodeServer(self.store, config.node.socket, config.node.timeout_ms)
            self.cluster = self._join_cluster(config)  # the view is set before a local rank can ask for it
            self.server.start()
        except Exception:
            if self.cluster is not None:
                self.cluster.close()
            self.store.close()
            raise
        self.metrics: Optional[MetricsServer] = None
        if config.metrics.port:
            try:
                self.metrics = MetricsServer(config.metrics.host, config.metrics.port, self.stats)
            except OSError as e:  # a busy port must not keep the cache from serving
                log.warning("metrics endpoint %s:%d unavailable (%s); set metrics.port to a free port or 0",
                            config.metrics.host, config.metrics.port, e.strerror)
        self._stop = threading.Event()
        self._log_notes()

    def _join_cluster(self, config: Config):
        """With a ``cluster:`` section: serve peers over TCP and follow the membership
        (``cluster/service.py``); None on a single host."""
        if config.cluster is None:
            return None
        from .cluster.service import ClusterService
        return ClusterService(config, self.server)

    def stats(self) -> dict:
        """The same figures a STATS request returns (``mooncake-hicache stats``): the store's
        sections plus ``node`` (and, for a cluster member, ``peer``), plus ``cluster`` (the view
        and every member's health and pages, from the node's probes)."""
        stats = json.loads(self.server.stats_json())
        if self.cluster is not None:
            stats["cluster"] = self.cluster.stats()
        return stats

    def serve_forever(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        log.info("node %d serving %s (dram %d MiB, nvme %s)", os.getpid(), self.config.node.socket,
                 self.config.tiers.dram.capacity >> 20,
                 self.config.tiers.nvme.path if self.config.tiers.nvme else "off")
        while not self._stop.wait(1.0):
            self._log_notes()
        self.stop()

    def stop(self) -> None:
        """Stop listening, close the tiers (seals NVMe). Idempotent."""
        self._stop.set()
        if self.metrics:
            self.metrics.close()
            self.metrics = None
        if self.cluster is not None:
            self.cluster.close()  # leave the membership first, then stop serving peers
            self.cluster = None
        self.server.stop()
        self.store.close()
        self._log_notes()
        log.info("node %d stopped", os.getpid())

    def _log_notes(self) -> None:
        log_notes(self.store, log)
        if self.cluster is not None:
            log_notes(self.cluster, log)


def run_node(config_source) -> int:
    """Entry point of ``mooncake-hicache node``: serve until SIGTERM/SIGINT; returns 0."""
    config = config_source if isinstance(config_source, Config) else load_config(config_source)
    logging.basicConfig(level=config.logging.level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    node = Node(config)
    member = f" (cluster member {config.cluster.self_id} on TCP port {node.cluster.port})" if node.cluster else ""
    print(f"mooncake-hicache node {os.getpid()} ready on {config.node.socket}{member}", flush=True)
    node.serve_forever()
    return 0


# ---- client side -------------------------------------------------------------------------------

class NodeConnection:
    """A ``NodeClient`` that starts the node when none is running and restarts a dead one.

    Has the batch methods of the in-process backends, so ``Store`` drives it the same way. When
    the node dies, calls return misses (reads) or NODE_UNAVAILABLE (writes) within the timeout;
    the next call after ``RESTART_INTERVAL_S`` starts a new node (if ``node.autostart``)."""

    def __init__(self, config: Config):
        self.config = config
        self._lock = threading.Lock()  # guards _client replacement and _last_restart
        self._last_restart = 0.0
        self._closed = False
        self._client = self._connect_or_start()

    # The batch API is forwarded to the current client; a dead node is restarted lazily.
    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        self._revive_if_needed()
        return getattr(self._client, name)

    def close(self) -> None:
        self._closed = True  # never revive a connection the Store has closed
        self._client.close()

    def _revive_if_needed(self) -> None:
        if self._closed or self._client.healthy or not self.config.node.autostart:
            return
        with self._lock:
            now = time.monotonic()
            if self._client.healthy or now - self._last_restart < RESTART_INTERVAL_S:
                return
            self._last_restart = now
            try:
                new = self._connect_or_start()
            except StoreError as e:
                log.warning("node restart failed: %s", e)
                return
            old, self._client = self._client, new
            old.close()

    def _try_connect(self):
        try:
            client = _native.NodeClient(self.config.node.socket, self.config.node.timeout_ms)
        except Exception:
            return None
        if client.healthy:
            return client
        if client.last_error_code == errno.ETIMEDOUT:
            # A node holds the socket but hangs: starting another would only fail.
            raise StoreError(f"the node on {self.config.node.socket} does not answer within "
                             f"{self.config.node.timeout_ms} ms; restart it (mooncake-hicache node) "
                             f"or raise node.timeout_ms")
        return None

    def _connect_or_start(self):
        client = self._try_connect()
        if client is not None:
            return client
        if not self.config.node.autostart:
            raise StoreError(f"no node answers on {self.config.node.socket}; start one with "
                             f"'mooncake-hicache node --config FILE' or set node.autostart: true")
        sock = self.config.node.socket
        os.makedirs(os.path.dirname(os.path.abspath(sock)) or ".", exist_ok=True)
        with open(sock + ".lock", "a+") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)  # one starter per host; the others wait here
            client = self._try_connect()
            if client is not None:
                return client
            start_node_process(self.config)
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                client = self._try_connect()
                if client is not None:
                    return client
                time.sleep(0.05)
        raise StoreError(f"started a node for {sock} but it did not answer within {START_TIMEOUT_S:.0f} s; "
                         f"see {sock}.log")


# Starts argv[2:] in its own session with output appended to argv[1], then exits at once: the node
# is re-parented to init, so it never lingers as a zombie of the process that started it.
_LAUNCHER = (
    "import subprocess, sys\n"
    "with open(sys.argv[1], 'ab') as out:\n"
    "    subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,\n"
    "                     start_new_session=True, close_fds=True)\n"
)


def write_private_config(config: Config, path: str) -> None:
    """Write ``config`` for a node to load, secrets included (an inline ``cluster.secret`` must
    reach the node it starts): the file is created readable by its owner only, written whole to a
    temporary name and renamed into place."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that existed
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(config.to_dict(redact_secrets=False), f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def start_node_process(config: Config) -> None:
    """Start ``python -m mooncake_hicache node`` detached (not a child of this process), with
    ``config`` written next to the socket; its output goes to ``<socket>.log``."""
    sock = config.node.socket
    cfg_path = sock + ".yaml"
    write_private_config(config, cfg_path)
    log.info("starting a mooncake-hicache node on %s (log: %s.log)", sock, sock)
    subprocess.run([sys.executable, "-c", _LAUNCHER, sock + ".log",
                    sys.executable, "-m", "mooncake_hicache", "node", "--config", cfg_path],
                   stdin=subprocess.DEVNULL, check=True, timeout=30)
