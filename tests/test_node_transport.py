"""The node process and its shared-memory transport, with real processes, sockets and memory.

A node runs in a child process (``_native.TieredStore`` + ``_native.NodeServer``); clients are
``_native.NodeClient`` objects in this process and in other child processes. Some tests speak
the wire protocol by hand (``RawClient``) to hold tokens, send bad frames or claim another
version. Timings are printed, never asserted, except the "no hang" bounds (a multiple of the
client timeout). Bandwidth and exists latency through the node, against memcpy: bench/store_bench.py.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest

from mooncake_hicache import _native

KiB, MiB = 1 << 10, 1 << 20
from mooncake_hicache.errors import ErrorCode  # noqa: E402

OK, INVALID_PARAMS, BUFFER_TOO_SMALL, KEY_TOO_LONG = 0, ErrorCode.INVALID_PARAMS, ErrorCode.BUFFER_TOO_SMALL, ErrorCode.KEY_TOO_LONG
NOT_FOUND, NO_SPACE, NODE_UNAVAILABLE = ErrorCode.NOT_FOUND, ErrorCode.NO_SPACE, ErrorCode.NODE_UNAVAILABLE

# ---- helpers ------------------------------------------------------------------------------


def pattern(key: str, n: int) -> bytes:
    """Deterministic bytes for a key, so every read is checkable."""
    seed = (key + "|").encode()
    return (seed * (n // len(seed) + 1))[:n]


class Buf:
    """An anonymous mapping and its address."""

    def __init__(self, size: int):
        self.mm = mmap.mmap(-1, size)
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.mm))

    def put(self, off: int, data: bytes) -> None:
        self.mm[off:off + len(data)] = data

    def get(self, off: int, n: int) -> bytes:
        return bytes(self.mm[off:off + n])


NODE_SCRIPT = textwrap.dedent("""
    import json, sys
    from mooncake_hicache import _native
    path, dram, slab, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    server_options = json.loads(sys.argv[5])  # keyword arguments of NodeServer
    store = _native.TieredStore(dram_capacity=dram, slab_size=slab, hugepages=False)
    server = _native.NodeServer(store, path, timeout, **server_options)
    try:
        server.start()
    except Exception as e:
        print("error", type(e).__name__, e, flush=True)
        sys.exit(3)
    print("ready", flush=True)
    sys.stdin.read()  # serve until the test closes our stdin
    server.stop()
    store.close()
""")


class Node:
    """A node in a child process. ``server``: keyword arguments of ``NodeServer``; ``popen``:
    of ``subprocess.Popen`` (another user, a umask, a cgroup)."""

    def __init__(self, path: str, dram: int = 64 * MiB, slab: int = 4 * MiB, timeout_ms: int = 5000,
                 server: dict | None = None, **popen):
        self.path = path
        self.proc = subprocess.Popen([sys.executable, "-c", NODE_SCRIPT, path, str(dram), str(slab), str(timeout_ms),
                                      json.dumps(server or {})],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     **popen)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.kill()
            raise RuntimeError(f"node did not start: {line} {self.proc.stderr.read()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def sock_dir():
    d = tempfile.mkdtemp(prefix="mch", dir="/tmp")  # short: sun_path holds 107 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def start_node(sock_dir):
    nodes = []

    def _start(name: str = "n.sock", **kw) -> Node:
        n = Node(os.path.join(sock_dir, name), **kw)
        nodes.append(n)
        return n

    yield _start
    for n in nodes:
        if n.proc.poll() is None:
            try:
                os.kill(n.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            n.kill()


def node_stats(client) -> dict:
    return json.loads(client.stats_json())


def wait_for(cond, timeout: float = 5.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def run_child(script: str, *args: str, timeout: float = 60) -> str:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"child failed ({r.returncode}): {r.stdout}\n{r.stderr}"
    return r.stdout


# The protocol spoken by hand (docs/protocol.md): 24-byte header, little-endian.
HDR = struct.Struct("<IHHIIQ")
OP_HELLO, OP_PUT_RESERVE, OP_PUT_COMMIT, OP_GET_PIN, OP_GET_UNPIN, OP_PING, OP_ERROR = 1, 2, 3, 4, 5, 11, 255


def wire_str(b: bytes) -> bytes:
    return struct.pack("<I", len(b)) + b


def wire_keys(keys) -> bytes:
    return struct.pack("<I", len(keys)) + b"".join(wire_str(k.encode()) for k in keys)


class RawClient:
    """A hand-written client: sends exactly the frames a test asks for."""

    def __init__(self, path: str, timeout: float = 5.0):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.rid = 0

    def send(self, op: int, body: bytes = b"", version: int = _native.PROTOCOL_VERSION,
             magic: int = _native.PROTOCOL_MAGIC, body_len: int | None = None) -> int:
        self.rid += 1
        self.s.sendall(HDR.pack(magic, version, op, self.rid, 0, len(body) if body_len is None else body_len) + body)
        return self.rid

    def _exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk, fds, _, _ = socket.recv_fds(self.s, n - len(out), 4)
            for fd in fds:
                os.close(fd)
            if not chunk:
                raise EOFError
            out += chunk
        return out

    def recv(self):
        magic, version, op, rid, flags, n = HDR.unpack(self._exact(HDR.size))
        return op, rid, self._exact(n)

    def hello(self) -> None:
        self.send(OP_HELLO, struct.pack("<HHI", 1, 1, os.getpid()) + wire_str(b"raw"))
        op, _, _ = self.recv()
        assert op == OP_HELLO

    def closed_by_peer(self) -> bool:
        """True when the node closed the connection (after any frames it sent first)."""
        try:
            while True:
                self.recv()
        except EOFError:
            return True
        except OSError:
            return True

    def close(self) -> None:
        self.s.close()


def error_message(body: bytes) -> tuple[int, str]:
    code, _vmin, _vmax, n = struct.unpack_from("<iHHI", body)
    return code, body[12:12 + n].decode()


# ---- round trips --------------------------------------------------------------------------


def test_pages_round_trip_through_the_shared_arena(start_node):
    node = start_node()
    c = _native.NodeClient(node.path, 2000)
    assert c.healthy and c.node_info["pid"] == node.pid
    page, n = 256 * KiB, 16
    src, dst = Buf(page * n), Buf(page * n)
    keys = [f"page-{i}" for i in range(n)]
    for i, k in enumerate(keys):
        src.put(i * page, pattern(k, page))
    assert c.batch_put(keys, [src.addr + i * page for i in range(n)], [page] * n, list(range(1, n + 1))) == [0] * n
    assert c.batch_exists(keys + ["absent"]) == [1] * n + [0]
    assert c.batch_get(keys, [dst.addr + i * page for i in range(n)], [page] * n) == [page] * n
    for i, k in enumerate(keys):
        assert dst.get(i * page, page) == pattern(k, page)

    # Scatter-gather: K and V halves of each page in separate buffers, in order.
    half = page // 2
    sg_keys = [f"sg-{i}" for i in range(4)]
    for i, k in enumerate(sg_keys):
        src.put(i * page, pattern(k, page))
    ptrs = [[src.addr + i * page, src.addr + i * page + half] for i in range(4)]
    assert c.batch_put_sg(sg_keys, ptrs, [[half, half]] * 4) == [0] * 4
    out = [[dst.addr + i * page + half, dst.addr + i * page] for i in range(4)]  # V buffer first
    assert c.batch_get_sg(sg_keys, out, [[half, half]] * 4) == [page] * 4
    for i, k in enumerate(sg_keys):
        assert dst.get(i * page + half, half) + dst.get(i * page, half) == pattern(k, page)

    # With keep_existing a second put of a stored page is acknowledged without a copy.
    before = node_stats(c)["tiering"]["skipped_existing"]
    assert c.batch_put(keys[:2], [src.addr, src.addr + page], [page, page], keep_existing=True) == [0, 0]
    assert node_stats(c)["tiering"]["skipped_existing"] == before + 2

    assert c.get_bytes("page-3") == pattern("page-3", page)
    assert c.get_bytes("nope") == NOT_FOUND
    assert c.value_size("page-3") == page and c.value_size("nope") == NOT_FOUND
    assert c.batch_get(["nope"], [dst.addr], [page]) == [NOT_FOUND]
    assert c.ping()
    assert c.remove("page-0") == OK and c.remove("page-0") == NOT_FOUND
    assert c.batch_exists(["page-0", "page-1"]) == [0, 1]
    assert c.remove_all() == OK
    assert c.batch_exists(keys) == [0] * n
    s = node_stats(c)["node"]
    assert s["pins_held"] == 0 and s["reservations_held"] == 0 and s["connections"] >= 1
    c.close()
    assert c.batch_exists(["x"]) == [ErrorCode.CLOSED]


def test_a_put_batch_larger_than_dram_goes_in_waves(start_node):
    page, n = 256 * KiB, 64  # 64 pages into 16 slots (4 MiB of DRAM, 1 MiB slabs)
    node = start_node(dram=4 * MiB, slab=1 * MiB)
    c = _native.NodeClient(node.path, 2000)
    src, dst = Buf(n * page), Buf(16 * page)
    keys = [f"wave-{i}" for i in range(n)]
    for i, k in enumerate(keys):
        src.put(i * page, pattern(k, page))
    assert c.batch_put(keys, [src.addr + i * page for i in range(n)], [page] * n) == [0] * n
    last = keys[-16:]  # the last wave is what DRAM (and no NVMe) keeps
    assert c.batch_get(last, [dst.addr + i * page for i in range(16)], [page] * 16) == [page] * 16
    assert all(dst.get(i * page, page) == pattern(k, page) for i, k in enumerate(last))
    s = node_stats(c)["node"]
    assert s["reservations_held"] == 0 and s["requests_by_op"]["put_reserve"] >= 4


def test_bad_keys_and_short_buffers_get_codes_and_release_pins(start_node):
    node = start_node()
    c = _native.NodeClient(node.path, 2000)
    b = Buf(64 * KiB)
    b.put(0, pattern("k", 8192))
    long_key = "x" * (_native.MAX_KEY_LEN + 1)
    assert c.batch_put(["", long_key, "k"], [b.addr] * 3, [8192] * 3) == [INVALID_PARAMS, KEY_TOO_LONG, OK]
    assert c.batch_put(["null"], [0], [4096]) == [INVALID_PARAMS]
    assert c.batch_exists(["", long_key, "k"]) == [INVALID_PARAMS, KEY_TOO_LONG, 1]
    assert c.batch_get(["", long_key], [b.addr] * 2, [8192] * 2) == [INVALID_PARAMS, KEY_TOO_LONG]
    assert c.remove("") == INVALID_PARAMS and c.get_bytes(long_key) == KEY_TOO_LONG
    # A buffer smaller than the value: BUFFER_TOO_SMALL, nothing written, and the pin is released.
    b.put(16384, b"\xee" * 4096)
    assert c.batch_get(["k"], [b.addr + 16384], [4096]) == [BUFFER_TOO_SMALL]
    assert b.get(16384, 4096) == b"\xee" * 4096
    assert c.batch_get_sg(["k"], [[b.addr + 16384, b.addr + 32768]], [[4096, 4095]]) == [BUFFER_TOO_SMALL]
    wait_for(lambda: node_stats(c)["node"]["pins_held"] == 0, what="pins released")
    with pytest.raises(ValueError):
        c.batch_get(["k"], [b.addr], [1, 2])


def test_socket_path_longer_than_sun_path_is_refused_naming_the_path():
    long_path = "/tmp/" + "d" * 120 + "/n.sock"
    store = _native.TieredStore(dram_capacity=8 * MiB, slab_size=1 * MiB, hugepages=False)
    server = _native.NodeServer(store, long_path)
    with pytest.raises(_native.EngineError, match="limited to 107 bytes") as e:
        server.start()
    assert long_path in str(e.value)
    with pytest.raises(_native.EngineError, match="limited to 107 bytes"):
        _native.NodeClient(long_path)
    store.close()


def test_client_made_before_its_node_starts_connects_on_a_later_call(sock_dir):
    path = os.path.join(sock_dir, "n.sock")
    c = _native.NodeClient(path, 1000)  # nothing there yet: no exception, just unhealthy
    assert not c.healthy and "is the node running" in c.last_error
    assert c.batch_exists(["k"]) == [0] and c.ping() is False
    node = Node(path)
    try:
        assert c.ping() and c.healthy and c.node_info["pid"] == node.pid
        assert node_stats(c)["node"]["pid"] == node.pid
    finally:
        node.stop()


def test_second_node_on_a_live_path_is_refused_and_a_stale_socket_is_replaced(start_node, sock_dir):
    node = start_node()
    store = _native.TieredStore(dram_capacity=8 * MiB, slab_size=1 * MiB, hugepages=False)
    server = _native.NodeServer(store, node.path)
    with pytest.raises(_native.EngineError, match="a node is already serving " + node.path):
        server.start()
    node.kill()  # leaves its socket file behind
    assert os.path.exists(node.path)
    server.start()  # nothing answers: the stale file is replaced
    c = _native.NodeClient(node.path, 2000)
    assert c.node_info["pid"] == os.getpid()
    c.close()
    server.stop()
    assert not os.path.exists(node.path), "stop() removes its socket file"
    regular = os.path.join(sock_dir, "file")
    open(regular, "w").close()
    with pytest.raises(_native.EngineError, match="not a socket"):
        _native.NodeServer(store, regular).start()
    assert os.path.exists(regular)
    store.close()


# ---- sharing between processes ------------------------------------------------------------

WRITER_CHILD = """
import ctypes, mmap, sys
from mooncake_hicache import _native
path, prefix, n, page = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def pattern(key, size):
    seed = (key + "|").encode()
    return (seed * (size // len(seed) + 1))[:size]
c = _native.NodeClient(path, 5000)
buf = mmap.mmap(-1, n * page)
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
keys = [f"{prefix}-{i}" for i in range(n)]
for i, k in enumerate(keys):
    buf[i * page:(i + 1) * page] = pattern(k, page)
print(c.batch_put(keys, [addr + i * page for i in range(n)], [page] * n))
"""

READER_CHILD = """
import ctypes, mmap, sys
from mooncake_hicache import _native
path, prefix, n, page = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def pattern(key, size):
    seed = (key + "|").encode()
    return (seed * (size // len(seed) + 1))[:size]
c = _native.NodeClient(path, 5000)
buf = mmap.mmap(-1, n * page)
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
keys = [f"{prefix}-{i}" for i in range(n)]
res = c.batch_get(keys, [addr + i * page for i in range(n)], [page] * n)
good = sum(buf[i * page:(i + 1) * page] == pattern(k, page) for i, k in enumerate(keys))
print(res == [page] * n, good)
"""


def test_two_client_processes_share_keys(start_node):
    node = start_node()
    page, n = 128 * KiB, 32
    # A child writes; this process reads the same bytes (MLA ranks read what rank 0 wrote).
    assert run_child(WRITER_CHILD, node.path, "rank0", str(n), str(page)).strip() == str([0] * n)
    c = _native.NodeClient(node.path, 2000)
    dst = Buf(n * page)
    assert c.batch_get([f"rank0-{i}" for i in range(n)], [dst.addr + i * page for i in range(n)], [page] * n) == [page] * n
    for i in range(n):
        assert dst.get(i * page, page) == pattern(f"rank0-{i}", page)
    # This process writes; another child reads.
    src = Buf(n * page)
    for i in range(n):
        src.put(i * page, pattern(f"here-{i}", page))
    assert c.batch_put([f"here-{i}" for i in range(n)], [src.addr + i * page for i in range(n)], [page] * n) == [0] * n
    assert run_child(READER_CHILD, node.path, "here", str(n), str(page)).split() == ["True", str(n)]


def test_forked_child_opens_its_own_connections(start_node):
    node = start_node()
    c = _native.NodeClient(node.path, 2000)
    page, n = 16 * KiB, 8
    src = Buf(n * page)
    keys = [f"fork-{i}" for i in range(n)]
    for i, k in enumerate(keys):
        src.put(i * page, pattern(k, page))
    assert c.batch_put(keys, [src.addr + i * page for i in range(n)], [page] * n) == [0] * n
    hellos = node_stats(c)["node"]["requests_by_op"]["hello"]
    pid = os.fork()
    if pid == 0:  # child: the inherited connection is the parent's; it must not be used
        code = 1
        try:
            dst = Buf(n * page)
            ok = True
            for _ in range(200):
                ok &= c.batch_get(keys, [dst.addr + i * page for i in range(n)], [page] * n) == [page] * n
                ok &= all(dst.get(i * page, page) == pattern(k, page) for i, k in enumerate(keys))
            code = 0 if ok else 2
        finally:
            os._exit(code)
    dst = Buf(n * page)
    for _ in range(200):
        assert c.batch_get(keys, [dst.addr + i * page for i in range(n)], [page] * n) == [page] * n
        assert all(dst.get(i * page, page) == pattern(k, page) for i, k in enumerate(keys))
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert node_stats(c)["node"]["requests_by_op"]["hello"] >= hellos + 1


# ---- clients that die ---------------------------------------------------------------------

HOLDER_CHILD = """
import socket, struct, sys, time
path, pin_keys, reserve_n, size = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4])
HDR = struct.Struct("<IHHIIQ")
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
def wstr(b): return struct.pack("<I", len(b)) + b
def call(op, body, rid):
    s.sendall(HDR.pack(0x4B48434D, 1, op, rid, 0, len(body)) + body)
    hdr = b""
    while len(hdr) < 24:
        hdr += s.recv(24 - len(hdr))
    n = HDR.unpack(hdr)[5]
    body = b""
    while len(body) < n:
        body += s.recv(n - len(body))
    return body
call(1, struct.pack("<HHI", 1, 1, 0) + wstr(b"holder"), 1)
pins = call(4, struct.pack("<I", len(pin_keys)) + b"".join(wstr(k.encode()) for k in pin_keys), 2)
pinned = sum(struct.unpack_from("<q", pins, 4 + 25 * i)[0] >= 0 for i in range(len(pin_keys)))
body = struct.pack("<I", reserve_n) + b"".join(wstr(f"held-{i}".encode()) + struct.pack("<QI", size, 0) for i in range(reserve_n))
res = call(2, body, 3)
reserved = sum(struct.unpack_from("<i", res, 4 + 20 * i)[0] == 0 for i in range(reserve_n))
print(pinned, reserved, flush=True)
time.sleep(600)  # holding everything until killed
"""


def test_sigkilled_client_holding_pins_and_reservations_has_them_released(start_node):
    # 8 MiB of DRAM in 1 MiB slabs: 32 slots of 256 KiB.
    page = 256 * KiB
    node = start_node(dram=8 * MiB, slab=1 * MiB)
    c = _native.NodeClient(node.path, 2000)
    src = Buf(32 * page)
    pinned = [f"pinned-{i}" for i in range(8)]
    assert c.batch_put(pinned, [src.addr + i * page for i in range(8)], [page] * 8) == [0] * 8
    holder = subprocess.Popen([sys.executable, "-c", HOLDER_CHILD, node.path, ",".join(pinned), "24", str(page)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().split() == ["8", "24"]
        s = node_stats(c)["node"]
        assert (s["pins_held"], s["reservations_held"]) == (8, 24)
        # Every slot is pinned or being written: nothing can be evicted for a new page.
        assert c.batch_put(["blocked"], [src.addr], [page]) == [NO_SPACE]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    wait_for(lambda: node_stats(c)["node"]["reservations_held"] == 0 and node_stats(c)["node"]["pins_held"] == 0,
             what="the node to release the dead client's tokens")
    s = node_stats(c)["node"]
    assert s["released_pins"] == 8 and s["released_reservations"] == 24
    # All 32 slots are usable again: 24 free, 8 evictable.
    fresh = [f"fresh-{i}" for i in range(32)]
    assert c.batch_put(fresh, [src.addr + i * page for i in range(32)], [page] * 32) == [0] * 32


def test_tokens_a_connection_did_not_get_are_refused(start_node):
    node = start_node()
    c = _native.NodeClient(node.path, 2000)
    b = Buf(4096)
    assert c.batch_put(["mine"], [b.addr], [4096]) == [0]
    raw = RawClient(node.path)
    raw.hello()
    raw.send(OP_PUT_COMMIT, struct.pack("<IQB", 1, 12345, 1))
    op, _, body = raw.recv()
    assert op == OP_PUT_COMMIT and struct.unpack("<Ii", body) == (1, INVALID_PARAMS)
    raw.send(OP_GET_UNPIN, struct.pack("<IQ", 1, 99))  # not pinned by this connection: ignored
    raw.send(OP_PING, b"after")
    assert raw.recv()[2] == b"after"
    assert node_stats(c)["node"]["unknown_tokens"] == 2
    raw.close()


# ---- nodes that die or hang ---------------------------------------------------------------

LOOP_CHILD = """
import ctypes, json, mmap, sys, time
from mooncake_hicache import _native
path, n, page, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
def pattern(key, size):
    seed = (key + "|").encode()
    return (seed * (size // len(seed) + 1))[:size]
c = _native.NodeClient(path, 1000)
buf = mmap.mmap(-1, n * page)
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
keys = [f"shared-{i}" for i in range(n)]
wrong = hits = 0
codes = set()
worst = 0.0
print("go", flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    t = time.monotonic()
    res = c.batch_get(keys, [addr + i * page for i in range(n)], [page] * n)
    worst = max(worst, time.monotonic() - t)
    for i, r in enumerate(res):
        if r == page:
            hits += 1
            wrong += buf[i * page:(i + 1) * page] != pattern(keys[i], page)
        else:
            codes.add(r)
print(json.dumps({"wrong": wrong, "hits": hits, "codes": sorted(codes), "worst": worst, "healthy": c.healthy}))
"""


def test_node_sigkilled_while_clients_run_gives_misses_and_unavailable_without_hang(start_node):
    page, n, timeout_ms = 64 * KiB, 16, 1000
    node = start_node()
    c = _native.NodeClient(node.path, timeout_ms)
    src = Buf(n * page)
    keys = [f"shared-{i}" for i in range(n)]
    for i, k in enumerate(keys):
        src.put(i * page, pattern(k, page))
    assert c.batch_put(keys, [src.addr + i * page for i in range(n)], [page] * n) == [0] * n
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(LOOP_CHILD), node.path, str(n), str(page), "2.0"],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "go"

    stop = threading.Event()
    seen = {"wrong": 0, "worst": 0.0, "get_codes": set(), "put_codes": set(), "exists": set()}

    def reader_writer():
        dst = Buf(n * page)
        while not stop.is_set():
            t = time.monotonic()
            res = c.batch_get(keys, [dst.addr + i * page for i in range(n)], [page] * n)
            for i, r in enumerate(res):
                if r == page:
                    seen["wrong"] += dst.get(i * page, page) != pattern(keys[i], page)
                else:
                    seen["get_codes"].add(r)
            seen["put_codes"].update(c.batch_put(keys[:4], [src.addr + i * page for i in range(4)], [page] * 4))
            seen["exists"].update(c.batch_exists(keys))
            seen["worst"] = max(seen["worst"], time.monotonic() - t)

    threads = [threading.Thread(target=reader_writer) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.4)
    node.kill()
    time.sleep(0.6)
    stop.set()
    for t in threads:
        t.join(timeout=10)
        assert not t.is_alive(), "a client thread hung"
    out = json.loads(child.communicate(timeout=20)[0])

    assert seen["wrong"] == 0 and out["wrong"] == 0, "never wrong bytes"
    assert out["hits"] > 0, "the child read before the node died"
    assert seen["get_codes"] <= {NOT_FOUND} and NOT_FOUND in seen["get_codes"]
    assert NODE_UNAVAILABLE in seen["put_codes"] and seen["put_codes"] <= {0, NODE_UNAVAILABLE}
    assert 0 in seen["exists"]
    assert set(out["codes"]) == {NOT_FOUND}
    assert seen["worst"] < 2 * timeout_ms / 1000 and out["worst"] < 2 * timeout_ms / 1000
    assert not c.healthy and not out["healthy"]
    assert "closed the connection" in c.last_error or "cannot connect" in c.last_error
    print(f"\nworst call while the node died: this process {seen['worst'] * 1e3:.1f} ms, "
          f"child {out['worst'] * 1e3:.1f} ms")


def test_hung_node_calls_time_out_within_twice_the_timeout(start_node):
    timeout_ms = 400
    node = start_node()
    c = _native.NodeClient(node.path, timeout_ms)
    b = Buf(64 * KiB)
    b.put(0, pattern("k", 4096))
    assert c.batch_put(["k"], [b.addr], [4096]) == [0]
    os.kill(node.pid, signal.SIGSTOP)
    wait_for(lambda: all(open(f"/proc/{node.pid}/task/{t}/stat").read().rsplit(")", 1)[1].split()[0] == "T"
                         for t in os.listdir(f"/proc/{node.pid}/task")), what="the node to stop")
    try:
        t = time.monotonic()
        assert c.batch_get(["k"], [b.addr + 4096], [4096]) == [NOT_FOUND]
        first = time.monotonic() - t
        assert 0.8 * timeout_ms / 1000 <= first < 2 * timeout_ms / 1000
        assert not c.healthy and "did not answer within 400 ms" in c.last_error
        # Within the next timeout the client does not wait again.
        t = time.monotonic()
        assert c.batch_put(["k2"], [b.addr], [4096]) == [NODE_UNAVAILABLE]
        assert c.batch_exists(["k"]) == [0]
        assert time.monotonic() - t < 0.1
        time.sleep(timeout_ms / 1000 * 1.1)
        t = time.monotonic()  # one reconnect attempt (HELLO times out), no more
        assert c.batch_exists(["k"]) == [0]
        assert time.monotonic() - t < 2 * timeout_ms / 1000
    finally:
        os.kill(node.pid, signal.SIGCONT)
    time.sleep(timeout_ms / 1000 * 1.1)
    assert c.batch_get(["k"], [b.addr + 4096], [4096]) == [4096] and c.healthy
    assert b.get(4096, 4096) == pattern("k", 4096)
    # The requests the client abandoned were answered into closed sockets: nothing stays pinned.
    wait_for(lambda: node_stats(c)["node"]["pins_held"] == 0, what="pins of abandoned requests released")


def test_new_node_on_the_same_path_is_reconnected_on_the_next_call(start_node):
    node = start_node()
    c = _native.NodeClient(node.path, 1000)
    assert any("connected to the node" in n for n in c.take_notes())
    b = Buf(64 * KiB)
    b.put(0, pattern("before", 4096))
    assert c.batch_put(["before"], [b.addr], [4096]) == [0]
    first = c.node_info
    node.kill()
    assert c.batch_exists(["before"]) == [0] and not c.healthy
    assert c.batch_put(["during"], [b.addr], [4096]) == [NODE_UNAVAILABLE]
    node2 = start_node()  # same path: the dead node's socket file is stale
    t = time.monotonic()
    assert c.batch_exists(["before"]) == [0]  # DRAM died with the old node
    took = time.monotonic() - t
    assert c.healthy
    info = c.node_info
    assert info["pid"] == node2.pid and info["instance"] != first["instance"]
    b.put(0, pattern("after", 4096))
    assert c.batch_put(["after"], [b.addr], [4096]) == [0]
    assert c.get_bytes("after") == pattern("after", 4096)
    notes = c.take_notes()
    assert any("unavailable" in n for n in notes) and any("reconnected to a new node" in n for n in notes)
    assert c.take_notes() == []
    print(f"\nreconnect to the restarted node (connect + HELLO + map): {took * 1e3:.2f} ms")


def test_node_stop_closes_clients_and_releases_everything(sock_dir):
    store = _native.TieredStore(dram_capacity=8 * MiB, slab_size=1 * MiB, hugepages=False)
    path = os.path.join(sock_dir, "n.sock")
    server = _native.NodeServer(store, path, 1000)
    server.start()
    raw = RawClient(path)
    raw.hello()
    raw.send(OP_PUT_RESERVE, struct.pack("<I", 1) + wire_str(b"k") + struct.pack("<QI", 4096, 0))
    assert raw.recv()[0] == OP_PUT_RESERVE
    assert server.stats()["reservations_held"] == 1
    c = _native.NodeClient(path, 1000)
    server.stop()
    assert not server.running and not os.path.exists(path)
    assert raw.closed_by_peer()
    st = server.stats()
    assert st["connections"] == 0 and st["reservations_held"] == 0 and st["released_reservations"] == 1
    assert c.batch_exists(["k"]) == [0] and not c.healthy
    with pytest.raises(_native.EngineError, match="cannot connect"):
        c.stats_json()
    raw.close()
    store.close()


# ---- protocol errors ----------------------------------------------------------------------


def test_protocol_version_mismatch_gets_a_clear_error_and_the_node_keeps_serving(start_node):
    node = start_node()
    good = _native.NodeClient(node.path, 2000)
    # A frame of a version the node does not speak.
    raw = RawClient(node.path)
    raw.send(OP_HELLO, struct.pack("<HHI", 99, 99, 1) + wire_str(b"future"), version=99)
    op, _, body = raw.recv()
    code, msg = error_message(body)
    assert op == OP_ERROR and "this node speaks versions 1..1" in msg and "99" in msg
    assert raw.closed_by_peer()
    # A HELLO in our framing that asks for versions the node does not have.
    raw = RawClient(node.path)
    raw.send(OP_HELLO, struct.pack("<HHI", 2, 3, 1) + wire_str(b"future"))
    op, _, body = raw.recv()
    assert op == OP_ERROR and "the client speaks 2..3" in error_message(body)[1]
    assert raw.closed_by_peer()
    # The client binding reports it as a format error.
    with pytest.raises(_native.EngineError, match="speaks versions 1..1") as e:
        _native.NodeClient(node.path, 2000, protocol_version=7)
    assert e.value.args[0] == "format"
    assert good.batch_exists(["x"]) == [0] and good.healthy
    assert node_stats(good)["node"]["version_mismatches"] == 3


def test_garbage_frames_close_only_that_connection(start_node):
    node = start_node()
    good = _native.NodeClient(node.path, 2000)
    b = Buf(4096)
    assert good.batch_put(["k"], [b.addr], [4096]) == [0]

    raw = RawClient(node.path)  # not our protocol at all
    raw.s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.closed_by_peer()

    raw = RawClient(node.path)  # absurd body length
    raw.send(OP_HELLO, b"", body_len=1 << 62)
    op, _, body = raw.recv()
    assert op == OP_ERROR and "exceeds the limit" in error_message(body)[1]
    assert raw.closed_by_peer()

    raw = RawClient(node.path)  # a request before HELLO
    raw.send(OP_GET_PIN, wire_keys(["k"]))
    op, _, body = raw.recv()
    assert op == OP_ERROR and "HELLO" in error_message(body)[1]
    assert raw.closed_by_peer()

    raw = RawClient(node.path)  # a list count the body cannot hold
    raw.hello()
    raw.send(OP_GET_PIN, struct.pack("<I", 1 << 30))
    op, _, body = raw.recv()
    assert op == OP_ERROR and "malformed get_pin" in error_message(body)[1]
    assert raw.closed_by_peer()

    raw = RawClient(node.path)  # an unknown op is refused, the connection stays
    raw.hello()
    raw.send(77, b"")
    op, _, body = raw.recv()
    assert op == OP_ERROR and error_message(body)[0] == 4
    raw.send(OP_PING, b"still here")
    assert raw.recv() == (OP_PING, raw.rid, b"still here")
    raw.close()

    raw = RawClient(node.path)  # half a frame, then gone
    raw.s.sendall(HDR.pack(_native.PROTOCOL_MAGIC, 1, OP_HELLO, 1, 0, 100)[:10])
    raw.close()

    assert good.batch_exists(["k"]) == [1] and good.get_bytes("k") == bytes(4096)
    s = node_stats(good)["node"]
    assert s["bad_frames"] >= 3
    wait_for(lambda: node_stats(good)["node"]["pins_held"] == 0, what="the last unpin")
    wait_for(lambda: node_stats(good)["node"]["connections"] == 1, what="bad connections to close")


def _greeted_when_room(path: str, timeout: float = 5.0) -> RawClient:
    """A RawClient past HELLO. A connection the test just closed still counts toward the cap until
    the node reaps it (or it has idled for evict_idle_after_ms, 1 s): until then HELLO is refused."""
    deadline = time.monotonic() + timeout
    while True:
        raw = RawClient(path)
        try:
            raw.hello()
            return raw
        except (OSError, EOFError, AssertionError):
            raw.s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_connections_beyond_the_cap_are_refused_with_a_message_when_all_are_busy(start_node):
    """At the cap a new connection takes the place of a silent or idle one (test_limits.py); when
    every connection holds tokens it is refused with ERROR 7, which names the cap."""
    node = start_node(server={"max_connections": 2})
    c = _native.NodeClient(node.path, 5000)
    b = Buf(4096)
    assert c.batch_put(["k"], [b.addr], [4096]) == [0]
    c.close()
    holders = []
    for _ in range(2):  # each holds a pin: busy, never closed to make room
        raw = _greeted_when_room(node.path)
        raw.send(OP_GET_PIN, wire_keys(["k"]))
        assert raw.recv()[0] == OP_GET_PIN
        holders.append(raw)
    extra = _native.NodeClient(node.path, 2000)
    assert not extra.healthy and "too many connections" in extra.last_error and "2 connections" in extra.last_error
    assert extra.last_error_code == errno.EUSERS
    holders.pop().close()
    wait_for(lambda: extra.ping(), timeout=10, what="a free connection")
    assert node_stats(extra)["node"]["refused_connections"] >= 1
    for raw in holders:
        raw.close()


# ---- concurrency --------------------------------------------------------------------------


WORKER = """
import ctypes, mmap, threading

def pattern(key, n):
    seed = (key + "|").encode()
    return (seed * (n // len(seed) + 1))[:n]

def work(c, tag, rounds, errors, page=64 * 1024, batch=8):
    src, dst = mmap.mmap(-1, page * batch), mmap.mmap(-1, page * batch)
    sa = ctypes.addressof(ctypes.c_char.from_buffer(src))
    da = ctypes.addressof(ctypes.c_char.from_buffer(dst))
    half = page // 2
    for r in range(rounds):
        keys = [f"{tag}-r{r}-{i}" for i in range(batch)]
        for i, k in enumerate(keys):
            src[i * page:(i + 1) * page] = pattern(k, page)
        res = c.batch_put_sg(keys, [[sa + i * page, sa + i * page + half] for i in range(batch)], [[half, half]] * batch)
        if res != [0] * batch:
            errors.append(f"put {res}")
        if c.batch_exists(keys) != [1] * batch:
            errors.append("exists")
        res = c.batch_get(keys, [da + i * page for i in range(batch)], [page] * batch)
        if res != [page] * batch:
            errors.append(f"get {res}")
        for i, k in enumerate(keys):
            if dst[i * page:(i + 1) * page] != pattern(k, page):
                errors.append(f"wrong bytes {k}")

def run(c, proc, threads=4, rounds=30):
    errors = []
    ts = [threading.Thread(target=work, args=(c, f"{proc}-t{t}", rounds, errors)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return errors
"""


def test_two_processes_with_four_threads_each_share_the_node(start_node):
    node = start_node(dram=64 * MiB, slab=2 * MiB)
    child = subprocess.Popen([sys.executable, "-c", WORKER + textwrap.dedent(f"""
        import sys
        from mooncake_hicache import _native
        errors = run(_native.NodeClient({node.path!r}, 5000), "child")
        print(len(errors), errors[:3])
        """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ns: dict = {}
    exec(WORKER, ns)
    c = _native.NodeClient(node.path, 5000)
    errors = ns["run"](c, "parent")
    out, err = child.communicate(timeout=120)
    assert not errors, errors[:5]
    assert out.startswith("0 "), out + err
    s = node_stats(c)["node"]
    assert 1 <= s["connections"] <= 4  # one per concurrently calling thread, kept for reuse
    assert s["connections_total"] <= 8 + 1 and s["requests_by_op"]["hello"] == s["connections_total"]
    assert s["reservations_held"] == 0
    # Unpins are fire-and-forget on each thread's own connection: they land shortly.
    wait_for(lambda: node_stats(c)["node"]["pins_held"] == 0, what="the last unpins")


# ---- a full arena reused -------------------------------------------------------------------


def test_puts_into_a_full_arena_reuse_evicted_slots_and_every_page_reads_back_its_own_bytes(start_node):
    """The steady state of a full cache: each round of fresh pages evicts older ones and reuses
    their arena slots; every put succeeds and every page of the round reads back its own bytes.
    (Bandwidth and exists latency through the node: bench/store_bench.py.)"""
    dram, page, pages = 16 * MiB, 1 * MiB, 8
    node = start_node(dram=dram, slab=4 * MiB)
    c = _native.NodeClient(node.path, 5000)
    src, dst = Buf(pages * page), Buf(pages * page)
    rounds = 3 * dram // (pages * page)  # the arena is filled three times over
    for r in range(rounds):
        keys = [f"round-{r}-{i}" for i in range(pages)]
        for i in range(pages):
            src.put(i * page, os.urandom(64) * (page // 64))
        assert c.batch_put(keys, [src.addr + i * page for i in range(pages)], [page] * pages) == [0] * pages
        assert c.batch_get(keys, [dst.addr + i * page for i in range(pages)], [page] * pages) == [page] * pages
        for i, k in enumerate(keys):
            assert dst.get(i * page, page) == src.get(i * page, page), (r, k)
    st = node_stats(c)
    assert st["dram"]["evictions"] >= (rounds - dram // (pages * page)) * pages
    assert st["node"]["pins_held"] == 0 and st["node"]["reservations_held"] == 0
    c.close()
