"""The processes of ``bench/cluster_bench.py``: our pool (node processes + a client), Mooncake's
(master + storage nodes + a client, under its own virtualenv) and the loopback TCP limit (a
sender and a receiver). Every process is a ``bench/cluster_worker.py`` (or a node, or Mooncake's
master) driven over a pipe; this module imports neither store's Python package beyond our
``Placement`` (to pick keys that live on the other hosts). Everything is told to use 127.0.0.1;
Mooncake's master and transfer engine still open some listeners on the wildcard address, so
:class:`Isolation` can run every process in a network namespace of its own that has nothing but
a loopback interface (the bench's default where it may make one).

``cpu_seconds(pid)`` reads a process's user + system time from ``/proc/<pid>/stat`` (all its
threads); :meth:`Pool.node_cpu` sums it over a pool's server processes.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import netns  # noqa: E402  (tests/netns.py: stop_process, remove_stale)
WORKER = os.path.join(HERE, "cluster_worker.py")
START_S = 60.0
NETNS_PREFIX = "mchbench"
CALL_S = 600.0  # one command (a whole sample) at most; a worker that does not answer is an error
_TICK = os.sysconf("SC_CLK_TCK")


class Isolation:
    """Where the bench's processes run: here (``prefix()`` is empty), or inside a fresh network
    namespace with only ``lo`` (``ip netns exec NAME ...``; made at start, deleted at close, named
    ``mchbench-<pid>-<random>``). Loopback inside a namespace is the same kernel path as outside."""

    def __init__(self, enabled: bool):
        self.name = None
        if enabled:
            netns.remove_stale(NETNS_PREFIX)  # namespaces of a killed run, by their prefix
            name = f"{NETNS_PREFIX}-{os.getpid()}-{os.urandom(3).hex()}"
            subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
            self.name = name
            subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=30)

    @staticmethod
    def available() -> Optional[str]:
        """None when a namespace can be made here, else why not."""
        if os.geteuid() != 0:
            return "not root"
        if shutil.which("ip") is None:
            return "no ip command (iproute2)"
        return None

    def prefix(self) -> list:
        return ["ip", "netns", "exec", self.name] if self.name else []

    def close(self) -> None:
        if self.name:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
            self.name = None


HERE_NS = Isolation(False)  # no namespace


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (every thread), 0.0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15)


class WorkerError(RuntimeError):
    """A worker failed to start, answered with an error, or did not answer in time."""


class Worker:
    """A ``cluster_worker.py`` process: ``call(op, **args)`` sends one command and returns its
    reply (bounded wait). Its stderr goes to ``log_path``."""

    def __init__(self, python: str, args: list, log_path: str, env: Optional[dict] = None, name: str = "worker",
                 iso: Isolation = HERE_NS):
        self.name, self.log_path = name, log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen([*iso.prefix(), python, WORKER, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=log, text=True, cwd=ROOT, env=env)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        first = self._next(START_S)
        if not first.get("ready"):
            raise WorkerError(f"{name} did not start: {first.get('error')}\n{self.log_tail()}")
        self.info = first
        self.pid = first["pid"]

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _next(self, timeout: float) -> dict:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise WorkerError(f"{self.name} did not answer within {timeout:.0f} s\n{self.log_tail()}") from None
        if line is None:
            raise WorkerError(f"{self.name} exited ({self.proc.wait()})\n{self.log_tail()}")
        return json.loads(line)

    def call(self, op: str, timeout: float = CALL_S, **args) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        r = self._next(timeout)
        if "error" in r:
            raise WorkerError(f"{self.name} {op}: {r['error']}")
        return r

    def log_tail(self, n: int = 3000) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=10)


def wait_for_line(proc: subprocess.Popen, log_path: str, text: str, what: str, timeout: float = START_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise WorkerError(f"{what} exited with {proc.returncode}:\n{_tail(log_path)}")
        if text in _tail(log_path, 100_000):
            return
        time.sleep(0.05)
    raise WorkerError(f"{what} not ready within {timeout:.0f} s:\n{_tail(log_path)}")


def _tail(path: str, n: int = 3000) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


class Pool:
    """A store under test: ``client`` (a Worker on host A) and the server processes whose CPU
    counts as the pool's (``server_pids``)."""

    name = "pool"
    client: Worker
    server_pids: list

    def node_cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.server_pids)

    def remote_keys(self, prefix: str, n: int) -> list:
        return [f"{prefix}-{i}" for i in range(n)]


class OurPool(Pool):
    """``nodes`` node processes (ids a, b, c, ...) on 127.0.0.1, DRAM only, R=1, and a client
    process that is a rank of node a. :meth:`remote_keys` gives keys that live on the other
    nodes (the pages a rank on host A reads from host B and C)."""

    name = "ours"

    def __init__(self, workdir: str, nodes: int, dram_bytes: int, slab_bytes: int, iso: Isolation = HERE_NS,
                 transport: str = "tcp"):
        from mooncake_hicache.cluster import Placement
        self.workdir, self.iso, self.transport = workdir, iso, transport
        self.ids = [chr(ord("a") + i) for i in range(nodes)]
        self.placement = Placement([(i, 1.0) for i in self.ids])
        self.sock_dir = tempfile.mkdtemp(prefix="mchb", dir="/tmp")
        secret = os.path.join(workdir, "cluster.secret")
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(24).hex() + "\n")
        ports = {i: free_port() for i in self.ids}
        members = [{"id": i, "host": "127.0.0.1", "port": ports[i]} for i in self.ids]
        self.procs, self.configs = {}, {}
        for i in self.ids:
            self.configs[i] = self._write_config(i, ports[i], members, secret, dram_bytes, slab_bytes)
        self.client = None
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _write_config(self, node_id, port, members, secret, dram_bytes, slab_bytes) -> str:
        cfg = {"mode": "node",
               "tiers": {"dram": {"capacity": dram_bytes, "slab_size": slab_bytes}},
               "node": {"socket": os.path.join(self.sock_dir, f"{node_id}.sock"), "autostart": False},
               "metrics": {"port": 0}, "logging": {"level": "WARNING"},
               "cluster": {"node_id": node_id, "listen_host": "127.0.0.1", "listen_port": port,
                           "members": members, "replicas": 1, "secret_file": secret,
                           "transport": self.transport}}
        path = os.path.join(self.workdir, f"node-{node_id}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(cfg, f)
        return path

    def _start(self) -> None:
        for i in self.ids:
            log = os.path.join(self.workdir, f"node-{i}.log")
            with open(log, "ab") as out:
                self.procs[i] = subprocess.Popen([*self.iso.prefix(), sys.executable, "-m", "mooncake_hicache", "node", "--config",
                                                  self.configs[i]], stdout=out, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, cwd=ROOT)
        for i in self.ids:
            wait_for_line(self.procs[i], os.path.join(self.workdir, f"node-{i}.log"), "ready on", f"node {i}")
        self.server_pids = [p.pid for p in self.procs.values()]
        self.client = Worker(sys.executable, ["client", "ours", self.configs["a"]],
                             os.path.join(self.workdir, "client-ours.log"), name="our client", iso=self.iso)

    def remote_keys(self, prefix: str, n: int) -> list:
        out, i = [], 0
        while len(out) < n:
            k = f"{prefix}-{i}"
            if self.placement.holders(k, 1)[0] != "a":
                out.append(k)
            i += 1
        return out

    def spread_keys(self, prefix: str, n: int) -> list:
        """``n`` keys whatever their holders (about 1/nodes of them on each node)."""
        return [f"{prefix}-{i}" for i in range(n)]

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        for p in self.procs.values():
            netns.stop_process(p, grace=15.0)
        shutil.rmtree(self.sock_dir, ignore_errors=True)


class MooncakePool(Pool):
    """Mooncake's store over TCP on 127.0.0.1: ``mooncake_master`` (with its HTTP metadata
    server), ``holders`` storage nodes that each contribute ``segment_bytes``, and a client that
    contributes nothing, so every page it puts or gets lives in another process. ``python`` is
    an interpreter of a virtualenv where ``mooncake.store`` imports (bench/mooncake_env.py)."""

    name = "mooncake"

    def __init__(self, python: str, workdir: str, holders: int, segment_bytes: int, local_buffer_bytes: int,
                 iso: Isolation = HERE_NS):
        self.python, self.workdir, self.iso = python, workdir, iso
        self.master = None
        self.holders: list = []
        self.client = None
        rpc, http, metrics = free_port(), free_port(), free_port()
        self.env = dict(os.environ, MC_TCP_BIND_ADDRESS="127.0.0.1")  # the transfer engine's advertised address
        try:
            self._start_master(rpc, http, metrics)
            base = {"local_hostname": "127.0.0.1", "metadata_server": f"http://127.0.0.1:{http}/metadata",
                    "local_buffer_size": local_buffer_bytes, "protocol": "tcp",
                    "master_server_addr": f"127.0.0.1:{rpc}"}
            for j in range(holders):
                setup = json.dumps({**base, "global_segment_size": segment_bytes})
                self.holders.append(Worker(python, ["holder", "mooncake", setup],
                                           os.path.join(workdir, f"mooncake-holder-{j}.log"), self.env,
                                           name=f"mooncake holder {j}", iso=iso))
            self.client = Worker(python, ["client", "mooncake", json.dumps({**base, "global_segment_size": 0})],
                                 os.path.join(workdir, "mooncake-client.log"), self.env, name="mooncake client",
                                 iso=iso)
        except BaseException:
            self.close()
            raise
        self.server_pids = [w.pid for w in self.holders] + [self.master.pid]

    def _start_master(self, rpc: int, http: int, metrics: int) -> None:
        exe = os.path.join(os.path.dirname(self.python), "mooncake_master")
        log = os.path.join(self.workdir, "mooncake-master.log")
        with open(log, "ab") as out:
            self.master = subprocess.Popen(
                [*self.iso.prefix(), exe, "--rpc_address=127.0.0.1", f"--rpc_port={rpc}", "--enable_http_metadata_server=true",
                 "--http_metadata_server_host=127.0.0.1", f"--http_metadata_server_port={http}",
                 "--metrics_host=127.0.0.1", f"--metrics_port={metrics}"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env)
        deadline = time.monotonic() + START_S
        while not self._master_answers(http):
            if self.master.poll() is not None or time.monotonic() > deadline:
                raise WorkerError(f"mooncake_master did not start:\n{_tail(log)}")
            time.sleep(0.1)

    def _master_answers(self, http: int) -> bool:
        """Whether the master's HTTP metadata server answers (from inside the namespace)."""
        probe = ("import urllib.request, urllib.error, sys\n"
                 "try: urllib.request.urlopen(sys.argv[1], timeout=1)\n"
                 "except urllib.error.HTTPError: pass\n")  # 404 for an unknown key: the server is up
        r = subprocess.run([*self.iso.prefix(), sys.executable, "-c", probe, f"http://127.0.0.1:{http}/metadata?key=probe"],
                           capture_output=True, timeout=30)
        return r.returncode == 0

    def close(self) -> None:
        for w in ([self.client] if self.client else []) + self.holders:
            w.close()
        if self.master is not None:
            netns.stop_process(self.master, grace=15.0)


class TcpLimit:
    """Plain loopback TCP, the same bytes: a sender process (its pages in arena-kind memory) and a
    receiver process (a page-aligned buffer like the rank's registered one), up to ``streams``
    connections between them."""

    def __init__(self, workdir: str, streams: int, iso: Isolation = HERE_NS):
        self.sender = Worker(sys.executable, ["tcp-send"], os.path.join(workdir, "tcp-send.log"), name="tcp sender",
                             iso=iso)
        try:
            self.receiver = Worker(sys.executable, ["tcp-recv"], os.path.join(workdir, "tcp-recv.log"),
                                   name="tcp receiver", iso=iso)
            self.receiver.call("connect", port=self.sender.info["port"], streams=streams)
        except BaseException:
            self.sender.close()
            raise

    def buffers(self, size: int, slots: int) -> None:
        self.sender.call("buffers", size=size, slots=slots)
        self.receiver.call("buffers", size=size, slots=slots)

    def close(self) -> None:
        self.receiver.close()
        self.sender.close()
