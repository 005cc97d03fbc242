#!/usr/bin/env python3
"""Store benchmark (issue 3): a client process talks to the per-host node, in batches of 128 KV
pages, and is compared with what the machine can do in the same run.

For each page size (default 256K, 1M, 4M) it starts a private node (node mode, Unix socket under
``--sock-dir``, NVMe data file under ``--dir``; DRAM sized to hold one set of ``--set-mib`` MiB,
NVMe sized to hold two) and measures, from this process, with every call timed on its own:

* **put dram, cold arena**  ``batch_put_from`` of a warm-up set into the node's fresh arena (the
  first write to each arena page faults it in); then ``remove_all`` empties DRAM;
* **put dram**  ``batch_put_from`` of set A into empty, already-touched DRAM (no eviction);
* **exists**  ``batch_is_exist`` of 128 keys of A, repeated (``--exists-calls``): median, p99;
* **get dram**  ``batch_get_into`` of A, ``--passes`` times (DRAM hits);
* **put+demote**  ``batch_put_from`` of set B: DRAM is full, so every put evicts a page of A,
  which is written to NVMe (demotion) inside the put;
* **get nvme, dram full**  the first half of A from NVMe; each hit is promoted into DRAM, which
  evicts (and demotes) a page of B;
* then B is removed (``remove`` per key), which frees DRAM slots;
* **get nvme**  the second half of A from NVMe, promoted into free DRAM (nothing evicted): the
  NVMe read path alone, compared with fio;
* **get nvme after restart**  the node is restarted (SIGTERM seals NVMe; DRAM comes back empty,
  in a fresh arena) and the first half of A is read from NVMe again.

Baselines, measured in the same run on the same buffers and file system:

* **memcpy**  single-thread ``ctypes.memmove`` of the same pages (128 per batch) from the put
  buffer to the get buffer;
* **fio**  ``ioengine=io_uring, direct=1``, same block size, ``--qds`` (default 16 and 64),
  ``rw=write`` then ``rw=read`` on a file in ``--dir`` (the same file system as the data file).

Targets (reported, not asserted): put dram and get dram >= 70% of memcpy; exists of 128 keys
< 100 us median; get nvme >= 85% of the best fio read. Every page read is compared byte for byte
with what was written; the exit status is 1 if any page came back wrong or any call failed,
2 for a setup problem, 0 otherwise (whether or not targets are met).

GB/s are decimal (1e9 bytes/s) over the time inside the store calls (verification excluded).
Output: progress on stderr, a table on stdout, then one line of JSON ``{"bench": "store_node", ...}``.

Examples::

    .venv/bin/python bench/store_bench.py                 # default run: 256K, 1M, 4M pages, 1 GiB sets (about 1-2 minutes)
    .venv/bin/python bench/store_bench.py --quick         # 1M pages, 256 MiB sets (about 15 seconds)
    .venv/bin/python bench/store_bench.py --sizes 1M --set-mib 4096 --dir /mnt/nvme --qds 16,32,64
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench_common as bc  # noqa: E402

from mooncake_hicache import load_config  # noqa: E402
from mooncake_hicache.errors import MooncakeHiCacheError  # noqa: E402
from mooncake_hicache.bench_command import (  # noqa: E402
    BenchStore, PageSlots, PhaseResult, Progress, close_bench_run, counters_delta, exists_latency, get_pages,
    make_keys, node_log_tail, private_config, put_pages, tier_counters)

KiB, MiB, GiB = bc.KiB, bc.MiB, bc.GiB
BATCH = 128  # keys per call, SGLang's STORAGE_BATCH_SIZE

TARGETS = {"put_dram_vs_memcpy": 0.70, "get_dram_vs_memcpy": 0.70, "exists_us_p50": 100.0,
           "get_nvme_vs_fio": 0.85}
QUICK = {"sizes": "1M", "set_mib": 256, "passes": 1, "exists_calls": 200}
DEFAULTS = {"sizes": "256K,1M,4M", "set_mib": 1024, "passes": 3, "exists_calls": 1000}


def memcpy_baseline(slots: PageSlots, pages: int, reps: int) -> dict:
    """Single-thread memmove of ``pages`` pages (batches of up to ``slots.slots``) from the put
    buffer to the get buffer, ``reps`` times; GB/s over all copies and per-batch median."""
    size = slots.page_size
    per_batch = []
    total_s = 0.0
    total_b = 0
    move = ctypes.memmove
    for _ in range(reps):
        for s in range(0, pages, slots.slots):
            n = min(slots.slots, pages - s)
            src = [slots.put.addr + j * size for j in range(n)]
            dst = [slots.get.addr + j * size for j in range(n)]
            t0 = time.perf_counter()
            for d, p in zip(dst, src):
                move(d, p, size)
            dt = time.perf_counter() - t0
            per_batch.append(n * size / dt / 1e9)
            total_s += dt
            total_b += n * size
    return {"gbps": round(total_b / total_s / 1e9, 3), "batch_gbps_p50": round(statistics.median(per_batch), 3),
            "bytes": total_b, "seconds": round(total_s, 6)}


def fio_points(path: str, size: int, total: int, qds: list[int]) -> dict:
    """fio write (highest QD; it lays the file out) then reads at each QD; GB/s per point."""
    out: dict[str, Any] = {}
    try:
        bc.drop_caches()
        w = bc.run_fio(path, "write", size, max(qds), total, ioengine="io_uring", direct=True)
        out[f"write_qd{max(qds)}"] = round(w["bw_bytes"] / 1e9, 3)
        for qd in qds:
            r = bc.run_fio(path, "read", size, qd, total, ioengine="io_uring", direct=True)
            out[f"read_qd{qd}"] = round(r["bw_bytes"] / 1e9, 3)
        out["command"] = r["command"]
    except (FileNotFoundError, bc.FioError) as e:
        out["error"] = str(e).splitlines()[0]
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
    return out


def run_size(args, size: int, set_pages: int, progress: Progress, failures: list[str]) -> dict:
    """Every measurement for one page size; see the module docstring."""
    sock_dir = tempfile.mkdtemp(prefix="mch", dir=args.sock_dir)
    data_dir = tempfile.mkdtemp(prefix="mch-store-bench-", dir=args.dir)
    bench = None
    slots = None
    out: dict[str, Any] = {"page_size": size, "set_pages": set_pages, "set_bytes": set_pages * size}
    label = bc.fmt_size(size)
    try:
        raw = private_config(size, 2 * set_pages, set_pages, sock_dir, data_dir, mode=args.mode)
        config = load_config(raw)
        out["config"] = {"dram_capacity": config.tiers.dram.capacity, "slab_size": config.tiers.dram.slab_size,
                         "nvme_capacity": config.tiers.nvme.capacity, "region_size": config.tiers.nvme.region_size}
        bc.progress(f"{label}: starting a {config.resolved_mode} store (dram {bc.fmt_size(config.tiers.dram.capacity)}, "
                    f"nvme {bc.fmt_size(config.tiers.nvme.capacity)} in {data_dir})")
        try:
            t0 = time.perf_counter()
            bench = BenchStore(config)
            out["start_s"] = round(time.perf_counter() - t0, 3)
        except MooncakeHiCacheError:
            tail = node_log_tail(config)
            if tail:
                print(f"--- node log ---\n{tail}", file=sys.stderr)
            raise
        keys, depths = make_keys(2 * set_pages)
        slots = PageSlots(size, min(BATCH, set_pages), seed=size)
        slots.register(bench.store)
        a = range(0, set_pages)

        memcpy_runs = [memcpy_baseline(slots, set_pages, reps=max(1, args.passes))]

        def phase_put(name, start, stop):
            r = PhaseResult(name)
            c0 = tier_counters(bench.stats())
            e0 = (bench.stats().get("dram") or {}).get("evictions", 0)
            progress.start(f"{label} {name}", stop - start)
            put_pages(bench.store, slots, keys, depths, start, stop, BATCH, r, progress)
            st = bench.stats()
            r.tier_hits = counters_delta(c0, tier_counters(st))
            r.tier_hits["dram_evictions"] = (st.get("dram") or {}).get("evictions", 0) - e0
            progress.finish(r.pages, bc.gbps(r.bytes, r.seconds), f"  evictions {r.tier_hits['dram_evictions']}")
            if r.errors:
                failures.append(f"{label} {name}: {r.errors} puts failed")
            return r

        def phase_get(name, idx, passes=1, expect_tier=None):
            r = PhaseResult(name)
            c0 = tier_counters(bench.stats())
            progress.start(f"{label} {name}", len(idx) * passes)
            for _ in range(passes):
                get_pages(bench.store, slots, keys, idx, BATCH, r, progress, failures=failures)
            r.tier_hits = counters_delta(c0, tier_counters(bench.stats()))
            progress.finish(r.pages, bc.gbps(r.bytes, r.seconds),
                            f"  dram {r.tier_hits['dram_hits']}, nvme {r.tier_hits['nvme_hits']}, miss {r.tier_hits['misses']}")
            if r.errors or r.misses or r.mismatches:
                failures.append(f"{label} {name}: {r.mismatches} wrong pages, {r.errors} errors, {r.misses} misses")
            if expect_tier and r.tier_hits.get(expect_tier, 0) < r.pages:
                out.setdefault("notes", []).append(
                    f"{name}: only {r.tier_hits.get(expect_tier, 0)} of {r.pages} gets were {expect_tier}")
            return r

        phases = {}
        # Warm-up: the first put into a fresh arena pays its page faults; measure it, then empty
        # DRAM (remove_all) so the timed puts below land in memory the node has touched once.
        phases["put_dram_cold"] = phase_put("put dram, cold arena", set_pages, 2 * set_pages)
        rc = bench.store.remove_all()
        if rc != 0:
            failures.append(f"{label} remove_all returned {rc}")
        phases["put_dram"] = phase_put("put dram", 0, set_pages)
        exists = exists_latency(bench.store, [keys[i] for i in a], BATCH, min_samples=args.exists_calls)
        if exists["found"] != set_pages:
            failures.append(f"{label} exists: found {exists['found']} of {set_pages} keys just written")
        phases["get_dram"] = phase_get("get dram", list(a), args.passes, "dram_hits")
        # memcpy again right after: the machine may be shared, so the baseline is the better of
        # the two medians around the DRAM phases (the harder target).
        memcpy_runs.append(memcpy_baseline(slots, set_pages, reps=max(1, args.passes)))
        out["memcpy"] = dict(max(memcpy_runs, key=lambda m: m["batch_gbps_p50"]),
                             runs_batch_gbps_p50=[m["batch_gbps_p50"] for m in memcpy_runs])
        # Set B fills DRAM again: every put evicts a page of A, which is demoted to NVMe.
        phases["put_demote"] = phase_put("put+demote", set_pages, 2 * set_pages)
        half = max(1, set_pages // 2)
        first, second = list(range(0, half)), list(range(half, set_pages))
        # First half of A from NVMe while DRAM is full: each promotion evicts (demotes) a B page.
        phases["get_nvme_dram_full"] = phase_get("get nvme, dram full", first, 1, "nvme_hits")
        # Drop B: DRAM gets free (already touched) slots, so the second half of A is read from
        # NVMe and promoted without evicting anything: the NVMe read path alone.
        t0 = time.perf_counter()
        bad = sum(1 for i in range(set_pages, 2 * set_pages) if bench.store.remove(keys[i]) not in (0, -704))
        out["remove_b_s"] = round(time.perf_counter() - t0, 3)
        if bad:
            failures.append(f"{label} remove: {bad} removes failed")
        if second:
            phases["get_nvme"] = phase_get("get nvme", second, 1, "nvme_hits")
        # Restart: SIGTERM seals NVMe; the new node's DRAM is empty (and its arena untouched).
        out["restart_s"] = round(bench.restart(), 3)
        slots.register(bench.store)
        phases["get_nvme_restart"] = phase_get("get nvme after restart", first, 1, "nvme_hits")
        final = bench.stats()
        out["phases"] = {k: v.to_dict() for k, v in phases.items()}
        out["exists"] = exists
        out["dram_page_kind"] = (final.get("dram") or {}).get("page_kind")
        out["nvme_io_backend"] = (final.get("nvme") or {}).get("io_backend")
        out["checksum_failures"] = (final.get("nvme") or {}).get("checksum_failures")
    finally:
        close_bench_run(slots, bench, os.path.join(sock_dir, "node.sock"))
        shutil.rmtree(sock_dir, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)

    if not args.skip_fio:
        fio_dir = tempfile.mkdtemp(prefix="mch-store-bench-fio-", dir=args.dir)
        try:
            bc.progress(f"{label}: fio io_uring direct=1 bs={label} qd {','.join(map(str, args.qd_list))}")
            out["fio"] = fio_points(os.path.join(fio_dir, "fio.data"), size, max(set_pages * size, 256 * MiB),
                                    args.qd_list)
        finally:
            shutil.rmtree(fio_dir, ignore_errors=True)
    out["ratios"] = ratios(out)
    return out


def ratios(r: dict) -> dict:
    ph = r.get("phases", {})
    mc = r.get("memcpy", {}).get("batch_gbps_p50")
    fio_reads = [v for k, v in (r.get("fio") or {}).items() if k.startswith("read_qd") and v]
    best_fio = max(fio_reads) if fio_reads else None
    out = {}

    def div(a, b):
        return round(a / b, 3) if a is not None and b else None

    out["put_dram_vs_memcpy"] = div(ph.get("put_dram", {}).get("gbps"), mc)
    out["get_dram_vs_memcpy"] = div(ph.get("get_dram", {}).get("gbps"), mc)
    out["exists_us_p50"] = (r.get("exists") or {}).get("us_p50")
    out["get_nvme_vs_fio"] = div(ph.get("get_nvme", {}).get("gbps"), best_fio)
    out["best_fio_read_gbps"] = best_fio
    out["met"] = {
        "put_dram_vs_memcpy": _ge(out["put_dram_vs_memcpy"], TARGETS["put_dram_vs_memcpy"]),
        "get_dram_vs_memcpy": _ge(out["get_dram_vs_memcpy"], TARGETS["get_dram_vs_memcpy"]),
        "exists_us_p50": None if out["exists_us_p50"] is None else out["exists_us_p50"] < TARGETS["exists_us_p50"],
        "get_nvme_vs_fio": _ge(out["get_nvme_vs_fio"], TARGETS["get_nvme_vs_fio"]),
    }
    return out


def _ge(x, t):
    return None if x is None else x >= t


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _mark(met: Optional[bool]) -> str:
    return "-" if met is None else ("yes" if met else "NO")


def print_report(results: list[dict]) -> None:
    headers = ("size", "operation", "GB/s", "batch ms p50", "batch ms p99", "vs baseline", "target", "met")
    rows = []
    for r in results:
        size = bc.fmt_size(r["page_size"])
        ph, rt, met = r.get("phases", {}), r.get("ratios", {}), r.get("ratios", {}).get("met", {})
        mc = r.get("memcpy", {})
        rows.append((size, "memcpy (1 thread)", bc.fmt_num(mc.get("batch_gbps_p50")), "-", "-", "baseline", "", ""))
        for key, name, ratio, target, m in (
                ("put_dram_cold", "put dram, cold arena", None, "", None),
                ("put_dram", "put dram", "put_dram_vs_memcpy", ">= 70% memcpy", "put_dram_vs_memcpy"),
                ("get_dram", "get dram", "get_dram_vs_memcpy", ">= 70% memcpy", "get_dram_vs_memcpy"),
                ("put_demote", "put+demote to nvme", None, "", None),
                ("get_nvme_dram_full", "get nvme, dram full", None, "", None),
                ("get_nvme", "get nvme", "get_nvme_vs_fio", ">= 85% fio read", "get_nvme_vs_fio"),
                ("get_nvme_restart", "get nvme after restart", None, "", None)):
            p = ph.get(key)
            if not p:
                continue
            rows.append((size, name, bc.fmt_num(p["gbps"]), bc.fmt_num(p["batch_ms_p50"]),
                         bc.fmt_num(p["batch_ms_p99"]), _pct(rt.get(ratio)) if ratio else "", target,
                         _mark(met.get(m)) if m else ""))
        e = r.get("exists")
        if e:
            rows.append((size, f"exists x{e['keys_per_call']} (us)", "-", f"{e['us_p50']} us", f"{e['us_p99']} us",
                         "", "< 100 us p50", _mark(met.get("exists_us_p50"))))
        f = r.get("fio") or {}
        for k, v in f.items():
            if k.startswith(("read_qd", "write_qd")):
                rows.append((size, f"fio {k.replace('_qd', ' qd')}", bc.fmt_num(v), "-", "-",
                             "baseline" if k.startswith("read") else "", "", ""))
        if f.get("error"):
            rows.append((size, "fio", "N/A", "-", "-", f["error"][:40], "", ""))
    bc.print_table(headers, rows)
    for r in results:
        print(f"{bc.fmt_size(r['page_size'])}: restart {r.get('restart_s')} s; dram pages {r.get('dram_page_kind')}; "
              f"nvme {r.get('nvme_io_backend')}; checksum failures {r.get('checksum_failures')}"
              + ("; notes: " + "; ".join(r["notes"]) if r.get("notes") else ""))


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="See the module docstring for what is measured.")
    p.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    p.add_argument("--sizes", help=f"page sizes, comma-separated (default {DEFAULTS['sizes']})")
    p.add_argument("--set-mib", type=int, help=f"MiB per page set; two sets are written (default {DEFAULTS['set_mib']})")
    p.add_argument("--passes", type=int, help=f"passes of get dram and memcpy (default {DEFAULTS['passes']})")
    p.add_argument("--exists-calls", type=int, help=f"timed batch_is_exist calls (default {DEFAULTS['exists_calls']})")
    p.add_argument("--qds", default="16,64", help="fio queue depths (default 16,64)")
    p.add_argument("--dir", default="/var/tmp", help="where the NVMe data file and the fio file go (default /var/tmp)")
    p.add_argument("--sock-dir", default="/tmp", help="where the node's socket directory goes (default /tmp)")
    p.add_argument("--skip-fio", action="store_true", help="no fio baseline")
    p.add_argument("--mode", choices=("node", "in_process"), default="node",
                   help="node (default: a client process through the node) or in_process (tiers in this process)")
    args = p.parse_args(argv)
    bc.apply_preset(args, QUICK if args.quick else DEFAULTS)
    try:
        sizes = bc.parse_size_list(args.sizes)
        args.qd_list = bc.parse_int_list(args.qds)
        if not sizes or not args.qd_list or args.set_mib <= 0 or args.passes <= 0:
            raise ValueError("sizes, qds, --set-mib and --passes must be non-empty / positive")
        os.makedirs(args.dir, exist_ok=True)
    except (ValueError, OSError) as e:
        print(f"store_bench: {e}", file=sys.stderr)
        return 2

    progress = Progress(enabled=True, label_width=30)
    failures: list[str] = []
    results = []
    t0 = time.perf_counter()
    setup_error = None
    for size in sizes:
        set_pages = max(1, args.set_mib * MiB // size)
        try:
            results.append(run_size(args, size, set_pages, progress, failures))
        except MooncakeHiCacheError as e:
            setup_error = f"{bc.fmt_size(size)}: {type(e).__name__}: {e}"
            print(f"store_bench: {setup_error}", file=sys.stderr)
            break
        except Exception as e:  # noqa: BLE001 - report and exit non-zero
            traceback.print_exc()
            setup_error = f"{bc.fmt_size(size)}: {type(e).__name__}: {e}"
            break

    print_report(results)
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    bc.json_line({"bench": "store_node", "mode": args.mode, "ok": not failures and not setup_error,
                  "failures": failures, "setup_error": setup_error, "targets": TARGETS,
                  "batch": BATCH, "results": results, "seconds": round(time.perf_counter() - t0, 1),
                  "machine": bc.machine_info(args.dir)})
    if setup_error:
        return 2
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
