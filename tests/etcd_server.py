"""A real etcd server for tests: the ``etcd`` binary (Debian package ``etcd-server``, installed by
scripts/setup.sh) on free loopback ports with its data in a temporary directory.

``EtcdServer(data_dir).start()`` waits until etcd answers ``/health``; ``stop()`` (SIGTERM) and
``kill()`` (SIGKILL) end it; ``start()`` again reuses the same ports and data, so clients that
know its URL reconnect to the same cluster. Every wait is bounded. ``ETCD`` is the binary's path,
or None when it is not installed (tests then skip and say why).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from typing import Optional

ETCD = shutil.which("etcd")
SKIP_REASON = "the etcd binary is not installed (Debian: apt-get install etcd-server; scripts/setup.sh does it)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdServer:
    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 20.0) -> "EtcdServer":
        peer = f"http://127.0.0.1:{self.peer_port}"
        log = open(os.path.join(os.path.dirname(self.data_dir), "etcd.log"), "ab")
        self.proc = subprocess.Popen(
            [ETCD, "--name", "test", "--data-dir", self.data_dir,
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"test={peer}",
             # a faster election than the default 1 s, so a (re)start is ready sooner
             "--heartbeat-interval", "50", "--election-timeout", "500",
             "--logger", "zap", "--log-level", "warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}; see {self.data_dir}/../etcd.log")
            if self.healthy():
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"etcd did not become healthy within {timeout} s")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        self._end(signal.SIGKILL)

    def _end(self, sig: int) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


class TcpProxy:
    """A loopback TCP proxy to ``target_port``, so a test can cut one client off from etcd while
    etcd itself keeps running (its leases then expire as in a network partition). ``cut()`` drops
    every connection and refuses new ones until ``restore()``; ``close()`` ends it."""

    def __init__(self, target_port: int):
        import threading
        self.target_port = target_port
        self.port = free_port()
        self._lock = threading.Lock()  # guards _conns, _cut
        self._conns: list[socket.socket] = []
        self._cut = False
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        import threading
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._cut:
                    client.close()
                    continue
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                except OSError:  # the target is down (etcd stopped): refuse this one, keep accepting
                    client.close()
                    continue
                upstream.settimeout(None)
                self._conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()
