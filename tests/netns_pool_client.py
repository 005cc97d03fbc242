"""A rank run inside a test host (tests/test_cluster_partition.py): a process that opens
``Store.from_config(CONFIG)`` (a cluster config of its host's node) and answers commands, one JSON
object per line on stdin, with one JSON line on stdout::

    {"op": "put", "keys": [...], "size": N}   -> {"codes": [...], "seconds": s}
    {"op": "get", "keys": [...], "size": N}   -> {"codes": [...], "wrong": [keys], "seconds": s}
    {"op": "exists", "keys": [...]}           -> {"codes": [...], "seconds": s}
    {"op": "stats"}                           -> Store.stats() (with the pool's "rdma" section)
    {"op": "quit"}                            -> {} and exit 0

Values are ``pattern(key, size)`` (tests/conftest.py), written from and read into one registered
buffer; before a get the buffer is filled with a poison byte, so only bytes the call really
delivered can match. ``wrong`` lists every key whose code is neither the size nor NOT_FOUND, or
whose delivered bytes differ from its pattern. ``seconds`` is the call alone. The first line is
``{"ready": true}`` once the store is open, or ``{"error": "..."}`` (then exit 1).
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import Buffer, pattern  # noqa: E402

from mooncake_hicache import Store  # noqa: E402
from mooncake_hicache.errors import ErrorCode  # noqa: E402

BUFFER_BYTES = 32 << 20
POISON = 0xA5


class Rank:
    def __init__(self, config: str):
        self.store = Store.from_config(config)
        self.buf = Buffer(BUFFER_BYTES)
        self.store.register_buffer(self.buf.addr, self.buf.size)

    def _layout(self, keys, size):
        if len(keys) * size > self.buf.size:
            raise ValueError(f"{len(keys)} x {size} bytes do not fit the client's {self.buf.size}-byte buffer")
        return [self.buf.addr + i * size for i in range(len(keys))], [size] * len(keys)

    def put(self, keys, size):
        ptrs, sizes = self._layout(keys, size)
        for i, k in enumerate(keys):
            self.buf.write(i * size, pattern(k, size))
        t0 = time.monotonic()
        codes = self.store.batch_put_from(keys, ptrs, sizes)
        return {"codes": codes, "seconds": time.monotonic() - t0}

    def get(self, keys, size):
        ptrs, sizes = self._layout(keys, size)
        self.buf.write(0, bytes([POISON]) * (len(keys) * size))
        t0 = time.monotonic()
        codes = self.store.batch_get_into(keys, ptrs, sizes)
        seconds = time.monotonic() - t0
        wrong = [k for i, (k, c) in enumerate(zip(keys, codes))
                 if c not in (size, ErrorCode.NOT_FOUND) or (c == size and self.buf.read(i * size, size) != pattern(k, size))]
        return {"codes": codes, "wrong": wrong, "seconds": seconds}

    def exists(self, keys):
        t0 = time.monotonic()
        codes = self.store.batch_is_exist(keys)
        return {"codes": codes, "seconds": time.monotonic() - t0}


def reply(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(config: str) -> int:
    try:
        rank = Rank(config)
    except Exception as e:  # the test prints it
        reply({"error": f"{type(e).__name__}: {e}"})
        return 1
    reply({"ready": True})
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "quit":
            break
        if op == "exists":
            reply(rank.exists(cmd["keys"]))
        elif op == "stats":
            reply(rank.store.stats())
        else:
            reply(getattr(rank, op)(cmd["keys"], cmd["size"]))
    rank.store.close()
    reply({})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
