#!/usr/bin/env python3
"""What a per-page checksum in DRAM would cost: the copy a client makes into the arena (put) and
out of it (get), with and without an XXH3-64 of each page computed while copying.

A checksum kept by the node for every DRAM page (computed when the page is written, verified
when it is read) would catch a page changed in the shared arena after it was committed (a client
scribbling over a slot, a punched hole reading back as zeros). Its price is one hash pass per put
and per get over bytes that are otherwise only copied. This bench measures that price where the
copy happens, in C++ (``_native._copy_pages_ns``): ``pages`` pages of ``page`` bytes, between
private memory and memory of the arena's kind (``ArenaBuffer``), checksum path and plain memcpy
measured alternately (ABBA) until ``--seconds`` is spent; the ratio is checksum path / memcpy.
docs/architecture.md ("Trust and limits") records the decision taken from it.

Prints a table and one JSON line. Example::

    .venv/bin/python bench/dram_checksum_bench.py                    # 128 x 1 MiB, 10 s per direction
    .venv/bin/python bench/dram_checksum_bench.py --page 64K --seconds 2
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _bench_common as bc  # noqa: E402
from mooncake_hicache import _native  # noqa: E402


def copy_gbps(dst: int, src: int, page: int, pages: int, checksum: bool, iterations: int) -> dict:
    ns = _native._copy_pages_ns(dst, src, page, pages, checksum, iterations)
    seconds = ns * iterations / 1e9
    return {"gbps": bc.gbps(page * pages, ns / 1e9), "seconds": seconds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--page", default="1MiB", help="bytes per page (default 1MiB)")
    p.add_argument("--pages", type=int, default=128, help="pages per batch (default 128, as SGLang batches)")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per direction (default 10)")
    p.add_argument("--iterations", type=int, default=4, help="batches per sample (default 4)")
    args = p.parse_args(argv)
    page = bc.parse_size(args.page)
    total = page * args.pages
    private, arena = bc.AlignedBuffer(total), bc.ArenaBuffer(total)
    private.view[:] = os.urandom(4096) * (total // 4096) + os.urandom(total % 4096)
    rows, result = [], {"bench": "dram_checksum", "page": page, "pages": args.pages, "arena_page_kind": arena.page_kind,
                        "machine": bc.machine_info(HERE)}
    for name, dst, src in (("put (into the arena)", arena.addr, private.addr),
                           ("get (out of the arena)", private.addr, arena.addr)):
        summary = bc.run_paired(lambda: copy_gbps(dst, src, page, args.pages, True, args.iterations),
                                lambda: copy_gbps(dst, src, page, args.pages, False, args.iterations),
                                ["gbps"], args.seconds, name)
        r = summary["gbps"]
        rows.append((name, bc.fmt_size(page), bc.fmt_num(r["ours_gbps"]), bc.fmt_num(r["limit_gbps"]),
                     bc.fmt_ratio(r), summary["pairs"]))
        result[name.split()[0]] = summary
    bc.print_table(["copy", "page", "with XXH3 GB/s", "memcpy GB/s", "ratio [min-max]", "pairs"], rows)
    bc.json_line(result)
    private.close()
    arena.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
