"""A rank under load, run as its own process by the cluster fault tests:

    python tests/cluster_load_client.py CONFIG PREFIX KEYS SECONDS OUT.json

Writes KEYS pages (64 KiB each, content pattern(key)) through a Store of CONFIG's node, then
until SECONDS have passed reads batches of 32 of them (checking every byte) and writes a fresh
batch of 8 after every fourth read (the nodes' NVMe files keep every page written). Each call is recorded as [wall-clock start, seconds, kind, hits, misses,
wrong pages, write failures] in OUT.json, with the keys written before the loop.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import Buffer, pattern  # noqa: E402

from mooncake_hicache import Store  # noqa: E402

PAGE = 64 * 1024
BATCH = 32


def put(store, buf, keys):
    for i, k in enumerate(keys):
        buf.write(i * PAGE, pattern(k, PAGE))
    return store.batch_put_from(keys, [buf.addr + i * PAGE for i in range(len(keys))], [PAGE] * len(keys))


def main(config, prefix, n_keys, seconds, out_path):
    store = Store.from_config(config)
    buf = Buffer(BATCH * PAGE)
    store.register_buffer(buf.addr, buf.size)
    keys = [f"{prefix}-{i}" for i in range(n_keys)]
    for i in range(0, n_keys, BATCH):
        put(store, buf, keys[i:i + BATCH])
    calls, rng, fresh = [], random.Random(prefix), 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        batch = rng.sample(keys, BATCH)
        t0, w0 = time.monotonic(), time.time()
        res = store.batch_get_into(batch, [buf.addr + i * PAGE for i in range(BATCH)], [PAGE] * BATCH)
        dt = time.monotonic() - t0
        wrong = [k for i, k in enumerate(batch) if res[i] == PAGE and buf.read(i * PAGE, PAGE) != pattern(k, PAGE)]
        bad = [r for r in res if r not in (PAGE, -704)]
        calls.append([w0, dt, "get", res.count(PAGE), res.count(-704), len(wrong) + len(bad), 0,
                      [k for i, k in enumerate(batch) if res[i] == -704]])
        if len(calls) % 4:
            continue
        new = [f"{prefix}-w{fresh + i}" for i in range(8)]
        fresh += 8
        t0, w0 = time.monotonic(), time.time()
        res = put(store, buf, new)
        calls.append([w0, time.monotonic() - t0, "put", 0, 0, 0, sum(r != 0 for r in res), []])
    store.close()
    with open(out_path, "w") as f:
        json.dump({"keys": keys, "calls": calls}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
