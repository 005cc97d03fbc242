"""Bad input on a cluster node's TCP port, against a real node process: the handshake (spoken by
an independent Python implementation, tests/peer_wire.py), wrong secrets and versions, garbage,
truncated frames, huge lengths, arena ops over TCP, 1,000 idle connections, and a fuzz of random
and mutated frames. Every time the node survives, counts and logs what it refused, and keeps
serving the other clients. Every loop is bounded in count and time."""

from __future__ import annotations

import os
import random
import resource
import socket
import struct
import time

import pytest

import peer_wire as w
from cluster_helpers import SECRET, Cluster
from conftest import Buffer, pattern
from mooncake_hicache.cluster import Placement

PAGE = 64 * 1024


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("wire"), ["a", "b"], connect_timeout_ms=1000).start()
    yield c
    c.close()


@pytest.fixture(scope="module")
def port(cluster):
    return cluster["a"].port


def peer(cluster) -> dict:
    return cluster["a"].stats()["peer"]


def serves_others(cluster, n: int = 32) -> float:
    """A rank of b writes and reads pages held by a; returns the slowest call (s)."""
    p = Placement([("a", 1.0), ("b", 1.0)])
    keys = [k for k in (f"other-{random.random()}" for _ in range(8 * n)) if p.holders(k)[0] == "a"][:n]
    store = cluster.store("b")
    buf = Buffer(len(keys) * PAGE)
    store.register_buffer(buf.addr, buf.size)
    for i, k in enumerate(keys):
        buf.write(i * PAGE, pattern(k, PAGE))
    ptrs, sizes = [buf.addr + i * PAGE for i in range(len(keys))], [PAGE] * len(keys)
    t0 = time.monotonic()
    assert store.batch_put_from(keys, ptrs, sizes) == [0] * len(keys)
    t1 = time.monotonic()
    buf.write(0, b"\0" * buf.size)
    assert store.batch_get_into(keys, ptrs, sizes) == [PAGE] * len(keys)
    t2 = time.monotonic()
    assert all(buf.read(i * PAGE, PAGE) == pattern(k, PAGE) for i, k in enumerate(keys))
    store.unregister_buffer(buf.addr)
    return max(t1 - t0, t2 - t1)


def refused(sock, timeout: float = 3.0) -> tuple[int, bool]:
    """(the ERROR code the node sent, or -1; whether it then closed the connection)."""
    sock.settimeout(timeout)
    code = -1
    try:
        h, body = w.recv_frame(sock, 1 << 16)
        if h[2] == w.OP["error"]:
            code = w.error_code(body)
        sock.recv(1)
        closed = True  # recv returned b"" (EOF) or raised below
    except (ConnectionError, OSError):
        closed = True
    except socket.timeout:
        closed = False
    return code, closed


def test_the_handshake_is_mutual_and_the_secret_never_crosses_the_wire(cluster, port):
    s = w.connect(port)
    lo, hi, nonce_s, node_id = w.challenge(s)
    assert (lo, hi, node_id) == (1, 1, "a")
    f, nonce_c = w.auth_frame(SECRET.encode(), nonce_s)
    s.sendall(f)
    h, body = w.recv_frame(s)
    assert h[2] == w.OP["auth"] and body[:32] == w.server_mac(SECRET.encode(), 1, nonce_c, nonce_s, "a")
    assert SECRET.encode() not in f + body and SECRET.encode() not in nonce_s
    s.sendall(w.frame(w.OP["ping"], b"hello", request_id=7))
    h, body = w.recv_frame(s)
    assert (h[2], h[3], body) == (w.OP["ping"], 7, b"hello")
    s.close()


def test_a_wrong_secret_or_version_is_refused_with_a_reason_and_a_counter(cluster, port):
    before = peer(cluster)
    s = w.connect(port)
    _, _, nonce_s, _ = w.challenge(s)
    s.sendall(w.auth_frame(b"not the cluster secret at all", nonce_s)[0])
    assert refused(s) == (w.ERR["auth"], True)
    s = w.connect(port)
    _, _, nonce_s, _ = w.challenge(s)
    s.sendall(w.auth_frame(SECRET.encode(), nonce_s, version=7)[0])
    assert refused(s) == (w.ERR["version"], True)
    after = peer(cluster)
    assert after["auth_failures"] == before["auth_failures"] + 1
    assert after["version_mismatches"] == before["version_mismatches"] + 1
    deadline = time.monotonic() + 3  # the node logs the notes once a second
    while "failed authentication (wrong cluster secret)" not in cluster["a"].log():
        assert time.monotonic() < deadline, cluster["a"].log()
        time.sleep(0.1)
    assert "speaks another protocol version" in cluster["a"].log()


def test_garbage_truncated_and_huge_frames_are_refused_and_the_node_keeps_serving(cluster, port):
    before = peer(cluster)
    s = w.connect(port)  # garbage instead of AUTH
    w.challenge(s)
    s.sendall(os.urandom(64))
    assert refused(s) == (w.ERR["bad_frame"], True)
    s = w.connect(port)  # a header announcing a huge body: refused before anything is read
    w.challenge(s)
    s.sendall(w.frame(w.OP["auth"], body_len=1 << 40))
    assert refused(s) == (w.ERR["bad_frame"], True)
    s = w.connect(port)  # half a frame, then silence: dropped at the handshake deadline
    w.challenge(s)
    s.sendall(w.frame(w.OP["auth"], b"\0" * 100)[:40])
    t0 = time.monotonic()
    assert refused(s) == (-1, True)
    assert time.monotonic() - t0 < 1.0 + 1.0

    for request, code in [
        (w.frame(w.OP["peer_put"], body_len=1 << 50), w.ERR["bad_frame"]),           # beyond the op's limit
        (w.frame(w.OP["peer_put"], struct.pack("<I", 1 << 31) + b"\0" * 8), w.ERR["bad_frame"]),  # table length
        (w.frame(w.OP["peer_get"], struct.pack("<BBHI", 0, 0, 0, 1 << 30)), w.ERR["bad_frame"]),  # key count
        (w.frame(w.OP["peer_put"], w.put_body([("k", b"x" * 10)])[:-3] + b"\0" * 40), w.ERR["bad_frame"]),  # sizes
        (w.frame(w.OP["get_pin"], w.keys_body(["k"])), w.ERR["local_only"]),      # an arena op over TCP
        (w.frame(w.OP["exists"], w.keys_body(["k"]), version=9), w.ERR["version"]),
        (w.frame(w.OP["exists"], w.keys_body(["k"]), flags=1), w.ERR["bad_frame"]),
    ]:
        s = w.authenticate(port, SECRET.encode())
        s.sendall(request)
        assert refused(s) == (code, True), request[:32]
    s = w.authenticate(port, SECRET.encode())  # an unknown op keeps the connection
    s.sendall(w.frame(200))
    h, body = w.recv_frame(s)
    assert w.error_code(body) == w.ERR["unknown_op"]
    s.sendall(w.frame(w.OP["exists"], w.keys_body(["k"])))
    h, body = w.recv_frame(s)
    assert h[2] == w.OP["exists"]
    after = peer(cluster)
    assert after["bad_frames"] >= before["bad_frames"] + 7
    assert after["local_only_refused"] == before["local_only_refused"] + 1
    assert after["sessions"] >= 1 and cluster["a"].stats()["node"]["reservations_held"] == 0
    assert serves_others(cluster) < 1.0


def test_the_listener_is_bound_to_the_configured_address_only(cluster, port):
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", port), timeout=2)


def test_a_thousand_idle_connections_do_not_hurt_other_clients(cluster, port):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    before = peer(cluster)
    idle = []
    try:
        for _ in range(1000):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            idle.append(s)
        slowest = max(serves_others(cluster, 16) for _ in range(5))
        assert slowest < 1.0, f"a call took {slowest:.2f} s beside 1000 idle connections"
        deadline = time.monotonic() + 4.0  # handshake timeout 1 s (+ the accept backlog draining)
        while True:
            st = peer(cluster)
            closed = st["handshake_timeouts"] + st["evicted_handshakes"] - before["handshake_timeouts"] \
                - before["evicted_handshakes"]
            if st["handshakes"] == 0 and closed >= 1000:
                break
            assert time.monotonic() < deadline, st
            time.sleep(0.1)
        assert st["accepted"] - before["accepted"] >= 1000
    finally:
        for s in idle:
            s.close()
    assert serves_others(cluster) < 1.0


def mutated(rng: random.Random, valid: bytes) -> bytes:
    b = bytearray(valid)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(5)
        if kind == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif kind == 1 and len(b) >= 4:
            p = rng.randrange(len(b) - 3)
            b[p:p + 4] = struct.pack("<I", rng.choice([0, 1, 4095, 4096, 4097, 65536, 2 ** 31, 2 ** 32 - 1]))
        elif kind == 2:
            b = b[:rng.randrange(len(b) + 1)]
        elif kind == 3:
            b += os.urandom(rng.randrange(64))
        elif kind == 4 and len(b) >= 24:
            b[16:24] = struct.pack("<Q", rng.choice([0, 1, 1 << 20, 1 << 40, 2 ** 64 - 1]))
    return bytes(b)


def test_a_fuzz_of_random_and_mutated_frames_leaves_the_node_serving(cluster, port):
    rng = random.Random(int(os.environ.get("MCH_TEST_SEED", "1234")))
    valid = [w.frame(w.OP["peer_put"], w.put_body([("fz-a", b"A" * 100), ("fz-b", b"B" * 5000)])),
             w.frame(w.OP["peer_get"], w.get_body(["fz-a", "fz-b", "nope"], 4096)),
             w.frame(w.OP["exists"], w.keys_body(["fz-a", "x" * 2048])),
             w.frame(w.OP["view"]), w.frame(w.OP["stats"]), w.frame(w.OP["ping"], b"12345678")]
    end, n = time.monotonic() + 6.0, 0
    while n < 2000 and time.monotonic() < end:
        n += 1
        authed = rng.random() < 0.6
        try:
            s = w.authenticate(port, SECRET.encode()) if authed else w.connect(port)
            payload = mutated(rng, rng.choice(valid)) if rng.random() < 0.9 else os.urandom(rng.randrange(200))
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)  # a truncated frame ends at EOF instead of the timeout
            s.settimeout(2.0)
            while s.recv(1 << 16):
                pass
        except (OSError, ConnectionError):
            pass
        finally:
            s.close()
    assert n >= 200
    assert serves_others(cluster) < 1.0
    deadline = time.monotonic() + 3
    while True:
        node = cluster["a"].stats()["node"]
        if node["reservations_held"] == 0 and node["pins_held"] == 0:
            break
        assert time.monotonic() < deadline, node
        time.sleep(0.1)
