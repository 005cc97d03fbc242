#!/usr/bin/env python3
"""Micro mode: the per-tier benchmarks behind one command, with the limits measured in the same run.

Runs, one after the other, each as a subprocess (its progress goes to stderr as it runs):

* ``bench/nvme_bench.py``  -- the NVMe tier (Store, NVMe only) vs fio (io_uring, O_DIRECT) and a
  one-file-per-page baseline, write and read, per page size and queue depth;
* ``bench/store_bench.py`` -- the tiers through the node as SGLang ranks use them: put/get in DRAM,
  put with demotion, get from NVMe (promotion), ``batch_is_exist`` latency, vs memcpy and fio;
* ``bench/plan_bench.py``  -- what planning a prefetch of 1,000 pages costs (the prefetch policy),
  paired with one get of a DRAM page at the 8b model's page size (the ratio: plan / page);

with ``--quick`` unless ``--full`` is given, collects the one JSON line each prints
(``{"bench": ...}``) and prints one table: operation, page size, GB/s (median [min-max] over
the samples), batch latency, the limit it is compared with (measured by that bench in the same
run: memcpy into arena-kind memory, fio), and the ratio: the median of the ratios of ABBA pairs
(ours and the limit measured back to back) with their min-max. It also measures loopback TCP
(one stream), the ceiling of a future same-host socket transport; nothing is compared with it yet.

Output: the table on stdout, ``micro.json`` (every bench's full JSON plus the limits) in
``--output``. Exit status: the worst of the benches' (0 ok, 1 wrong bytes or failed calls,
2 setup problem); a bench that is missing is reported and skipped.

Examples::

    .venv/bin/python bench/micro.py                 # quick (--seconds 1 per point): about 2 minutes
    .venv/bin/python bench/micro.py --full          # the benches' default runs (>= 10 s per point; ~15 minutes)
    .venv/bin/python bench/micro.py --only nvme --dir /mnt/nvme
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _bench_common as bc  # noqa: E402

BENCHES = {"nvme": "nvme_bench.py", "store": "store_bench.py", "plan": "plan_bench.py"}


# ---- a limit measured here ------------------------------------------------------------------

def tcp_loopback_gbps(total: int = 2 << 30, chunk: int = 1 << 20) -> float:
    """One TCP stream over 127.0.0.1, ``total`` bytes sent in ``chunk``-byte writes."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    received = [0]

    def sink():
        conn, _ = srv.accept()
        buf = bytearray(chunk)
        with conn:
            while True:
                n = conn.recv_into(buf)
                if not n:
                    break
                received[0] += n

    th = threading.Thread(target=sink, daemon=True)
    th.start()
    data = b"\x5a" * chunk
    cli = socket.create_connection(("127.0.0.1", port))
    t0 = time.perf_counter()
    sent = 0
    while sent < total:
        cli.sendall(data)
        sent += chunk
    cli.shutdown(socket.SHUT_WR)
    th.join()
    dt = time.perf_counter() - t0
    cli.close()
    srv.close()
    return received[0] / dt / 1e9


# ---- running the benches ------------------------------------------------------------------------

def run_bench(name: str, full: bool, extra: list, timeout: float) -> tuple:  # noqa: D401
    """(exit status, its JSON doc or None)."""
    path = os.path.join(HERE, BENCHES[name])
    if not os.path.exists(path):
        return None, None
    cmd = [sys.executable, path] + ([] if full else ["--quick"]) + extra
    bc.progress(f"running {' '.join(os.path.relpath(c) if c.startswith('/') else c for c in cmd)}")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout)
    doc = None
    for line in proc.stdout.splitlines():
        if line.startswith('{"bench"'):
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                pass
    return proc.returncode, doc


def _g(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def rows_from_nvme(doc: dict) -> list:
    rows = []
    for r in doc.get("rows", []):
        p = r.get("paired") or {}
        for op in ("write", "read"):
            m = p.get(op) or {}
            if r.get("measured") == "fio":
                rows.append([f"fio {op} (limit alone)", r["size"], r["qd"], _g(m.get("ours_gbps")), "-", "-", "", "-",
                             "-", p.get("pairs", 0)])
                continue
            rows.append([f"nvme {op} (NVMe tier)", r["size"], r["qd"], _g(m.get("ours_gbps")), "-", "-",
                         f"fio {op} qd{r['qd']}" if r.get("limit") else "", _g(m.get("limit_gbps")),
                         bc.fmt_ratio(m), p.get("pairs", 0)])
    for nv in doc.get("naive") or []:
        runs = nv.get("runs") or {}
        for op in ("write", "read"):
            rows.append([f"naive file-per-page {op}", nv.get("size"), 1, bc.fmt_spread(runs.get(op)), "-", "-",
                         "", "-", "-", runs.get("pairs", 0)])
    rs = doc.get("restart")
    if rs and "error" not in rs:
        rows.append(["nvme restart (index rebuild)", "1M", "-", "-", f"{rs['reopen_s'] * 1e3:.0f} ms", "-",
                     f"{rs['entries_found']}/{rs['pages_written']} found", "-", "-", 1])
    return rows


STORE_POINTS = [("put_dram", "put dram"), ("get_dram", "get dram"), ("put_demote", "put + demote to nvme"),
                ("get_nvme_dram_full", "get nvme (dram full)"), ("get_nvme", "get nvme"),
                ("get_nvme_restart", "get nvme after restart")]


def rows_from_store(doc: dict) -> list:
    rows = []
    mode = doc.get("mode", "node")
    for r in doc.get("results", []):
        size = bc.fmt_size(r["page_size"])
        pts, ph = r.get("points") or {}, r.get("phases") or {}
        for key, label in STORE_POINTS:
            p = pts.get(key)
            if not p:
                continue
            b = ph.get(key) or {}
            rows.append([f"{label} ({mode})", size, 128, bc.fmt_spread(p), _g(b.get("batch_ms_p50")),
                         _g(b.get("batch_ms_p99")), p.get("limit") or "", _g(p.get("limit_gbps")),
                         bc.fmt_ratio(p) if p.get("limit") else "-", p.get("pairs", 0)])
        for key, label in (("exists", "exists x128"), ("exists_raw_client", "exists x128, raw client")):
            ex = r.get(key) or {}
            if ex:
                rows.append([f"{label} ({mode})", size, 128, "-",
                             f"{ex['us_p50'] / 1e3:.3f}" if ex.get("us_p50") is not None else "-",
                             f"{ex['us_p99'] / 1e3:.3f}" if ex.get("us_p99") is not None else "-", "", "-", "-",
                             ex.get("calls", 0)])
    return rows


def rows_from_plan(doc: dict) -> list:
    """Planning a prefetch of 1,000 pages, paired with one get of a DRAM page (plan_bench.py)."""
    size = bc.fmt_size(doc["page_bytes"])
    return [[f"plan {c['pages']} pages: {c['policy']}, {c['case']}", size, "-", "-", f"{c['plan_us'] / 1e3:.3f}", "-",
             f"get 1 dram page ({c['get_page_us'] / 1e3:.3f} ms)", "-",
             f"{c['ratio']:.3f} [{c['ratio_min']:.3f}-{c['ratio_max']:.3f}]", c["pairs"]] for c in doc["cases"]]


def print_table(headers: list, rows: list) -> None:
    """First column left-aligned, the others right-aligned."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, r in enumerate(cells):
        print("  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)).rstrip())
        if j == 0:
            print("  ".join("-" * x for x in w))


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--full", action="store_true", help="run each bench's default (longer) set instead of --quick")
    p.add_argument("--only", default="nvme,store,plan", help="comma-separated subset of: nvme, store, plan (default all)")
    p.add_argument("--dir", default=None, help="directory for data files, passed to each bench as --dir")
    p.add_argument("--output", default=os.path.join(HERE, "out", "micro"), help="where micro.json goes")
    p.add_argument("--seconds", type=float, default=None,
                   help="timed seconds per point, passed to each bench (default: theirs: 10, or 1 with --quick)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per bench")
    args = p.parse_args(argv)
    which = [w.strip() for w in args.only.split(",") if w.strip()]
    bad = [w for w in which if w not in BENCHES]
    if bad:
        print(f"micro: unknown bench(es) {bad}; choose from {', '.join(BENCHES)}", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    bc.progress("limit: loopback TCP (one stream), for a socket transport (nothing below is compared with it)")
    limits = {"tcp_loopback_gbps": round(tcp_loopback_gbps(), 3)}
    docs, status = {}, 0
    for name in which:
        extra = (["--dir", args.dir] if args.dir else []) + (["--seconds", str(args.seconds)] if args.seconds is not None else [])
        try:
            rc, doc = run_bench(name, args.full, extra, args.timeout)
        except subprocess.TimeoutExpired:
            rc, doc = 2, None
            print(f"micro: {name} timed out after {args.timeout:.0f}s", file=sys.stderr)
        if rc is None:
            print(f"micro: bench/{BENCHES[name]} not found; skipped", file=sys.stderr)
            continue
        status = max(status, rc if rc in (0, 1, 2) else 2)
        docs[name] = {"exit": rc, "json": doc}

    headers = ["operation", "page", "qd", "GB/s", "batch p50 ms", "batch p99 ms", "limit", "limit GB/s",
               "ratio [min-max]", "n"]
    rows = [["loopback TCP, one stream (limit)", "1M", "-", _g(limits["tcp_loopback_gbps"]), "-", "-", "", "-", "-", 1]]
    for name, d in docs.items():
        doc = d["json"]
        if doc is None:
            rows.append([f"{name}: no JSON (exit {d['exit']})", "-", "-", "-", "-", "-", "", "-", "-", "-"])
        elif doc.get("bench") == "nvme":
            rows += rows_from_nvme(doc)
        elif doc.get("bench") == "plan":
            rows += rows_from_plan(doc)
        else:
            rows += rows_from_store(doc)
    print(f"\nMicro benchmarks ({'full' if args.full else 'quick'}), GB/s = 1e9 B/s, median [min-max] over samples; "
          f"ratio = median of ours / limit over ABBA pairs taken in this run [min-max]; n = pairs or samples\n")
    print_table(headers, rows)
    os.makedirs(args.output, exist_ok=True)
    out = os.path.join(args.output, "micro.json")
    with open(out, "w") as f:
        json.dump({"bench": "micro", "full": args.full, "limits": limits, "benches": docs,
                   "machine": bc.machine_info(args.dir or "/var/tmp"),
                   "seconds": round(time.perf_counter() - t0, 1)}, f, indent=1)
    print(f"\nwrote {os.path.relpath(out)} ({time.perf_counter() - t0:.0f}s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
