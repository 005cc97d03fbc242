"""Real cluster nodes for tests: each one a ``python -m mooncake_hicache node --config FILE``
process with its own Unix socket, NVMe file and TCP port on 127.0.0.1, started from a YAML file
written here (the same way an operator starts one, so a test can also run it elsewhere, e.g.
under ``ip netns exec``). Members are a static list, or etcd (``Cluster(..., etcd={...})``).

``Cluster(tmp_path, ["a", "b", "c"], replicas=1).start()`` starts three static members;
``cluster.store("b")`` opens a ``Store`` that is a rank of node b (never starts a node);
``cluster["a"].kill(signal.SIGKILL)`` / ``.start()`` kill and restart one (its NVMe file stays).
Every wait is bounded.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

import yaml

from etcd_server import free_port
from mooncake_hicache import Store
from mooncake_hicache._native import NodeClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = base64.b64encode(b"cluster-test-secret-0123456789ab").decode()
START_TIMEOUT_S = 30.0


class RankProcess:
    """tests/netns_pool_client.py started with ``popen`` (``subprocess.Popen``, or a network
    namespace's); ``call(op, ...)`` sends one command and waits for its reply (bounded: a reply
    that does not come fails the test instead of hanging it)."""

    def __init__(self, popen, config_path: str, start_s: float, call_s: float, size: int):
        here = os.path.dirname(os.path.abspath(__file__))
        self.proc = popen([sys.executable, os.path.join(here, "netns_pool_client.py"), config_path],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.call_s, self.size = call_s, size
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        first = self._next(start_s)
        if not first.get("ready"):
            raise RuntimeError(f"the client did not start: {first.get('error')}")

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def _next(self, timeout: float) -> dict:
        try:
            return json.loads(self.lines.get(timeout=timeout))
        except queue.Empty:
            raise AssertionError(f"the client did not answer within {timeout} s") from None

    def call(self, op: str, keys=(), size: Optional[int] = None) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, "keys": list(keys), "size": size or self.size}) + "\n")
        self.proc.stdin.flush()
        return self._next(self.call_s)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def write_secret(path: str, secret: str = SECRET) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return path


class ClusterNode:
    """One member's files, config and process."""

    def __init__(self, root: str, sock_dir: str, node_id: str, port: int, secret_file: str, dram: str = "64MiB",
                 nvme: Optional[str] = "64MiB", timeout_ms: int = 2000, write_through: bool = True):
        self.id, self.port, self.root = node_id, port, root
        self.dir = os.path.join(root, node_id)
        os.makedirs(self.dir, exist_ok=True)
        self.socket = os.path.join(sock_dir, f"{node_id}.sock")  # short: a socket path holds 107 bytes
        self.config_path = os.path.join(self.dir, "node.yaml")
        self.log_path = os.path.join(self.dir, "node.log")
        self.proc: Optional[subprocess.Popen] = None
        self.env: dict = {}  # extra environment of the node process (e.g. the FAKE verbs provider's)
        tiers = {"dram": {"capacity": dram, "slab_size": "4MiB", "hugepages": False, "write_through": write_through}}
        if nvme:
            tiers["nvme"] = {"path": os.path.join(self.dir, "nvme.data"), "capacity": nvme, "region_size": "8MiB",
                             "queue_depth": 8}
        self.config = {"mode": "node", "tiers": tiers,
                       "node": {"socket": self.socket, "autostart": False, "timeout_ms": timeout_ms},
                       "metrics": {"port": 0}, "logging": {"level": "INFO"},
                       "cluster": {"node_id": node_id, "listen_host": "127.0.0.1", "listen_port": port,
                                   "secret_file": secret_file}}

    def write_config(self) -> None:
        with open(self.config_path, "w") as f:
            yaml.safe_dump(self.config, f)

    def start(self, wait: bool = True) -> "ClusterNode":
        self.write_config()
        self._log_from = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "mooncake_hicache", "node", "--config", self.config_path],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                                     env=dict(os.environ, **self.env))
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node {self.id} exited with {self.proc.returncode}:\n{self.log()}")
            with open(self.log_path, "rb") as f:
                f.seek(self._log_from)
                if b"ready on" in f.read():
                    return
            time.sleep(0.05)
        raise RuntimeError(f"node {self.id} not ready within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return open(self.log_path, errors="replace").read()[-4000:]
        except OSError:
            return ""

    def send(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.send(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM) and self.proc is not None:
            self.proc.wait(timeout=15)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def client(self) -> NodeClient:
        """A client of this node alone (its own pages, over its socket)."""
        return NodeClient(self.socket, 2000)

    def stats(self) -> dict:
        import json
        c = self.client()
        try:
            return json.loads(c.stats_json())
        finally:
            c.close()

    def view(self) -> dict:
        """The membership view this node serves to its ranks (VIEW on its socket)."""
        from mooncake_hicache._native import PoolClient
        c = NodeClient(self.socket, 2000)
        pool = PoolClient(c)
        try:
            if not pool.refresh_view():
                raise RuntimeError(f"node {self.id} did not answer VIEW: {c.last_error}")
            return pool.view
        finally:
            pool.close()
            c.close()

    def member_ids(self) -> list:
        return sorted(m["id"] for m in self.view()["members"])

    def peer_requests(self, op: str) -> int:
        return self.stats()["peer"]["requests_by_op"][op]


class Cluster:
    """Static members ``ids`` on 127.0.0.1; ``cluster_settings`` go into every node's cluster section."""

    def __init__(self, tmp_path, ids, node_options: Optional[dict] = None, etcd: Optional[dict] = None,
                 **cluster_settings):
        self.root = str(tmp_path)
        self.sock_dir = tempfile.mkdtemp(prefix="mchc", dir="/tmp")
        self.secret_file = write_secret(os.path.join(self.root, "cluster.secret"))
        self.nodes = {i: ClusterNode(self.root, self.sock_dir, i, free_port(), self.secret_file, **(node_options or {}))
                      for i in ids}
        members = [{"id": n.id, "host": "127.0.0.1", "port": n.port} for n in self.nodes.values()]
        settings = {"connect_timeout_ms": 1000, "request_timeout_ms": 2000, **cluster_settings}
        settings.update({"etcd": etcd, "capacity": "64MiB"} if etcd else {"members": members})
        for n in self.nodes.values():
            n.config["cluster"].update(settings)
        self.stores: list[Store] = []

    def __getitem__(self, node_id: str) -> ClusterNode:
        return self.nodes[node_id]

    def start(self) -> "Cluster":
        for n in self.nodes.values():
            n.start(wait=False)
        for n in self.nodes.values():
            n.wait_ready()
        self.wait_all_up()
        return self

    def wait_all_up(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until every running node's view has every member up (a node probes the others once a
        second and marks one that is still starting down meanwhile)."""
        running = [n for n in self.nodes.values() if n.proc is not None and n.proc.poll() is None]
        deadline = time.monotonic() + timeout
        while not all(all(m["healthy"] for m in n.view()["members"]) for n in running):
            if time.monotonic() > deadline:
                raise RuntimeError("the members did not all see each other up: " +
                                   str({n.id: n.view()["members"] for n in running}))
            time.sleep(0.1)

    def store_config(self, node_id: str) -> dict:
        import copy
        return copy.deepcopy(self.nodes[node_id].config)

    def store(self, node_id: str) -> Store:
        """A rank on node_id's host (a Store that uses that node; it is closed at close())."""
        s = Store.from_config(self.store_config(node_id))
        self.stores.append(s)
        return s

    def close(self) -> None:
        for s in self.stores:
            try:
                s.close()
            except Exception:
                pass
        for n in self.nodes.values():
            n.stop()
        shutil.rmtree(self.sock_dir, ignore_errors=True)
