"""Test hosts in network namespaces: a small network of real Linux hosts on one machine.

``Network(n)`` makes ``n`` hosts, each a network namespace with one interface ``eth0`` (a veth)
whose peer sits in a **bridge namespace** of the network's own (nothing is added to the root
namespace), joined there by a Linux bridge::

      host ns h0             bridge ns                 host ns h1
    eth0 198.18.0.1  <-veth->  h0 --[br0]-- h1  <-veth->  eth0 198.18.0.2   ...

Addresses come from 198.18.0.0/15 (the range set aside for network tests): host ``i`` is
``198.18.0.(i+1)/24``. The hosts reach each other and nothing else (no route out, not even to the
root namespace). Names are unique per network (``mchnet-<pid>-<random>-<role>``), so parallel runs
on one machine never collide, and :meth:`Network.close` removes everything it made, also when a
test failed; namespaces left by a run that was killed are removed (with the processes in them) by
:func:`remove_stale`, which the first network of every process calls.

Faults, per host link:

* :meth:`Network.cut` / :meth:`Network.restore`: ``ip link set hN down|up`` on the bridge side;
  the host's ``eth0`` loses its carrier, every frame to or from the host is dropped silently (a
  peer sees a timeout, as with a pulled cable or a dead switch port), and the host keeps its
  address, so a restore brings back the same host.
* :meth:`Network.impair` / :meth:`Network.clear`: delay (ms, each direction) and loss (%, each
  direction) on the host's link, so the round trip to any unimpaired host grows by ``2 * delay``.
  With ``tc netem`` where the kernel has it (``sch_netem``), else with a userspace wire
  (``tests/netns_relay.py``: the host's bridge port is moved out of the bridge and an AF_PACKET
  relay copies its frames to and from a new port, holding and dropping them). ``backend`` says
  which; both are real kernel TCP stacks at each end.

Processes: :meth:`Host.run` / :meth:`Host.popen` run a command inside a host (``ip netns exec``);
the network ends every process it started at close. Unix sockets are paths in the (shared) file
system, so a client run in host A reaches node A's Unix socket, and node B over TCP through the
bridge.

Where namespaces cannot be made (not root, no ``ip``, a sandbox that refuses ``unshare``),
:func:`unavailable_reason` says why and the ``network`` fixture skips with that reason.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

try:
    import pytest
except ImportError:  # the harness works without pytest (bench/cluster_pools.py uses it)
    pytest = None

PREFIX = "mchnet"
SUBNET_PREFIX = "198.18.0."  # host i is SUBNET_PREFIX + str(i + 1)
PREFIX_LEN = 24
IP = shutil.which("ip")
TC = shutil.which("tc")
RELAY = str(Path(__file__).with_name("netns_relay.py"))
CMD_TIMEOUT_S = 20.0
STOP_GRACE_S = 3.0
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

_unavailable: Optional[tuple[Optional[str]]] = None
_netem: Optional[tuple[Optional[str]]] = None
_stale_removed = False


class NetnsError(RuntimeError):
    """An ``ip``/``tc`` command of the harness failed (the message has the command and stderr)."""


def _run(argv: Sequence[str], timeout: float = CMD_TIMEOUT_S, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} exited with {r.returncode}: {r.stderr.strip() or r.stdout.strip()}")
    return r


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run([IP or "ip", *args], check=check)


def list_namespaces() -> list[str]:
    """Names of the named network namespaces (``ip netns list``)."""
    out = _ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def unavailable_reason() -> Optional[str]:
    """None when this process can make network namespaces, veths and bridges; else why not (a
    sentence for a skip). Probed once per process with a throwaway namespace."""
    global _unavailable
    if _unavailable is None:
        _unavailable = (_probe_namespaces(),)
    return _unavailable[0]


def _probe_namespaces() -> Optional[str]:
    if not sys.platform.startswith("linux"):
        return f"network namespaces are a Linux feature (this is {sys.platform})"
    if os.geteuid() != 0:
        return f"network namespaces need root (running as uid {os.geteuid()})"
    if IP is None:
        return "the ip command (iproute2) is not installed; apt-get install iproute2"
    name = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(3)}-probe"
    try:
        _ip("netns", "add", name)
        try:
            _ip("-n", name, "link", "add", "name", "br0", "type", "bridge")
            _ip("-n", name, "link", "add", "name", "probe0", "type", "veth", "peer", "name", "probe1")
        finally:
            _ip("netns", "del", name, check=False)
    except (NetnsError, OSError, subprocess.SubprocessError) as e:
        return f"cannot make a network namespace with a bridge and veths here: {e}"
    return None


def netem_unavailable_reason() -> Optional[str]:
    """None when ``tc ... netem`` works in this kernel; else why not."""
    global _netem
    if _netem is None:
        _netem = (_probe_netem(),)
    return _netem[0]


def _probe_netem() -> Optional[str]:
    reason = unavailable_reason()
    if reason:
        return reason
    if TC is None:
        return "the tc command (iproute2) is not installed"
    name = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(3)}-probe"
    try:
        _ip("netns", "add", name)
        r = _run([TC, "-n", name, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"], check=False)
    finally:
        _ip("netns", "del", name, check=False)
    if r.returncode != 0:
        return f"this kernel has no tc netem ({r.stderr.strip()}: CONFIG_NET_SCH_NETEM is off)"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pids_in(ns: str) -> list[int]:
    r = _ip("netns", "pids", ns, check=False)
    return [int(p) for p in r.stdout.split() if p.isdigit()]


def _kill_all_in(ns: str) -> None:
    """SIGKILL every process still inside namespace ``ns`` (all started by this harness there)."""
    for _ in range(3):
        pids = [p for p in _pids_in(ns) if p != os.getpid()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def remove_stale(prefix: str = PREFIX) -> list[str]:
    """Delete the namespaces named ``<prefix>-<pid>-...`` whose creating process is gone (a run
    that was killed before its cleanup), after killing the processes left inside them. Namespaces
    of live processes (parallel runs) are left alone. Returns the names removed."""
    removed = []
    for ns in list_namespaces():
        parts = ns.split("-")
        if len(parts) < 3 or parts[0] != prefix or not parts[1].isdigit():
            continue
        if _pid_alive(int(parts[1])):
            continue
        _kill_all_in(ns)
        if _ip("netns", "del", ns, check=False).returncode == 0:
            removed.append(ns)
    return removed


class Host:
    """One test host: a network namespace with ``eth0`` at :attr:`addr`."""

    def __init__(self, net: "Network", index: int):
        self.net = net
        self.index = index
        self.name = f"h{index}"
        self.ns = f"{net.tag}-{self.name}"
        self.addr = f"{SUBNET_PREFIX}{index + 1}"
        self.ifname = "eth0"
        self.port = f"h{index}"  # its veth peer in the bridge namespace

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside this host (``ip netns exec``; the command replaces the
        ``ip`` process, so a Popen's pid is the command's own)."""
        return [IP or "ip", "netns", "exec", self.ns, *argv]

    def run(self, argv: Sequence[str], timeout: float = 60.0, **kw) -> subprocess.CompletedProcess:
        """Run ``argv`` in this host to completion (bounded by ``timeout``)."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(self.argv(argv), timeout=timeout, **kw)

    def popen(self, argv: Sequence[str], **kw) -> subprocess.Popen:
        """Start ``argv`` in this host; the network stops it at close if it still runs."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.argv(argv), **kw)
        self.net._procs.append(proc)
        return proc

    def python(self, code: str, *args: str, timeout: float = 60.0, **kw) -> subprocess.CompletedProcess:
        """Run ``python -c code args...`` (this interpreter) in this host."""
        return self.run([sys.executable, "-c", code, *args], timeout=timeout, **kw)

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket of this process that lives in this host's network stack (made by a short-lived
        thread that enters the namespace with setns(2); a socket keeps the namespace it was
        made in, whichever thread uses it later)."""
        out: dict = {}

        def make() -> None:
            try:
                fd = os.open(f"/run/netns/{self.ns}", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns into {self.ns}: {os.strerror(err)}")
                    out["sock"] = socket.socket(family, type)
                finally:
                    os.close(fd)
            except BaseException as e:  # handed to the caller's thread
                out["error"] = e

        t = threading.Thread(target=make, name=f"netns-{self.name}")
        t.start()
        t.join()
        if "error" in out:
            raise out["error"]
        return out["sock"]

    def __repr__(self) -> str:
        return f"Host({self.name}, {self.addr}, ns={self.ns})"


class Network:
    """``n`` hosts joined by a bridge, each in its own namespace (see the module docstring).

    Use it as a context manager, or call :meth:`close`; :meth:`close` is idempotent and removes
    everything even after a partial start. ``backend`` for impairments: ``"auto"`` (netem when
    the kernel has it, else the relay), ``"netem"`` or ``"relay"``."""

    def __init__(self, hosts: int = 3, backend: str = "auto"):
        reason = unavailable_reason()
        if reason:
            raise NetnsError(reason)
        if not 1 <= hosts <= 200:
            raise ValueError(f"hosts must be 1 to 200, got {hosts}")
        if backend == "auto":
            backend = "netem" if netem_unavailable_reason() is None else "relay"
        elif backend == "netem" and netem_unavailable_reason():
            raise NetnsError(netem_unavailable_reason())
        elif backend not in ("netem", "relay"):
            raise ValueError(f"backend must be auto, netem or relay, got {backend!r}")
        self.backend = backend
        global _stale_removed
        if not _stale_removed:
            _stale_removed = True
            remove_stale()
        self.tag = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(3)}"
        self.bridge_ns = f"{self.tag}-br"
        self.hosts = [Host(self, i) for i in range(hosts)]
        self._made: list[str] = []  # namespaces made, removed at close
        self._procs: list[subprocess.Popen] = []
        self._relays: dict[int, subprocess.Popen] = {}
        self._impaired: set[int] = set()
        self._cut: set[int] = set()
        self._closed = False
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # ---- building -------------------------------------------------------------------------

    def _add_ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        br = self.bridge_ns
        self._add_ns(br)
        _ip("-n", br, "link", "add", "name", "br0", "type", "bridge")
        _ip("-n", br, "link", "set", "br0", "up")
        for h in self.hosts:
            self._add_ns(h.ns)
            _ip("-n", h.ns, "link", "add", "name", h.ifname, "type", "veth", "peer", "name", h.port, "netns", br)
            _ip("-n", h.ns, "addr", "add", f"{h.addr}/{PREFIX_LEN}", "dev", h.ifname)
            _ip("-n", h.ns, "link", "set", h.ifname, "up")
            _ip("-n", br, "link", "set", h.port, "master", "br0")
            _ip("-n", br, "link", "set", h.port, "up")

    # ---- faults ---------------------------------------------------------------------------

    def host(self, which) -> Host:
        """A host by index, name (``h1``) or the Host itself."""
        if isinstance(which, Host):
            return which
        if isinstance(which, int):
            return self.hosts[which]
        return next(h for h in self.hosts if h.name == which)

    def cut(self, which) -> None:
        """Cut the host's link: every frame to or from it is dropped from now on."""
        h = self.host(which)
        _ip("-n", self.bridge_ns, "link", "set", h.port, "down")
        self._cut.add(h.index)

    def restore(self, which) -> None:
        """Undo :meth:`cut`."""
        h = self.host(which)
        _ip("-n", self.bridge_ns, "link", "set", h.port, "up")
        self._cut.discard(h.index)

    def is_cut(self, which) -> bool:
        return self.host(which).index in self._cut

    def impair(self, which, delay_ms: float = 0.0, loss_pct: float = 0.0, seed: int = 1) -> None:
        """Delay every frame on the host's link by ``delay_ms`` and drop ``loss_pct`` % of them,
        in each direction (replaces an earlier impairment of the same host)."""
        if delay_ms < 0 or not 0 <= loss_pct <= 100:
            raise ValueError(f"delay_ms must be >= 0 and loss_pct 0-100, got {delay_ms}, {loss_pct}")
        h = self.host(which)
        if self.backend == "netem":
            self._netem(h, delay_ms, loss_pct)
        else:
            self._relay(h, delay_ms, loss_pct, seed)
        self._impaired.add(h.index)

    def clear(self, which) -> None:
        """Remove the host's impairment (a no-op when it has none)."""
        h = self.host(which)
        if h.index not in self._impaired:
            return
        if self.backend == "netem":
            for ns, dev in ((h.ns, h.ifname), (self.bridge_ns, h.port)):
                _run([TC or "tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], check=False)
        else:
            self._unrelay(h)
        self._impaired.discard(h.index)

    def _netem(self, h: Host, delay_ms: float, loss_pct: float) -> None:
        spec = ["netem", "delay", f"{delay_ms}ms", "loss", f"{loss_pct}%"]
        for ns, dev in ((h.ns, h.ifname), (self.bridge_ns, h.port)):
            _run([TC or "tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", *spec])

    def _relay(self, h: Host, delay_ms: float, loss_pct: float, seed: int) -> None:
        """Move the host's bridge port out of the bridge and let a relay copy its frames to a
        new port ``xN`` (veth to ``yN`` in the bridge), with delay and loss."""
        br, x, y = self.bridge_ns, f"x{h.index}", f"y{h.index}"
        if h.index in self._relays:
            self._stop_relay(h)
        else:
            _ip("-n", br, "link", "add", "name", x, "type", "veth", "peer", "name", y)
            _ip("-n", br, "link", "set", y, "master", "br0")
            for dev in (x, y):
                _ip("-n", br, "link", "set", dev, "up")
        proc = subprocess.Popen([IP or "ip", "netns", "exec", br, sys.executable, RELAY, h.port, x,
                                 "--delay-ms", str(delay_ms), "--loss-pct", str(loss_pct), "--seed", str(seed)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._relays[h.index] = proc
        line = proc.stdout.readline()  # "ready" once both sockets are open; "" if it died
        if line.strip() != "ready":
            err = proc.stderr.read() if proc.poll() is not None else ""
            self._stop_relay(h)
            raise NetnsError(f"the relay for {h.name} did not start: {err.strip() or line!r}")
        _ip("-n", br, "link", "set", h.port, "nomaster")

    def _stop_relay(self, h: Host) -> None:
        proc = self._relays.pop(h.index, None)
        if proc is not None:
            stop_process(proc)

    def _unrelay(self, h: Host) -> None:
        br = self.bridge_ns
        _ip("-n", br, "link", "set", h.port, "master", "br0")
        self._stop_relay(h)
        _ip("-n", br, "link", "del", f"x{h.index}", check=False)  # its peer yN goes with it

    # ---- teardown -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process started in the hosts (SIGTERM, then SIGKILL after a grace), kill
        whatever else runs in its namespaces, delete the namespaces. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for proc in self._procs + list(self._relays.values()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self._procs + list(self._relays.values()):
            stop_process(proc, max(0.0, deadline - time.monotonic()))
        self._relays.clear()
        for ns in reversed(self._made):
            _kill_all_in(ns)
            _ip("netns", "del", ns, check=False)
        self._made.clear()

    def __enter__(self) -> "Network":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stop_process(proc: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """Stop ``proc``: SIGTERM, SIGKILL after ``grace`` seconds; reap it and close its pipes."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    for f in (proc.stdout, proc.stderr, proc.stdin):
        if f is not None:
            f.close()


def network():
    """``network(n=3, backend="auto") -> Network``; every network made is closed at teardown.
    Skips the test, with the reason, where network namespaces cannot be made."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    made: list[Network] = []

    def _make(hosts: int = 3, backend: str = "auto") -> Network:
        net = Network(hosts, backend)
        made.append(net)
        return net

    try:
        yield _make
    finally:
        for net in made:
            net.close()


if pytest is not None:
    network = pytest.fixture(network)
