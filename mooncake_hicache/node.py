"""The per-host node: one process that owns the DRAM arena and the NVMe file and serves them to
every process on the host over a Unix socket plus shared memory.

* ``Node`` runs inside the node process (``mooncake-hicache node --config FILE``): it builds the
  ``TieredStore``, listens on ``node.socket``, serves Prometheus metrics, and on SIGTERM/SIGINT
  stops listening and closes the tiers (sealing the NVMe region, so a restart finds every page that
  reached NVMe; DRAM pages that were never demoted are gone).
* ``NodeConnection`` is what a ``Store`` in node mode talks to: a ``NodeClient`` that starts the
  node when none answers (``node.autostart``), and restarts it in the background after it died,
  so no call waits for a node to start: calls made meanwhile miss (reads) or fail (writes) within
  ``node.timeout_ms``.

Starting is race-free: processes that start together (the ranks of one server) take an exclusive
``flock`` on ``<socket>.lock``; the holder checks again whether a node answers and, if not, starts
one and waits until it does (or until it exits, reporting the node's one-line reason), so exactly
one node is started. The socket's directory and the files next to it are checked and opened as
``runtime_dir`` describes (no planted link is followed).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Optional

import yaml

from . import _native
from .config import Config, load_config
from .errors import ConfigError, StoreError
from .metrics import MetricsServer
from .runtime_dir import ensure_socket_dir, open_private, write_private
from .tiers import log_notes, native_error, open_tiers

log = logging.getLogger("mooncake_hicache.node")

START_TIMEOUT_S = 60.0
RESTART_INTERVAL_S = 1.0   # the first retry after a failed start; doubles up to RESTART_MAX_S
RESTART_MAX_S = 30.0
# What the client's errno says about the node (NodeClient.last_error_code).
ABSENT = (errno.ENOENT, errno.ECONNREFUSED)  # nothing serves the socket: start one


def _raise_fd_limit(needed: int) -> None:
    """Lets the node hold `needed` descriptors (one per connection) if the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < needed:
        log.warning("node.max_connections %d needs %d descriptors but the hard limit is %d; raise it "
                    "(ulimit -Hn) or lower node.max_connections", needed - 64, needed, hard)


class Node:
    """The node process's main object. ``serve_forever()`` blocks until SIGTERM/SIGINT."""

    def __init__(self, config: Config):
        if config.tiers.dram is None:
            raise ConfigError("tiers.dram", "the node needs a DRAM tier (its arena is shared with clients); add tiers.dram")
        self.config = config
        n = config.node
        ensure_socket_dir(n.socket, n.allowed_uids)
        # Peer connections of a cluster member are counted too (the peer server's cap).
        _raise_fd_limit(n.max_connections + 64 + (_native.PEER_MAX_CONNECTIONS if config.cluster else 0))
        self.store = open_tiers(config)
        self.cluster = None
        try:
            self.server = _native.NodeServer(self.store, n.socket, n.timeout_ms, max_connections=n.max_connections,
                                             socket_mode=n.socket_mode, allowed_uids=list(n.allowed_uids),
                                             settings=config.node_settings())
            self.cluster = self._join_cluster(config)  # the view is set before a local rank can ask for it
            self.server.start()
        except _native.EngineError as e:
            self._close_cluster()
            self.store.close()
            raise native_error(e) from None
        except Exception:
            self._close_cluster()
            self.store.close()
            raise
        self.metrics: Optional[MetricsServer] = None
        m = config.metrics
        if m.port:
            try:
                self.metrics = MetricsServer(m.host, m.port, self.stats, max_connections=m.max_connections,
                                             timeout_s=m.timeout_s)
            except OSError as e:  # a busy port must not keep the cache from serving
                log.warning("metrics endpoint %s:%d unavailable (%s); set metrics.port to a free port or 0",
                            m.host, m.port, e.strerror)
        self._stop = threading.Event()
        self._log_notes()

    def _join_cluster(self, config: Config):
        """With a ``cluster:`` section: serve peers over TCP and follow the membership
        (``cluster/service.py``); None on a single host."""
        if config.cluster is None:
            return None
        from .cluster.service import ClusterService
        return ClusterService(config, self.server)

    def _close_cluster(self) -> None:
        """Leave the membership first, then stop serving peers (before the local server stops)."""
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

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
        self._close_cluster()
        self.server.stop()
        self.store.close()
        self._log_notes()
        log.info("node %d stopped", os.getpid())

    def _log_notes(self) -> None:
        log_notes(self.store, log)
        if self.cluster is not None:
            log_notes(self.cluster, log)


def run_node(config_source) -> int:
    """Entry point of ``mooncake-hicache node``: serve until SIGTERM/SIGINT; returns 0. Start-up
    failures raise ConfigError/StoreError (the command prints them as one line)."""
    # Logging first, so what loading the config says (an empty file) reaches the node's log.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = config_source if isinstance(config_source, Config) else load_config(config_source)
    logging.getLogger().setLevel(config.logging.level)
    node = Node(config)
    member = f" (cluster member {config.cluster.self_id} on TCP port {node.cluster.port})" if node.cluster else ""
    print(f"mooncake-hicache node {os.getpid()} ready on {config.node.socket}{member}", flush=True)
    node.serve_forever()
    return 0


# ---- client side -------------------------------------------------------------------------------

class NodeConnection:
    """A ``NodeClient`` that starts the node when none is running and restarts a dead one.

    Has the batch methods of the in-process backends, so ``Store`` drives it the same way. When
    the node dies, calls return misses (reads) or NODE_UNAVAILABLE (writes) within
    ``node.timeout_ms``, and a background thread starts a new node (if ``node.autostart``); a
    start that fails is logged with the node's own reason and retried after
    ``RESTART_INTERVAL_S``, doubling up to ``RESTART_MAX_S``. Only an absent node is started:
    a hung one, one of another user, one with other settings or with no connection to spare is
    reported, never started over."""

    def __init__(self, config: Config):
        self.config = config
        n = config.node
        ensure_socket_dir(n.socket, n.allowed_uids)
        self._client = _native.NodeClient(n.socket, n.timeout_ms, allowed_uids=list(n.allowed_uids),
                                          settings=config.node_settings())
        self._lock = threading.Lock()  # guards the restart state below
        self._closed = False
        self._restarter: Optional[threading.Thread] = None
        self._next_start = 0.0
        self._failures = 0
        self.start_error: Optional[str] = None  # why the last background start failed
        if not self._client.healthy:
            self._first_connect()

    # The batch API is forwarded to the client; a dead node is restarted in the background.
    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        self._revive_if_needed()
        return getattr(self._client, name)

    def close(self) -> None:
        self._closed = True  # never revive a connection the Store has closed
        self._client.close()

    def _refusal(self) -> StoreError:
        c, sock = self._client, self.config.node.socket
        code = c.last_error_code
        if code == errno.ETIMEDOUT:
            return StoreError(f"the node on {sock} does not answer within {self.config.node.timeout_ms} ms; "
                              f"restart it (mooncake-hicache node) or raise node.timeout_ms")
        if code == errno.EUSERS:
            return StoreError(f"{c.last_error}; the node on {sock} has too many connections")
        return StoreError(c.last_error)

    def _first_connect(self) -> None:
        if self._client.last_error_code not in ABSENT:
            raise self._refusal()
        if not self.config.node.autostart:
            raise StoreError(f"no node answers on {self.config.node.socket}; start one with "
                             f"'mooncake-hicache node --config FILE' or set node.autostart: true")
        why = start_node(self.config, self._client)
        if why is not None:
            raise StoreError(f"the node for {self.config.node.socket} could not start: {why}")

    def _revive_if_needed(self) -> None:
        c = self._client
        if self._closed or c.healthy or not self.config.node.autostart or c.last_error_code not in ABSENT:
            return
        with self._lock:
            if (self._restarter and self._restarter.is_alive()) or time.monotonic() < self._next_start:
                return
            self._restarter = threading.Thread(target=self._restart, name="mooncake-hicache-node-restart",
                                               daemon=True)
            self._restarter.start()

    def _restart(self) -> None:
        why = start_node(self.config, self._client, lambda: not self._closed)
        sock = self.config.node.socket
        with self._lock:
            if why is None:
                self._failures, self.start_error = 0, None
                log.info("restarted the node on %s", sock)
                return
            self._failures += 1
            delay = min(RESTART_MAX_S, RESTART_INTERVAL_S * 2 ** (self._failures - 1))
            self._next_start = time.monotonic() + delay
            self.start_error = why
        log.warning("the node on %s could not start: %s; reads miss and writes fail meanwhile, next try in %.0f s",
                    sock, why, delay)


def start_node(config: Config, client, go_on: Callable[[], bool] = lambda: True) -> Optional[str]:
    """Starts the node for ``config`` unless one answers ``client`` meanwhile, and waits until it
    answers. Returns None when a node answers, else why not (the node's own one-line reason when
    it exited). One process at a time per socket (``<socket>.lock``)."""
    sock = config.node.socket
    lock_fd = open_private(sock + ".lock", os.O_RDWR)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)  # one starter per host; the others wait here
        if client.ping():
            return None
        if client.last_error_code not in ABSENT:
            return client.last_error
        if not go_on():
            return "the store was closed"
        log_path = sock + ".log"
        pid, log_offset = start_node_process(config)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if client.ping():
                return None
            if not _alive(pid):
                return _last_line(log_path, log_offset) or f"it exited without a message; see {log_path}"
            time.sleep(0.05)
        return f"it did not answer within {START_TIMEOUT_S:.0f} s; see {log_path}"
    finally:
        os.close(lock_fd)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _last_line(path: str, offset: int) -> str:
    """The last non-empty line written to ``path`` after ``offset`` (a node's start-up failure)."""
    try:
        fd = open_private(path, os.O_RDONLY)
    except StoreError:
        return ""
    with os.fdopen(fd, "rb") as f:
        f.seek(offset)
        lines = [ln.strip() for ln in f.read(1 << 16).decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# Starts argv[2:] in its own session with its output on descriptor argv[1], prints its pid and
# exits at once: the node is re-parented to init, so it never lingers as a zombie of the process
# that started it.
_LAUNCHER = (
    "import subprocess, sys\n"
    "out = int(sys.argv[1])\n"
    "p = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,\n"
    "                     start_new_session=True, close_fds=True)\n"
    "print(p.pid)\n"
)


def start_node_process(config: Config) -> tuple[int, int]:
    """Starts ``python -m mooncake_hicache node`` detached (not a child of this process), with
    ``config`` written next to the socket (mode 0600: an inline ``cluster.secret`` goes along, the
    node needs it); its output is appended to ``<socket>.log``
    (opened without following links). Returns the node's pid and the log's size before it."""
    sock = config.node.socket
    cfg_path = sock + ".yaml"
    write_private(cfg_path, yaml.safe_dump(config.to_dict(redact_secrets=False)).encode())
    log_fd = open_private(sock + ".log", os.O_WRONLY | os.O_APPEND)
    try:
        offset = os.fstat(log_fd).st_size
        log.info("starting a mooncake-hicache node on %s (log: %s.log)", sock, sock)
        r = subprocess.run([sys.executable, "-c", _LAUNCHER, str(log_fd),
                            sys.executable, "-m", "mooncake_hicache", "node", "--config", cfg_path],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, check=True, timeout=30,
                           pass_fds=(log_fd,))
    finally:
        os.close(log_fd)
    return int(r.stdout.split()[-1]), offset
