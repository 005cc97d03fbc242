#!/usr/bin/env python3
"""NVMe tier benchmark: mooncake-hicache ``Store`` vs fio vs a naive file-per-page baseline.

For each page size (default 256K, 1M, 4M) and queue depth (default 1, 4, 16, 64) it writes then
reads ``--total-mib`` MiB of pages, on the same file system (``--dir``), with three systems:

* **ours**  -- ``mooncake_hicache.Store`` with ``tiers.nvme.queue_depth = qd``, O_DIRECT, a fresh
  data file per point. Pages are put with ``batch_put_from`` and read back with
  ``batch_get_into`` in batches of 128 keys (what SGLang's HiCache sends), zero-copy from/into
  registered page-aligned buffers. Only the time inside those calls is counted. Every page read
  back is checked against what was written (page index stamped in every 4 KiB block, first and
  last 64 bytes of each page, and one whole page per batch); a mismatch makes the run fail.
* **fio**   -- ``ioengine=io_uring, direct=1``, same block size, iodepth and byte count,
  ``rw=write`` then ``rw=read`` on one file: what the device can do through the same kernel path.
* **naive** -- what SGLang's ``file`` HiCache backend does: one file per page, buffered I/O, one
  page at a time (open/write/close; open/readinto). No fsync (that backend does none), so its
  write figure is mostly page-cache speed. Once per page size (queue depth does not apply).

The page cache is dropped (``sync; echo 3 > /proc/sys/vm/drop_caches``, needs root) before every
read phase, so reads come from the device; without root a note says reads may be cached.

Then a **restart** test: fill a ``--restart-gib`` GiB engine with 1 MiB pages, ``close()``, and time
``Store.from_config`` on the same file (the index rebuild), reporting entries found vs written.

Output: progress lines on stderr; on stdout a table, a restart line, then exactly one line of JSON
starting with ``{"bench": "nvme"`` holding every figure plus machine info. Exit status: 0 when
all is well, 1 when any page came back wrong or an operation failed, 2 for a setup problem.

Examples::

    .venv/bin/python bench/nvme_bench.py                      # default run: ~2 min at 1-2 GB/s, < 4 GB of disk
    .venv/bin/python bench/nvme_bench.py --quick              # smoke test, about 10 seconds
    .venv/bin/python bench/nvme_bench.py --dir /mnt/nvme/bench --total-mib 8192 --restart-gib 16
    .venv/bin/python bench/nvme_bench.py --sizes 1M --qds 1,2,4,8,16,32,64 --skip-naive
"""

from __future__ import annotations

import argparse
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

try:
    import numpy as np
except ImportError:  # pragma: no cover - numpy is in the project's venv
    print("nvme_bench: numpy is required (pip install numpy)", file=sys.stderr)
    sys.exit(2)

KiB, MiB, GiB = bc.KiB, bc.MiB, bc.GiB
BLOCK = 4 * KiB           # stamp granularity; page sizes must be a multiple of it
RECORD_HEADER = 4 * KiB   # on-disk header block per record (docs/architecture.md)
REGION_RESERVE = 64 * KiB # room left per region for its summary and trailer when sizing
SGLANG_BATCH = 128        # keys per batch call, as SGLang's HiCache issues them

QUICK = {"sizes": "256K,1M", "qds": "1,16", "total_mib": 64, "restart_gib": 0.25}
DEFAULTS = {"sizes": "256K,1M,4M", "qds": "1,4,16,64", "total_mib": 1024, "restart_gib": 2.0}


class Failure(Exception):
    """A wrong byte, a failed put/get, or a store error: recorded, and the run exits with 1."""


# ---- page contents -------------------------------------------------------------------------

class Pages:
    """A put buffer and a get buffer of ``slots`` pages of ``size`` bytes each (page-aligned,
    registered once per store), and the content scheme.

    The put buffer is filled with random bytes once. Before page ``i`` is written from slot
    ``i % slots``, the first two 8-byte words of each of its 4 KiB blocks are stamped with ``i``
    and a per-point ``tag``; everything else in the slot never changes. So the expected content of
    page ``i`` is known without keeping it: stamps ``(i, tag)`` in every block, and the put
    buffer's slot ``i % slots`` elsewhere. Stale data (an earlier batch or point) fails the check."""

    def __init__(self, size: int, slots: int, seed: int = 0):
        self.size, self.slots = size, slots
        self.blocks = size // BLOCK
        self.put = bc.AlignedBuffer(size * slots)
        self.get = bc.AlignedBuffer(size * slots)
        self.put_u64 = np.frombuffer(self.put.mm, dtype=np.uint64).reshape(slots, self.blocks, BLOCK // 8)
        self.get_u64 = np.frombuffer(self.get.mm, dtype=np.uint64).reshape(slots, self.blocks, BLOCK // 8)
        self.put_u8 = np.frombuffer(self.put.mm, dtype=np.uint8).reshape(slots, size)
        self.get_u8 = np.frombuffer(self.get.mm, dtype=np.uint8).reshape(slots, size)
        rng = np.random.default_rng(seed)
        self.put_u64[...] = rng.integers(0, 2**63, size=self.put_u64.shape, dtype=np.uint64)
        self.get_u8[...] = 0
        self.pages_checked = 0
        self.full_pages_checked = 0

    def put_ptrs(self, n: int) -> list[int]:
        return [self.put.addr + j * self.size for j in range(n)]

    def get_ptrs(self, n: int) -> list[int]:
        return [self.get.addr + j * self.size for j in range(n)]

    def stamp(self, first: int, n: int, tag: int) -> None:
        """Prepare put slots 0..n-1 for pages first..first+n-1 (requires first % slots == 0)."""
        self.put_u64[:n, :, 0] = np.arange(first, first + n, dtype=np.uint64)[:, None]
        self.put_u64[:n, :, 1] = np.uint64(tag)

    def verify(self, pages: list[int], tag: int, what: str, mode: str, rotate: int = 0) -> None:
        """Check get slot ``j`` holds page ``pages[j]``. ``mode``: "sample" = stamps in every
        block, first and last 64 bytes of every page, and one whole page (``rotate`` picks it);
        "full" = every byte; "none" = nothing. Raises :class:`Failure` naming the first bad byte."""
        if mode == "none" or not pages:
            return
        n = len(pages)
        idx = np.asarray(pages, dtype=np.uint64)
        src = idx % np.uint64(self.slots)
        g = self.get_u64[:n]
        bad = (g[:, :, 0] != idx[:, None]) | (g[:, :, 1] != np.uint64(tag))
        if bad.any():
            j, b = map(int, np.argwhere(bad)[0])
            self._fail(what, pages[j], j, b * BLOCK, tag,
                       f"block stamp is (page {int(g[j, b, 0])}, tag {int(g[j, b, 1]):#x}), "
                       f"expected (page {pages[j]}, tag {tag:#x})")
        gb = self.get_u8[:n]
        # first and last 64 bytes of every page (bytes 0..15 are the stamp, checked above)
        for lo, hi in ((16, 64), (self.size - 64, self.size)):
            exp = self.put_u8[src.astype(np.intp), lo:hi]
            diff = gb[:, lo:hi] != exp
            if diff.any():
                j, off = map(int, np.argwhere(diff)[0])
                self._fail(what, pages[j], j, lo + off, tag,
                           f"byte {lo + off} is {int(gb[j, lo + off]):#04x}, expected {int(exp[j, off]):#04x}")
        whole = range(n) if mode == "full" else [rotate % n]
        for j in whole:
            s = int(src[j])
            diff = g[j, :, 2:] != self.put_u64[s, :, 2:]
            if diff.any():
                b, w = map(int, np.argwhere(diff)[0])
                off = b * BLOCK + (w + 2) * 8
                self._fail(what, pages[j], j, off, tag,
                           f"8 bytes at offset {off} are {int(g[j, b, w + 2]):#018x}, "
                           f"expected {int(self.put_u64[s, b, w + 2]):#018x}")
            self.full_pages_checked += 1
        self.pages_checked += n

    def _fail(self, what: str, page: int, slot: int, offset: int, tag: int, detail: str) -> None:
        raise Failure(f"WRONG BYTES in {what}: page {page} (get slot {slot}), offset {offset}: {detail}")

    def close(self) -> None:
        del self.put_u64, self.get_u64, self.put_u8, self.get_u8
        self.put.close()
        self.get.close()


# ---- helpers -------------------------------------------------------------------------------

def round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def record_bytes(size: int) -> int:
    """Disk bytes one page takes in the engine: header block + value padded to 4 KiB."""
    return RECORD_HEADER + round_up(size, BLOCK)


def engine_capacity(pages: int, size: int, region: int) -> int:
    """Capacity that holds ``pages`` pages with room to spare (nothing evicted): 1.25x their
    bytes plus two regions, and at least enough whole regions for them plus two."""
    per_region = max(1, (region - REGION_RESERVE) // record_bytes(size))
    by_bytes = round_up(int(pages * record_bytes(size) * 1.25), region) + 2 * region
    by_count = (-(-pages // per_region) + 2) * region
    return max(by_bytes, by_count)


def store_config(path: str, capacity: int, region: int, qd: int, backend: str) -> dict:
    return {"tiers": {"nvme": {"path": path, "capacity": capacity, "region_size": region,
                               "queue_depth": qd, "direct_io": True, "io_backend": backend}}}


def error_name(code: int) -> str:
    try:
        from mooncake_hicache import ErrorCode
        return f"{ErrorCode(code).name}({code})"
    except Exception:
        return str(code)


def check_results(results: list[int], expect: Optional[int], what: str, keys: list[str]) -> None:
    """``expect`` None: every result must be 0 (puts); else every result must equal ``expect``
    (bytes read)."""
    want = 0 if expect is None else expect
    for k, r in zip(keys, results):
        if r != want:
            got = error_name(r) if r < 0 else f"{r} bytes"
            raise Failure(f"{what}: key {k!r} returned {got}, expected {want if expect else 0}"
                          f"{' bytes' if expect else ''}")


def summarize(samples: list[dict]) -> dict:
    """One system's figures at one point from ``--repeat`` runs: the first run's record with
    ``write_gbps``/``read_gbps`` replaced by their medians, plus every run's figures under
    ``samples`` (when there was more than one). A run that failed makes the point failed."""
    for smp in samples:
        if "error" in smp:
            return smp
    out = dict(samples[0])
    if len(samples) > 1:
        for k in ("write_gbps", "read_gbps", "write_incl_sync_gbps"):
            vals = [smp[k] for smp in samples if smp.get(k) is not None]
            if vals:
                out[k] = statistics.median(vals)
        timing = ("write_s", "read_s", "sync_s", "write_gbps", "read_gbps", "write_incl_sync_gbps")
        out["samples"] = [{k: smp[k] for k in timing if k in smp} for smp in samples]
        for k in ("write_s", "read_s", "sync_s"):
            out.pop(k, None)  # per run only; the medians above are what the table shows
    return out


def remove_path(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def keys_for(prefix: str, first: int, n: int) -> list[str]:
    # SGLang keys are hex digests of token prefixes; length and shape matter little here.
    return [f"{prefix}-{i:010d}" for i in range(first, first + n)]


# ---- the three systems ---------------------------------------------------------------------

def run_ours(Store: Any, args: argparse.Namespace, pages: Pages, size: int, qd: int, n: int,
             tag: int, workdir: str, state: dict) -> dict:
    """Put then get ``n`` pages through a fresh Store; returns the figures of this point."""
    path = os.path.join(workdir, f"ours-{bc.fmt_size(size)}-qd{qd}.data")
    remove_path(path)
    cap = engine_capacity(n, size, args.region_size)
    store = Store.from_config(store_config(path, cap, args.region_size, qd, args.io_backend))
    try:
        store.register_buffer(pages.put.addr, pages.put.size)
        store.register_buffer(pages.get.addr, pages.get.size)
        st = store.stats()["nvme"]
        state["io_backend"] = st.get("io_backend")
        state["fixed_buffers"] = st.get("fixed_buffers")
        prefix = f"p{tag:x}"
        bc.drop_caches()
        t_write = 0.0
        for first in range(0, n, pages.slots):
            m = min(pages.slots, n - first)
            keys = keys_for(prefix, first, m)
            pages.stamp(first, m, tag)
            ptrs, sizes = pages.put_ptrs(m), [size] * m
            t0 = time.perf_counter()
            res = store.batch_put_from(keys, ptrs, sizes)
            t_write += time.perf_counter() - t0
            check_results(res, None, f"ours {bc.fmt_size(size)} qd{qd} batch_put_from", keys)
        st_w = store.stats()["nvme"]
        if st_w.get("entries") != n or st_w.get("evicted_pages"):
            raise Failure(f"ours {bc.fmt_size(size)} qd{qd}: after writing {n} pages the store holds "
                          f"{st_w.get('entries')} entries ({st_w.get('evicted_pages')} evicted); "
                          f"capacity {bc.fmt_size(cap)} should have held them all")
        bc.drop_caches()
        t_read = 0.0
        for bi, first in enumerate(range(0, n, pages.slots)):
            m = min(pages.slots, n - first)
            keys = keys_for(prefix, first, m)
            ptrs, sizes = pages.get_ptrs(m), [size] * m
            t0 = time.perf_counter()
            res = store.batch_get_into(keys, ptrs, sizes)
            t_read += time.perf_counter() - t0
            check_results(res, size, f"ours {bc.fmt_size(size)} qd{qd} batch_get_into", keys)
            pages.verify(list(range(first, first + m)), tag, f"ours {bc.fmt_size(size)} qd{qd} read",
                         args.verify, rotate=bi * 37)
        st_r = store.stats()["nvme"]
    finally:
        store.close()
        remove_path(path)
    total = n * size
    return {"write_s": t_write, "read_s": t_read,
            "write_gbps": bc.gbps(total, t_write), "read_gbps": bc.gbps(total, t_read),
            "capacity": cap, "checksum_failures": st_r.get("checksum_failures"),
            "io_errors": st_r.get("io_errors")}


def run_fio_point(args: argparse.Namespace, size: int, qd: int, total: int, workdir: str) -> dict:
    path = os.path.join(workdir, f"fio-{bc.fmt_size(size)}-qd{qd}.data")
    remove_path(path)
    try:
        bc.drop_caches()
        w = bc.run_fio(path, "write", size, qd, total, ioengine="io_uring", direct=True)
        bc.drop_caches()
        r = bc.run_fio(path, "read", size, qd, total, ioengine="io_uring", direct=True)
    finally:
        remove_path(path)
    return {"write_gbps": w["bw_bytes"] / 1e9, "read_gbps": r["bw_bytes"] / 1e9,
            "write_clat_mean_us": w["clat_mean_us"], "read_clat_mean_us": r["clat_mean_us"],
            "write_command": w["command"], "read_command": r["command"]}


def run_naive(args: argparse.Namespace, pages: Pages, size: int, n: int, tag: int, workdir: str) -> dict:
    """One file per page, buffered, serial: open/write/close to write; open/readinto to read."""
    d = os.path.join(workdir, f"naive-{bc.fmt_size(size)}")
    remove_path(d)
    os.makedirs(d)
    prefix = f"p{tag:x}"
    try:
        bc.drop_caches()
        t_write = 0.0
        for first in range(0, n, pages.slots):
            m = min(pages.slots, n - first)
            keys = keys_for(prefix, first, m)
            pages.stamp(first, m, tag)
            view = pages.put.view
            t0 = time.perf_counter()
            for j, k in enumerate(keys):
                with open(os.path.join(d, k + ".bin"), "wb") as f:
                    f.write(view[j * size:(j + 1) * size])
            t_write += time.perf_counter() - t0
        t0 = time.perf_counter()
        cache_dropped = bc.drop_caches()  # its sync is timed separately: the backend never syncs
        t_sync = time.perf_counter() - t0
        t_read = 0.0
        for bi, first in enumerate(range(0, n, pages.slots)):
            m = min(pages.slots, n - first)
            keys = keys_for(prefix, first, m)
            view = pages.get.view
            t0 = time.perf_counter()
            got = []
            for j, k in enumerate(keys):
                with open(os.path.join(d, k + ".bin"), "rb", buffering=0) as f:
                    got.append(f.readinto(view[j * size:(j + 1) * size]))
            t_read += time.perf_counter() - t0
            check_results(got, size, f"naive {bc.fmt_size(size)} read", keys)
            pages.verify(list(range(first, first + m)), tag, f"naive {bc.fmt_size(size)} read",
                         args.verify, rotate=bi * 37)
    finally:
        remove_path(d)
    total = n * size
    return {"write_s": t_write, "read_s": t_read, "sync_s": t_sync,
            "write_gbps": bc.gbps(total, t_write), "read_gbps": bc.gbps(total, t_read),
            "write_incl_sync_gbps": bc.gbps(total, t_write + t_sync), "cache_dropped": cache_dropped}


def run_restart(Store: Any, args: argparse.Namespace, workdir: str, state: dict) -> dict:
    """Fill a --restart-gib engine with 1 MiB pages, close it, time the reopen."""
    size, region = 1 * MiB, args.region_size
    cap = max(2 * region, round_up(int(args.restart_gib * GiB), region))
    regions = cap // region
    per_region = (region - REGION_RESERVE) // record_bytes(size)
    n = max(1, (regions - 1) * per_region)  # one region of slack: nothing is reclaimed
    path = os.path.join(workdir, "restart.data")
    remove_path(path)
    cfg = store_config(path, cap, region, max(args.qds), args.io_backend)
    tag = 0x5E5747
    pages = Pages(size, min(SGLANG_BATCH, n), seed=7)
    out: dict = {"capacity": cap, "region_size": region, "page_size": size}
    try:
        bc.progress(f"restart: filling a {bc.fmt_size(cap)} engine with {n} pages of 1M")
        store = Store.from_config(cfg)
        try:
            store.register_buffer(pages.put.addr, pages.put.size)
            t_fill = 0.0
            for first in range(0, n, pages.slots):
                m = min(pages.slots, n - first)
                keys = keys_for("r", first, m)
                pages.stamp(first, m, tag)
                t0 = time.perf_counter()
                res = store.batch_put_from(keys, pages.put_ptrs(m), [size] * m)
                t_fill += time.perf_counter() - t0
                check_results(res, None, "restart fill batch_put_from", keys)
            st = store.stats()["nvme"]
            out.update(pages_written=n, entries_before_close=st.get("entries"),
                       evicted_pages=st.get("evicted_pages"), fill_s=t_fill,
                       fill_gbps=bc.gbps(n * size, t_fill))
            state.setdefault("io_backend", st.get("io_backend"))
            t0 = time.perf_counter()
        finally:
            store.close()
        out["close_s"] = time.perf_counter() - t0
        out["cache_dropped"] = bc.drop_caches()
        bc.progress("restart: reopening (index rebuild)")
        t0 = time.perf_counter()
        store = Store.from_config(cfg)
        out["reopen_s"] = time.perf_counter() - t0
        try:
            st = store.stats()["nvme"]
            out.update(entries_found=st.get("entries"), recovery_seconds=st.get("recovery_seconds"),
                       recovered_entries=st.get("recovered_entries"),
                       recovered_regions_scanned=st.get("recovered_regions_scanned"),
                       index_bytes_per_entry=st.get("index_bytes_per_entry"))
            # read back a spread-out sample after the restart
            store.register_buffer(pages.get.addr, pages.get.size)
            m = min(pages.slots, n)
            sample = sorted({int(x) for x in np.linspace(0, n - 1, m)})
            keys = [f"r-{i:010d}" for i in sample]
            res = store.batch_get_into(keys, pages.get_ptrs(len(sample)), [size] * len(sample))
            check_results(res, size, "restart sample batch_get_into", keys)
            pages.verify(sample, tag, "restart sample read", "full" if args.verify != "none" else "none")
            out["sample_verified"] = len(sample) if args.verify != "none" else 0
        finally:
            store.close()
        if out["entries_found"] != n:
            raise Failure(f"restart: {n} pages written, {out['entries_found']} entries found after reopen")
    finally:
        pages.close()
        if not args.keep:
            remove_path(path)
    return out


# ---- driver --------------------------------------------------------------------------------

def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="nvme_bench.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Write then read pages through mooncake_hicache.Store (NVMe tier), fio (io_uring,\n"
            "direct=1) and a naive one-file-per-page baseline, at several page sizes and queue\n"
            "depths, on the same file system; then time a warm restart. Prints progress to stderr,\n"
            "a table and one JSON line to stdout. Run as root so the page cache can be dropped\n"
            "before reads. Needs the package built (bash scripts/setup.sh) and fio installed\n"
            "(else fio columns say N/A)."),
        epilog=(
            "examples:\n"
            "  .venv/bin/python bench/nvme_bench.py                # default: ~2 min at 1-2 GB/s, < 4 GB of disk\n"
            "  .venv/bin/python bench/nvme_bench.py --quick        # smoke test\n"
            "  .venv/bin/python bench/nvme_bench.py --dir /mnt/nvme/x --total-mib 8192 --restart-gib 16\n"
            "\n"
            "Throughput is in GB/s (10^9 bytes/s); ratio = ours / fio. Disk use at any moment is about\n"
            "1.25 x --total-mib plus --restart-gib. Exit status: 0 ok, 1 wrong bytes or a failed\n"
            "operation, 2 setup problem (package not importable, bad option, not enough disk)."))
    p.add_argument("--sizes", default=None,
                   help=f"page sizes, comma-separated, multiples of 4K (default {DEFAULTS['sizes']})")
    p.add_argument("--qds", default=None,
                   help=f"queue depths, comma-separated, 1..1024 (default {DEFAULTS['qds']})")
    p.add_argument("--total-mib", type=int, default=None,
                   help=f"MiB written and read per (size, qd) point and per system "
                        f"(default {DEFAULTS['total_mib']}; raise it on fast drives so a point lasts >= 1 s)")
    p.add_argument("--dir", default=None,
                   help="directory on the file system to test (default: a fresh temp dir under /var/tmp, "
                        "removed at the end). Files the benchmark creates there are removed unless --keep")
    p.add_argument("--keep", action="store_true",
                   help="keep the temp dir and the restart data file (other files are removed as the run goes)")
    p.add_argument("--io-backend", default="auto", choices=["auto", "io_uring", "threads"],
                   help="tiers.nvme.io_backend for ours (default auto: io_uring when allowed, else threads)")
    p.add_argument("--restart-gib", type=float, default=None,
                   help=f"capacity of the restart test engine in GiB, filled with 1 MiB pages "
                        f"(default {DEFAULTS['restart_gib']:g}; 16 matches the docs' target; 0 skips it)")
    p.add_argument("--region-size", default="64M",
                   help="tiers.nvme.region_size for ours (default 64M; must exceed the largest page + 12K)")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per point and system, median reported (default 1; shared or virtual disks "
                        "vary a lot from run to run: use 3 or more for figures you publish)")
    p.add_argument("--verify", default="sample", choices=["sample", "full", "none"],
                   help="check of pages read back: sample = page stamps in every 4K block, first/last 64 "
                        "bytes of every page, one whole page per batch (default); full = every byte")
    p.add_argument("--skip-fio", action="store_true", help="do not run fio")
    p.add_argument("--skip-naive", action="store_true", help="do not run the file-per-page baseline")
    p.add_argument("--skip-ours", action="store_true",
                   help="do not run the Store (fio and naive only; e.g. before the package is built)")
    p.add_argument("--quick", action="store_true",
                   help="tiny run for smoke tests: --sizes 256K,1M --qds 1,16 --total-mib 64 --restart-gib 0.25 "
                        "(options given explicitly still win)")
    args = p.parse_args(argv)
    bc.apply_preset(args, QUICK if args.quick else DEFAULTS)
    try:
        args.sizes = bc.parse_size_list(args.sizes)
        args.qds = bc.parse_int_list(args.qds)
        args.region_size = bc.parse_size(args.region_size)
    except ValueError as e:
        p.error(str(e))
    if not args.sizes or not args.qds:
        p.error("--sizes and --qds need at least one value each")
    for s in args.sizes:
        if s <= 0 or s % BLOCK:
            p.error(f"page size {s} is not a positive multiple of 4K; use e.g. 256K, 1M, 4M")
        if s + 12 * KiB > args.region_size:
            p.error(f"page size {bc.fmt_size(s)} does not fit a region of {bc.fmt_size(args.region_size)}; "
                    f"raise --region-size")
    for q in args.qds:
        if not 1 <= q <= 1024:
            p.error(f"queue depth {q} is out of range 1..1024")
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if args.total_mib <= 0:
        p.error("--total-mib must be positive")
    if args.restart_gib < 0:
        p.error("--restart-gib must be >= 0")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)

    Store = None
    if not args.skip_ours:
        try:
            from mooncake_hicache import Store  # noqa: F811
        except Exception as e:
            print(f"nvme_bench: cannot import mooncake_hicache ({type(e).__name__}: {e}).\n"
                  f"Build it first (bash scripts/setup.sh) and run with .venv/bin/python, "
                  f"or pass --skip-ours to measure fio and the naive baseline only.", file=sys.stderr)
            return 2

    have_fio = bc.fio_path() is not None
    if not args.skip_fio and not have_fio:
        bc.progress("note: fio is not installed (apt-get install fio); fio columns are N/A")

    made_dir = args.dir is None
    if made_dir:
        workdir = tempfile.mkdtemp(prefix="nvme-bench-", dir="/var/tmp")
    else:
        workdir = os.path.abspath(args.dir)
        os.makedirs(workdir, exist_ok=True)

    total_req = args.total_mib * MiB
    # disk check: the largest point (ours engine file) plus the restart file
    need = max(engine_capacity(max(1, total_req // s), s, args.region_size) for s in args.sizes)
    need += round_up(int(args.restart_gib * GiB), args.region_size) if args.restart_gib else 0
    free = shutil.disk_usage(workdir).free
    if free < need * 1.05:
        print(f"nvme_bench: {workdir} has {bc.fmt_size(free)} free but this run needs about "
              f"{bc.fmt_size(need)}; lower --total-mib / --restart-gib or pick another --dir",
              file=sys.stderr)
        if made_dir:
            remove_path(workdir)
        return 2

    info = bc.machine_info(workdir)
    bc.progress(f"dir {workdir} ({info['fs_type']}), kernel {info['kernel']}, sizes "
                f"{','.join(bc.fmt_size(s) for s in args.sizes)}, qds {','.join(map(str, args.qds))}, "
                f"{args.total_mib} MiB per point")
    cache_dropped = bc.drop_caches()

    state: dict = {}
    rows: list[dict] = []
    naive_rows: list[dict] = []
    errors: list[str] = []
    restart: Optional[dict] = None

    def fail(msg: str) -> None:
        errors.append(msg)
        print(f"\n*** FAILURE: {msg}\n", file=sys.stderr, flush=True)

    try:
        for si, size in enumerate(args.sizes):
            n = max(1, total_req // size)
            total = n * size
            pages = Pages(size, min(SGLANG_BATCH, n), seed=si + 1)
            try:
                naive: Optional[dict] = None
                if not args.skip_naive:
                    bc.progress(f"{bc.fmt_size(size)}: naive file-per-page, {n} pages")
                    try:
                        naive = summarize([run_naive(args, pages, size, n, 0xA0000 + (si << 8) + rep, workdir)
                                           for rep in range(args.repeat)])
                        bc.progress(f"{bc.fmt_size(size)}: naive write {bc.fmt_num(naive['write_gbps'])} GB/s "
                                    f"(buffered; {bc.fmt_num(naive['write_incl_sync_gbps'])} incl. sync), "
                                    f"read {bc.fmt_num(naive['read_gbps'])} GB/s")
                    except Failure as e:
                        fail(str(e))
                    except OSError as e:
                        fail(f"naive {bc.fmt_size(size)}: {e}")
                    naive_rows.append({"size": bc.fmt_size(size), "size_bytes": size, "pages": n,
                                       **(naive or {"error": True})})
                for qi, qd in enumerate(args.qds):
                    row: dict = {"size": bc.fmt_size(size), "size_bytes": size, "qd": qd, "pages": n,
                                 "bytes": total}
                    ours_s: list = []
                    fio_s: list = []
                    for rep in range(args.repeat):
                        tag = (si << 24) | (qi << 16) | (rep << 8) | 0xB0
                        rtxt = f" (run {rep + 1}/{args.repeat})" if args.repeat > 1 else ""
                        point = f"{bc.fmt_size(size)} qd{qd}"
                        if Store is not None and not (ours_s and "error" in ours_s[-1]):
                            bc.progress(f"{point}: ours, {n} pages{rtxt}")
                            try:
                                o = run_ours(Store, args, pages, size, qd, n, tag, workdir, state)
                                bc.progress(f"{point}: ours write {bc.fmt_num(o['write_gbps'])} "
                                            f"GB/s, read {bc.fmt_num(o['read_gbps'])} GB/s")
                            except Failure as e:
                                fail(str(e))
                                o = {"error": str(e)}
                            except Exception as e:  # StoreError, ConfigError, ...
                                fail(f"ours {point}: {type(e).__name__}: {e}")
                                o = {"error": f"{type(e).__name__}: {e}"}
                            ours_s.append(o)
                        if not args.skip_fio and have_fio and not (fio_s and "error" in fio_s[-1]):
                            bc.progress(f"{point}: fio{rtxt}")
                            try:
                                f = run_fio_point(args, size, qd, total, workdir)
                                bc.progress(f"{point}: fio write {bc.fmt_num(f['write_gbps'])} "
                                            f"GB/s, read {bc.fmt_num(f['read_gbps'])} GB/s")
                            except (bc.FioError, OSError) as e:
                                bc.progress(f"{point}: fio failed, marked N/A: {e}")
                                f = {"error": str(e)}
                            fio_s.append(f)
                    if ours_s:
                        row["ours"] = summarize(ours_s)
                    if fio_s:
                        row["fio"] = summarize(fio_s)
                    o, f = row.get("ours") or {}, row.get("fio") or {}
                    for side in ("write", "read"):
                        a, b = o.get(f"{side}_gbps"), f.get(f"{side}_gbps")
                        row[f"{side}_ratio"] = a / b if a is not None and b else None
                    row["naive"] = None if naive is None else {k: naive[k] for k in ("write_gbps", "read_gbps")}
                    rows.append(row)
            finally:
                pages.close()

        if Store is not None and args.restart_gib > 0:
            try:
                restart = run_restart(Store, args, workdir, state)
            except Failure as e:
                fail(str(e))
                restart = {"error": str(e)}
            except Exception as e:
                fail(f"restart: {type(e).__name__}: {e}")
                restart = {"error": f"{type(e).__name__}: {e}"}
    except KeyboardInterrupt:
        errors.append("interrupted")
        print("interrupted", file=sys.stderr)
    finally:
        # each step removed its own files; a --dir given by the user stays
        if made_dir and not args.keep:
            remove_path(workdir)

    # ---- report ----
    headers = ["size", "qd", "ours W", "fio W", "W ratio", "ours R", "fio R", "R ratio", "naive W", "naive R"]
    table = []
    seen_naive = set()
    for r in rows:
        o, f, nv = r.get("ours") or {}, r.get("fio") or {}, r.get("naive")
        show_naive = nv is not None and r["size"] not in seen_naive
        seen_naive.add(r["size"])
        mark = " !" if "error" in o else ""
        table.append([r["size"], r["qd"],
                      bc.fmt_num(o.get("write_gbps")) + mark, bc.fmt_num(f.get("write_gbps")),
                      bc.fmt_num(r["write_ratio"]),
                      bc.fmt_num(o.get("read_gbps")) + mark, bc.fmt_num(f.get("read_gbps")),
                      bc.fmt_num(r["read_ratio"]),
                      bc.fmt_num(nv["write_gbps"]) if show_naive else ("N/A" if nv is None else ""),
                      bc.fmt_num(nv["read_gbps"]) if show_naive else ("N/A" if nv is None else "")])
    print(f"NVMe tier: GB/s (1e9 B/s), {args.total_mib} MiB per point"
          f"{f', median of {args.repeat} runs' if args.repeat > 1 else ''}, dir {workdir} ({info['fs_type']}), "
          f"io_backend {state.get('io_backend', 'N/A')}; ratio = ours / fio")
    bc.print_table(headers, table)
    notes = []
    if naive_rows:
        notes.append("naive = one buffered file per page, serial, no fsync (as SGLang's file backend); "
                     "run once per size")
    if args.skip_fio or not have_fio:
        notes.append("fio: " + ("skipped (--skip-fio)" if args.skip_fio else "not installed (apt-get install fio)"))
    if not cache_dropped:
        notes.append("page cache could not be dropped: reads may be cached (run as root)")
    if any("error" in (r.get("ours") or {}) for r in rows):
        notes.append("! = ours failed at this point (see FAILURE above)")
    for note in notes:
        print(f"  {note}")
    if restart is None:
        print("restart: skipped" + (" (--restart-gib 0)" if args.restart_gib == 0 else ""))
    elif "error" in restart:
        print(f"restart: FAILED: {restart['error']}")
    else:
        print(f"restart: {bc.fmt_size(restart['capacity'])} engine, {restart['pages_written']} pages of 1M "
              f"written ({bc.fmt_num(restart['fill_gbps'])} GB/s); reopen {restart['reopen_s']:.3f} s "
              f"(engine recovery {restart['recovery_seconds']:.3f} s); entries found "
              f"{restart['entries_found']} / {restart['pages_written']} written; "
              f"{restart['sample_verified']} sampled pages verified")

    info["io_backend"] = state.get("io_backend")
    info["fixed_buffers"] = state.get("fixed_buffers")
    info["cache_dropped"] = cache_dropped
    result = {
        "bench": "nvme",
        "ok": not errors,
        "date": info["date"],
        "machine": info,
        "params": {"sizes": [bc.fmt_size(s) for s in args.sizes], "qds": args.qds,
                   "total_mib": args.total_mib, "repeat": args.repeat, "batch": SGLANG_BATCH, "region_size": args.region_size,
                   "io_backend_requested": args.io_backend, "direct_io": True, "verify": args.verify,
                   "restart_gib": args.restart_gib, "skip_fio": args.skip_fio or not have_fio,
                   "skip_naive": args.skip_naive, "skip_ours": args.skip_ours},
        "rows": rows,
        "naive": naive_rows,
        "restart": restart,
        "errors": errors,
    }
    bc.json_line(result)
    if errors:
        print(f"nvme_bench: {len(errors)} failure(s); first: {errors[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        sys.exit(2)
