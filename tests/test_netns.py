"""The network-namespace harness itself (tests/netns.py): hosts reach each other over the bridge
and nothing else, a cut link stops TCP within a bounded time and a restore brings it back, an
impairment adds the delay it was asked for and its loss leaves TCP's bytes intact, and nothing of
a network is left behind. Sockets are made inside the hosts' stacks (``Host.socket``) so the
timings are taken in this process. Skipped, with the reason, where namespaces cannot be made."""

from __future__ import annotations

import hashlib
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

import pytest

import netns
from netns import network  # noqa: F401  (a fixture)

MARGIN_S = 0.5  # scheduling slack on a shared 2-core machine


def listener(host) -> tuple[socket.socket, int]:
    s = host.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host.addr, 0))
    s.listen(16)
    return s, s.getsockname()[1]


def echo_server(lsock: socket.socket, stop: threading.Event) -> threading.Thread:
    """Echo every byte on each accepted connection until ``stop``; bounded by its sockets' timeouts."""

    def serve_one(c: socket.socket) -> None:
        c.settimeout(0.2)
        with c:
            while not stop.is_set():
                try:
                    data = c.recv(1 << 16)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not data:
                    return
                c.sendall(data)

    def accept_loop() -> None:
        lsock.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=serve_one, args=(c,), daemon=True).start()

    t = threading.Thread(target=accept_loop, daemon=True)
    t.start()
    return t


@pytest.fixture
def echo(network):
    """echo(net, host) -> port of an echo server in ``host``; stopped at teardown."""
    stop = threading.Event()
    socks = []

    def _start(net, host) -> int:
        s, port = listener(net.host(host))
        socks.append(s)
        echo_server(s, stop)
        return port

    yield _start
    stop.set()
    for s in socks:
        s.close()


def connect(src, dst, port: int, timeout: float = 2.0) -> socket.socket:
    c = src.socket()
    c.settimeout(timeout)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.connect((dst.addr, port))
    return c


def round_trip(c: socket.socket, payload: bytes) -> bytes:
    c.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = c.recv(len(payload) - len(got))
        if not chunk:
            raise ConnectionError("closed by the peer")
        got += chunk
    return got


def median_rtt_ms(c: socket.socket, n: int = 15) -> float:
    rtts = []
    for i in range(n):
        t0 = time.perf_counter()
        assert round_trip(c, bytes([i]) * 8) == bytes([i]) * 8
        rtts.append((time.perf_counter() - t0) * 1000)
    return statistics.median(rtts)


def test_hosts_reach_each_other_over_the_bridge(network, echo):
    net = network(3)
    ports = {h.name: echo(net, h) for h in net.hosts}
    for src in net.hosts:
        for dst in net.hosts:
            if src is dst:
                continue
            with connect(src, dst, ports[dst.name]) as c:
                payload = f"{src.name}->{dst.name}".encode() * 100
                assert round_trip(c, payload) == payload
                assert c.getpeername()[0] == dst.addr and c.getsockname()[0] == src.addr


def test_hosts_have_only_their_subnet_and_nothing_in_the_root_namespace(network):
    net = network(2)
    for h in net.hosts:
        routes = subprocess.run(["ip", "-n", h.ns, "-4", "route", "show"], capture_output=True, text=True,
                                check=True).stdout.splitlines()
        assert [r.split()[0] for r in routes] == ["198.18.0.0/24"], routes  # no default route: nothing leaves
        addrs = subprocess.run(["ip", "-n", h.ns, "-4", "-o", "addr", "show", "dev", "eth0"], capture_output=True,
                               text=True, check=True).stdout
        assert f"inet {h.addr}/24" in addrs
    root_links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert net.tag not in root_links and "br0" not in [l.split(":")[1].strip() for l in root_links.splitlines()]
    assert all(ns.startswith(net.tag) for ns in net._made)


def test_a_cut_link_stops_tcp_within_the_timeout_and_a_restore_brings_it_back(network, echo):
    net = network(3)
    a, b, c = net.hosts
    port_b, port_c = echo(net, b), echo(net, c)
    ab = connect(a, b, port_b, timeout=1.0)
    assert round_trip(ab, b"before") == b"before"

    net.cut(b)
    t0 = time.monotonic()
    with pytest.raises(socket.timeout):
        round_trip(ab, b"during")  # sent into the void: no echo comes back
    assert time.monotonic() - t0 < 1.0 + MARGIN_S
    t0 = time.monotonic()
    with pytest.raises(OSError):  # a new connection times out too (no refusal comes back either)
        connect(c, b, port_b, timeout=1.0)
    assert time.monotonic() - t0 < 1.0 + MARGIN_S
    with connect(a, c, port_c) as ac:  # the others still talk
        assert round_trip(ac, b"others") == b"others"

    net.restore(b)
    with connect(c, b, port_b, timeout=5.0) as cb:
        assert round_trip(cb, b"after") == b"after"
    ab.settimeout(10.0)  # TCP retransmits what it sent during the cut; the echo arrives
    got = b""
    while len(got) < len(b"during"):
        got += ab.recv(64)
    assert got == b"during"
    ab.close()


def test_a_cut_of_the_host_itself_silences_every_peer(network, echo):
    """Cutting the client's own link is the same fault seen from the other side."""
    net = network(2)
    a, b = net.hosts
    port = echo(net, b)
    ab = connect(a, b, port, timeout=0.5)
    net.cut(a)
    t0 = time.monotonic()
    with pytest.raises(socket.timeout):
        round_trip(ab, b"x")
    assert time.monotonic() - t0 < 0.5 + MARGIN_S
    net.restore(a)
    ab.close()


BACKENDS = [pytest.param("netem", marks=pytest.mark.skipif(netns.netem_unavailable_reason() is not None,
                                                             reason=str(netns.netem_unavailable_reason()))),
            "relay"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_impair_adds_the_delay_it_was_asked_for_and_clear_removes_it(network, echo, backend):
    net = network(2, backend=backend)
    a, b = net.hosts
    port = echo(net, b)
    with connect(a, b, port) as c:
        base = median_rtt_ms(c)
    net.impair(b, delay_ms=25)
    with connect(a, b, port) as c:
        slow = median_rtt_ms(c)
    net.clear(b)
    with connect(a, b, port) as c:
        after = median_rtt_ms(c)
    print(f"{backend}: rtt {base:.2f} ms, with 25 ms each way {slow:.2f} ms, cleared {after:.2f} ms")
    assert 50 * 0.95 <= slow - base <= 50 + 25  # 2 x 25 ms, plus scheduling on a busy machine
    assert after < base + 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_keeps_tcp_bytes_intact(network, echo, backend):
    net = network(2, backend=backend)
    a, b = net.hosts
    port = echo(net, b)
    net.impair(b, delay_ms=1, loss_pct=5)
    payload = os.urandom(2 << 20)
    with connect(a, b, port, timeout=30) as c:
        got = bytearray()
        sender = threading.Thread(target=c.sendall, args=(payload,))
        sender.start()
        while len(got) < len(payload):
            chunk = c.recv(1 << 16)
            assert chunk
            got += chunk
        sender.join(timeout=30)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


def test_processes_run_inside_a_host_and_close_removes_everything(network):
    net = network(2)
    a, b = net.hosts
    out = a.python("import socket; s = socket.socket(); s.bind((__import__('sys').argv[1], 0)); "
                   "print(s.getsockname()[0])", a.addr)
    assert out.returncode == 0 and out.stdout.strip() == a.addr
    sleeper = b.popen([sys.executable, "-c", "import time; time.sleep(60)"])
    names = [h.ns for h in net.hosts] + [net.bridge_ns]
    assert set(names) <= set(netns.list_namespaces())
    t0 = time.monotonic()
    net.close()
    assert sleeper.poll() is not None and time.monotonic() - t0 < netns.STOP_GRACE_S + 2
    assert not set(names) & set(netns.list_namespaces())
    net.close()  # idempotent


def test_remove_stale_deletes_namespaces_of_dead_runs_only(network):
    network(1)  # skips where namespaces are unavailable
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = f"{netns.PREFIX}-{dead.pid}-abcdef-h0"
    live = f"{netns.PREFIX}-{os.getpid()}-abcdef-h0"
    for ns in (stale, live):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        sleeper = subprocess.Popen(["ip", "netns", "exec", stale, sys.executable, "-c", "import time; time.sleep(60)"])
        time.sleep(0.2)
        removed = netns.remove_stale()
        assert stale in removed and live not in removed
        assert sleeper.wait(timeout=5) != 0  # killed with its namespace
        assert stale not in netns.list_namespaces() and live in netns.list_namespaces()
    finally:
        for ns in (stale, live):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
