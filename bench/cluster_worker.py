#!/usr/bin/env python3
"""One process of ``bench/cluster_bench.py``, driven over a pipe: one JSON command per line on
stdin, one JSON reply per line on stdout (the first reply says ``{"ready": ...}`` or
``{"error": ...}``). Standard library (and ``_bench_common``) only, so the same file runs under the
project's virtualenv (our ``Store``) and under Mooncake's separate one (``bench/.mooncake-venv``),
and the bench process itself imports neither store.

Roles (the first argument)::

    client ours CONFIG.yaml        a rank on host A: Store.from_config(CONFIG) (our pool)
    client mooncake SETUP.json     a Mooncake client that contributes no memory (every page remote)
    holder mooncake SETUP.json     a Mooncake storage node (contributes its global segment)
    tcp-send                       sender of the loopback TCP limit (listens on 127.0.0.1:0)
    tcp-recv                       receiver of the loopback TCP limit, and the memcpy limit

Client commands (``keys`` are page keys; page ``first + j`` of a call uses slot ``j % slots``)::

    {"op": "buffers", "size": S, "slots": P}  allocate and register put/get buffers of P pages
    {"op": "put", "keys": [...], "first": i}   batches of P pages -> {"batches": [s...], "errors", "cpu"}
    {"op": "get", "keys": [...], "first": i}   -> {"batches", "misses", "wrong", "errors", "cpu"}
    {"op": "exists", "keys": [...], "repeat": n}  -> {"calls": [s...], "present": n}
    {"op": "remove", "keys": [...]}             -> {"removed": n} (untimed cleanup)

TCP limit commands: sender ``{"op": "buffers", ...}``; receiver ``{"op": "connect", "port": p,
"streams": n}``, ``{"op": "buffers", "size": S, "slots": P}``, ``{"op": "tcp", "batches": k,
"streams": n}`` (each batch: the P pages' bytes sent by the sender over n connections at once,
received straight into the page-aligned buffer) and ``{"op": "memcpy", "batches": k}`` (the same
bytes copied from arena-kind memory, one memmove per page). Every command ends with ``{"op":
"quit"}``.

Content: a put slot holds random bytes, and before page ``i`` of key ``k`` is put the first two
8-byte words of each 4 KiB block are stamped with ``i`` and a tag of ``k`` (zeroed again after
the call). A page read back must carry exactly those stamps, and, with its stamp words zeroed,
equal its slot's random bytes: a page of another key, another round of the same slot, a torn or
shifted page all fail. ``batches`` are the seconds of each timed call; ``cpu`` the process CPU
seconds (all threads) inside them.
"""

from __future__ import annotations

import array
import concurrent.futures
import ctypes
import hashlib
import json
import os
import random
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench_common as bc  # noqa: E402  (standard library only)

NOT_FOUND = -704  # ErrorCode.NOT_FOUND, as both stores return it
STAMP_WORDS = 512  # 8-byte words per 4 KiB block
_libc = ctypes.CDLL(None, use_errno=True)
_libc.memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_libc.memcmp.restype = ctypes.c_int


def key_tag(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def timed(out: dict, fn, *args):
    """Runs fn(*args) as one batch: its wall time goes to out["batches"], its CPU time to out["cpu"]."""
    c0, t0 = time.process_time(), time.perf_counter()
    r = fn(*args)
    out["batches"].append(time.perf_counter() - t0)
    out["cpu"] += time.process_time() - c0
    return r


class Slots:
    """A put buffer (random bytes; stamp words zero between calls) and a get buffer of ``slots``
    pages of ``size`` bytes each, page-aligned, as a rank's registered host pool."""

    def __init__(self, size: int, slots: int):
        if size % 4096:
            raise ValueError(f"page size {size} is not a multiple of 4 KiB")
        self.size, self.slots = size, slots
        self.put = bc.AlignedBuffer(size * slots)
        self.get = bc.AlignedBuffer(size * slots)
        rng = random.Random(size * 7919 + slots)
        step = 16 << 20
        for off in range(0, self.put.size, step):
            n = min(step, self.put.size - off)
            self.put.view[off:off + n] = rng.randbytes(n)
            self.get.view[off:off + n] = bytes(n)  # fault every page in before any timed call
        self.put_words = self.put.view.cast("Q")
        self.get_words = self.get.view.cast("Q")
        self.blocks = size // 4096
        for j in range(slots):
            self._set_stamp(self.put_words, j, 0, 0)

    def addr(self, buf, j: int) -> int:
        return buf.addr + (j % self.slots) * self.size

    def _words(self, words, j: int, which: int):
        base = (j % self.slots) * self.size // 8
        return words[base + which:base + self.size // 8:STAMP_WORDS]

    def _set_stamp(self, words, j: int, index: int, tag: int) -> None:
        self._words(words, j, 0)[:] = array.array("Q", [index]) * self.blocks
        self._words(words, j, 1)[:] = array.array("Q", [tag]) * self.blocks

    def stamp(self, j: int, index: int, key: str) -> None:
        self._set_stamp(self.put_words, j, index, key_tag(key))

    def unstamp(self, j: int) -> None:
        self._set_stamp(self.put_words, j, 0, 0)

    def verify(self, j: int, index: int, key: str) -> bool:
        """Whether get slot ``j`` holds page ``index`` of ``key`` (consumes its stamps)."""
        if self._words(self.get_words, j, 0).tolist() != [index] * self.blocks:
            return False
        if self._words(self.get_words, j, 1).tolist() != [key_tag(key)] * self.blocks:
            return False
        self._set_stamp(self.get_words, j, 0, 0)
        return _libc.memcmp(self.addr(self.get, j), self.addr(self.put, j), self.size) == 0

    def close(self) -> None:
        self.put_words.release()
        self.get_words.release()
        self.put.close()
        self.get.close()


class Client:
    """The workload of one rank: batches of ``slots`` pages through a store with Mooncake's batch
    API (ours has the same method names and result conventions)."""

    def __init__(self, store):
        self.store = store
        self.slots = None

    def buffers(self, size: int, slots: int) -> dict:
        if self.slots is not None:
            for b in (self.slots.put, self.slots.get):
                self.store.unregister_buffer(b.addr)
            self.slots.close()
        self.slots = Slots(size, slots)
        for b in (self.slots.put, self.slots.get):
            rc = self.store.register_buffer(b.addr, b.size)
            if rc != 0:
                raise RuntimeError(f"register_buffer returned {rc}")
        return {}

    def _batches(self, keys, first: int):
        p = self.slots.slots
        for s in range(0, len(keys), p):
            yield list(range(first + s, first + min(len(keys), s + p))), keys[s:s + p]

    def put(self, keys, first: int = 0) -> dict:
        sl, out = self.slots, {"batches": [], "errors": 0, "cpu": 0.0}
        for idx, ks in self._batches(keys, first):
            for i, k in zip(idx, ks):
                sl.stamp(i, i, k)
            ptrs = [sl.addr(sl.put, i) for i in idx]
            codes = timed(out, self.store.batch_put_from, ks, ptrs, [sl.size] * len(ks))
            out["errors"] += sum(1 for c in codes if c != 0)
            for i in idx:
                sl.unstamp(i)
        return out

    def get(self, keys, first: int = 0) -> dict:
        sl, out = self.slots, {"batches": [], "errors": 0, "misses": 0, "wrong": 0, "cpu": 0.0}
        for idx, ks in self._batches(keys, first):
            ptrs = [sl.addr(sl.get, i) for i in idx]
            codes = timed(out, self.store.batch_get_into, ks, ptrs, [sl.size] * len(ks))
            for i, k, c in zip(idx, ks, codes):
                if c == sl.size:
                    out["wrong"] += not sl.verify(i, i, k)
                elif c == NOT_FOUND:
                    out["misses"] += 1
                else:
                    out["errors"] += 1
        return out

    def exists(self, keys, repeat: int) -> dict:
        calls, codes = [], []
        for _ in range(repeat):
            t0 = time.perf_counter()
            codes = self.store.batch_is_exist(keys)
            calls.append(time.perf_counter() - t0)
        return {"calls": calls, "present": sum(1 for c in codes if c == 1)}

    def remove(self, keys) -> dict:
        fn = getattr(self.store, "batch_remove", None)
        codes = fn(keys) if fn else [self.store.remove(k) for k in keys]
        return {"removed": sum(1 for c in codes if c == 0)}

    def handle(self, cmd: dict) -> dict:
        op = cmd["op"]
        if op == "buffers":
            return self.buffers(cmd["size"], cmd["slots"])
        if op in ("put", "get"):
            return getattr(self, op)(cmd["keys"], cmd.get("first", 0))
        if op == "exists":
            return self.exists(cmd["keys"], cmd.get("repeat", 1))
        if op == "remove":
            return self.remove(cmd["keys"])
        raise ValueError(f"unknown command {op!r}")


# ---- stores ------------------------------------------------------------------------------------

def open_ours(config_path: str):
    from mooncake_hicache import Store
    return Store.from_config(config_path)


def open_mooncake(setup_json: str):
    """A MooncakeDistributedStore set up from the JSON object ``setup_json`` (keys of its
    ``setup(dict)``: local_hostname, metadata_server, global_segment_size, local_buffer_size,
    protocol, master_server_addr)."""
    from mooncake.store import MooncakeDistributedStore
    cfg = json.loads(setup_json)
    store = MooncakeDistributedStore()
    rc = store.setup(cfg["local_hostname"], cfg["metadata_server"], cfg["global_segment_size"],
                     cfg["local_buffer_size"], cfg["protocol"], cfg.get("rdma_devices", ""),
                     cfg["master_server_addr"])
    if rc != 0:
        raise RuntimeError(f"MooncakeDistributedStore.setup returned {rc}")
    return store


# ---- the loopback TCP limit --------------------------------------------------------------------

LEN = struct.Struct("<Q")


def recv_exact(sock: socket.socket, view: memoryview) -> None:
    while view:
        n = sock.recv_into(view)
        if n == 0:
            raise ConnectionError("the sender closed the connection")
        view = view[n:]


class TcpSender:
    """Serves every connection: reads an 8-byte length, sends that many bytes of arena-kind
    memory (a thread per connection, as a node's holder would send from its arena)."""

    def __init__(self):
        self.src = None
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def ready(self) -> dict:
        return {"port": self.lsock.getsockname()[1]}

    def _accept(self) -> None:
        while True:
            c, _ = self.lsock.accept()
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        head = bytearray(LEN.size)
        with c:
            while True:
                try:
                    recv_exact(c, memoryview(head))
                except (ConnectionError, OSError):
                    return
                n = LEN.unpack(head)[0]
                c.sendall(self.src.view[:n])

    def handle(self, cmd: dict) -> dict:
        if cmd["op"] != "buffers":
            raise ValueError(f"unknown command {cmd['op']!r}")
        if self.src is not None:
            self.src.close()
        self.src = bc.ArenaBuffer(cmd["size"] * cmd["slots"])
        return {}


class TcpReceiver:
    """Pulls each batch's bytes over ``streams`` connections at once into a page-aligned buffer,
    and copies the same bytes out of arena-kind memory for the memcpy limit."""

    def __init__(self):
        self.socks: list[socket.socket] = []
        self.dst = self.src = None
        self.pool = None

    def connect(self, port: int, streams: int) -> dict:
        while len(self.socks) < streams:
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.socks.append(s)
        if self.pool is None or self.pool._max_workers < streams:
            self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(streams, 1))
        return {}

    def buffers(self, size: int, slots: int) -> dict:
        for b in (self.dst, self.src):
            if b is not None:
                b.close()
        self.size, self.slots = size, slots
        self.dst = bc.AlignedBuffer(size * slots)
        self.dst.view[:] = bytes(self.dst.size)
        self.src = bc.ArenaBuffer(size * slots)
        return {}

    def _pull(self, sock: socket.socket, view: memoryview) -> None:
        sock.sendall(LEN.pack(len(view)))
        recv_exact(sock, view)

    def tcp(self, batches: int, streams: int) -> dict:
        out = {"batches": [], "cpu": 0.0}
        per = -(-self.slots // streams)  # pages per stream, the last one takes the rest
        parts = [self.dst.view[j * per * self.size:min(self.slots, (j + 1) * per) * self.size]
                 for j in range(streams)]
        def pull_all():
            for f in [self.pool.submit(self._pull, s, v) for s, v in zip(self.socks, parts) if len(v)]:
                f.result()

        for _ in range(batches):
            timed(out, pull_all)
        for v in parts:
            v.release()
        return out

    def memcpy(self, batches: int) -> dict:
        out = {"batches": [], "cpu": 0.0}
        d, s, n = self.dst.addr, self.src.addr, self.size
        def copy_all():
            for j in range(self.slots):
                ctypes.memmove(d + j * n, s + j * n, n)

        for _ in range(batches):
            timed(out, copy_all)
        return out

    def handle(self, cmd: dict) -> dict:
        op = cmd["op"]
        if op == "connect":
            return self.connect(cmd["port"], cmd["streams"])
        if op == "buffers":
            return self.buffers(cmd["size"], cmd["slots"])
        if op == "tcp":
            return self.tcp(cmd["batches"], cmd["streams"])
        if op == "memcpy":
            return self.memcpy(cmd["batches"])
        raise ValueError(f"unknown command {op!r}")


class Holder:
    """A Mooncake storage node: its store stays set up (serving its segment) until quit."""

    def __init__(self, store):
        self.store = store

    def handle(self, cmd: dict) -> dict:
        raise ValueError(f"a holder takes no command but quit, got {cmd['op']!r}")


# ---- the loop ----------------------------------------------------------------------------------

def make_role(argv: list[str]):
    role = argv[0] if argv else ""
    if role == "client" and len(argv) == 3:
        return Client(open_ours(argv[2]) if argv[1] == "ours" else open_mooncake(argv[2]))
    if role == "holder" and len(argv) == 3 and argv[1] == "mooncake":
        return Holder(open_mooncake(argv[2]))
    if role == "tcp-send":
        return TcpSender()
    if role == "tcp-recv":
        return TcpReceiver()
    raise SystemExit(f"usage: cluster_worker.py client ours|mooncake ARG | holder mooncake SETUP | tcp-send | tcp-recv "
                     f"(got {argv})")


def reply(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    try:
        worker = make_role(argv)
    except Exception as e:  # noqa: BLE001 - the bench prints it
        reply({"error": f"{type(e).__name__}: {e}"})
        return 1
    ready = worker.ready() if hasattr(worker, "ready") else {}
    reply({"ready": True, "pid": os.getpid(), **ready})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        try:
            reply(worker.handle(cmd))
        except Exception as e:  # noqa: BLE001 - one failed command is reported, the worker goes on
            reply({"error": f"{type(e).__name__}: {e}"})
    close = getattr(getattr(worker, "store", None), "close", None)
    if close is not None:
        close()
    reply({})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
