#!/usr/bin/env python3
"""What batched prefetch saves: SGLang's prefetch flow with and without it, through a node.

SGLang's HiCache asks ``batch_exists`` for a request's prefix, then reads the hit pages with
``batch_get_v1`` in batches of 128. Pages that are on NVMe only cost an NVMe read (and a promotion
into DRAM) inside those gets. With prefetch, the backend calls ``Store.prefetch`` on the pages
``batch_exists`` found, so the node starts promoting them at once, while the first batches are
being read and while SGLang schedules the rest.

Per round this bench writes ``--pages`` pages (overflowing DRAM so the oldest are NVMe-only),
then for the NVMe-only prefix: ``batch_is_exist`` (+ ``prefetch`` in the prefetch variant), an
optional ``--gap-ms`` pause (SGLang's scheduling delay between its prefetch query and the I/O),
then the gets in batches of ``--batch``. It reports the time from the exists call to the last byte,
the get time alone, and where the pages came from; every page read is verified.

    python bench/prefetch_bench.py                 # 1 MiB pages, 1024-page prefix, gap 0 and 20 ms
    python bench/prefetch_bench.py --quick

Prints a table and one JSON line ``{"bench": "prefetch", ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _bench_common import fmt_num, json_line, print_table  # noqa: E402

from mooncake_hicache.config import load_config  # noqa: E402
from mooncake_hicache.bench_command import (BenchStore, PageSlots, close_bench_run, make_keys,  # noqa: E402
                                       private_config)


def one_run(page_size: int, prefix: int, batch: int, gap_ms: float, use_prefetch: bool, sock_dir: str,
            nvme_dir: str) -> dict:
    pages = prefix * 2  # the second half stays in DRAM, the first half (the prefix) is NVMe-only
    config = load_config(private_config(page_size, pages, prefix, sock_dir, nvme_dir))
    bench = BenchStore(config)
    slots = PageSlots(page_size, batch, seed=1)
    try:
        store = bench.store
        slots.register(store)
        keys, depths = make_keys(pages)
        for b in range(0, pages, batch):
            ks = keys[b:b + batch]
            for i, k in enumerate(ks):
                slots.stamp(b + i, k)
            res = store.batch_put_from(ks, [slots.slot_addr(slots.put, b + i) for i in range(len(ks))],
                                       [page_size] * len(ks), depths=depths[b:b + batch])
            assert res == [0] * len(ks), res
        before = store.stats()["tiering"]
        want = keys[:prefix]
        t0 = time.perf_counter()
        found = store.batch_is_exist(want)
        assert found == [1] * prefix
        if use_prefetch:
            store.prefetch(want)
        if gap_ms:
            time.sleep(gap_ms / 1000)
        t1 = time.perf_counter()
        bad = 0
        for b in range(0, prefix, batch):
            ks = want[b:b + batch]
            res = store.batch_get_into(ks, [slots.slot_addr(slots.get, b + i) for i in range(len(ks))],
                                       [page_size] * len(ks))
            for i, (k, r) in enumerate(zip(ks, res)):
                if r != page_size or not slots.verify(b + i, k):
                    bad += 1
        t2 = time.perf_counter()
        after = store.stats()["tiering"]
        return {"prefetch": use_prefetch, "gap_ms": gap_ms, "pages": prefix, "bad": bad,
                "total_ms": (t2 - t0) * 1e3, "get_ms": (t2 - t1) * 1e3,
                "get_gbps": prefix * page_size / (t2 - t1) / 1e9,
                "dram_hits": after["dram_hits"] - before["dram_hits"],
                "nvme_hits": after["nvme_hits"] - before["nvme_hits"],
                "prefetched": after["prefetch_done"] - before["prefetch_done"]}
    finally:
        close_bench_run(slots, bench, config.node.socket)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--page-size", type=int, default=1 << 20)
    ap.add_argument("--prefix", type=int, default=1024, help="NVMe-only pages per request prefix")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--gaps", default="0,20", help="pauses in ms between exists and the gets")
    ap.add_argument("--quick", action="store_true", help="256 pages, gap 0 only")
    args = ap.parse_args()
    if args.quick:
        args.prefix, args.gaps = 256, "0"
    rows, results = [], []
    for gap in [float(g) for g in args.gaps.split(",")]:
        for use in (False, True):
            sock_dir = tempfile.mkdtemp(prefix="mch", dir="/tmp")
            nvme_dir = tempfile.mkdtemp(prefix="mch-prefetch-", dir="/var/tmp")
            try:
                r = one_run(args.page_size, args.prefix, args.batch, gap, use, sock_dir, nvme_dir)
            finally:
                shutil.rmtree(sock_dir, ignore_errors=True)
                shutil.rmtree(nvme_dir, ignore_errors=True)
            results.append(r)
            rows.append(["on" if use else "off", fmt_num(gap, 0), r["pages"], fmt_num(r["total_ms"], 1),
                         fmt_num(r["get_ms"], 1), fmt_num(r["get_gbps"]), r["dram_hits"], r["nvme_hits"],
                         r["prefetched"], r["bad"]])
    print_table(["prefetch", "gap ms", "pages", "exists->last byte ms", "gets ms", "gets GB/s",
                 "dram hits", "nvme hits", "prefetched", "bad"], rows)
    json_line({"bench": "prefetch", "page_size": args.page_size, "batch": args.batch, "runs": results})
    return 1 if any(r["bad"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
