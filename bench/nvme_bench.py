#!/usr/bin/env python3
"""NVMe tier benchmark: mooncake-hicache ``Store`` vs fio (the limit) vs a naive file-per-page baseline.

For each page size (default 256K, 1M, 4M) and queue depth (default 1, 4, 16, 64) it writes then
reads ``--total-mib`` MiB of pages per sample, on the same file system (``--dir``), with:

* **ours**  -- ``mooncake_hicache.Store`` with ``tiers.nvme.queue_depth = qd``, O_DIRECT, a fresh
  data file per sample. Pages are put with ``batch_put_from`` and read back with
  ``batch_get_into`` in batches of 128 keys (what SGLang's HiCache sends), zero-copy from/into
  registered page-aligned buffers. Only the time inside those calls is counted. Every page read
  back is checked against what was written (page index stamped in every 4 KiB block, first and
  last 64 bytes of each page, and one whole page per batch); a mismatch makes the run fail.
* **fio**   -- the limit: ``ioengine=io_uring, direct=1`` with registered buffers and files (as our
  engine uses, when fio accepts them), same block size, iodepth and byte count, ``rw=write`` then
  ``rw=read`` on a fresh file: what the device does through the same kernel path.
* **naive** -- what SGLang's ``file`` HiCache backend does: one file per page, buffered I/O, one
  page at a time (open/write/close; open/readinto). No fsync (that backend does none), so its
  write figure is mostly page-cache speed. Once per page size (queue depth does not apply).

**Paired ratios.** Per (size, qd) point, ours and fio run alternately in ABBA order (ours, fio,
fio, ours, ...), equal volumes each, until the timed seconds of both reach ``--seconds``
(default 10) over an even number of pairs; each pair gives a write ratio and a read ratio (ours
/ fio, measured back to back), and the table shows the median of the paired ratios with their
min-max. A ratio above 1 against fio is a flaw in the method until explained: see the notes
printed under the table and bench/README.md ("When a ratio exceeds 1").

The page cache is dropped (``sync; echo 3 > /proc/sys/vm/drop_caches``, needs root) before every
write and every read phase of every system, so reads come from the device; without root a note
says reads may be cached.

Then a **restart** test: fill a ``--restart-gib`` GiB engine with 1 MiB pages, ``close()``, and time
``Store.from_config`` on the same file (the index rebuild), reporting entries found vs written.

Output: progress on stderr (a bar per point on a terminal); on stdout a table, notes, a restart
line, then exactly one line of JSON starting with ``{"bench": "nvme"`` holding every sample and
machine info. Exit status: 0 when all is well, 1 when any page came back wrong or an operation
failed, 2 for a setup problem.

Examples::

    .venv/bin/python bench/nvme_bench.py                      # default: 12 points of >= 10 s, ~5 min
    .venv/bin/python bench/nvme_bench.py --quick              # smoke test, about a minute
    .venv/bin/python bench/nvme_bench.py --dir /mnt/nvme/bench --total-mib 8192 --restart-gib 16
    .venv/bin/python bench/nvme_bench.py --sizes 1M --qds 1,2,4,8,16,32,64 --skip-naive
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
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

QUICK = {"sizes": "256K,1M", "qds": "1,16", "total_mib": 64, "restart_gib": 0.25, "seconds": 1.0}
DEFAULTS = {"sizes": "256K,1M,4M", "qds": "1,4,16,64", "total_mib": 1024, "restart_gib": 2.0, "seconds": 10.0}


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
    """fio write then read of ``total`` bytes on a fresh file, caches dropped before each."""
    path = os.path.join(workdir, f"fio-{bc.fmt_size(size)}-qd{qd}.data")
    remove_path(path)
    try:
        bc.drop_caches()
        w = bc.run_fio_limit(path, "write", size, qd, total)
        bc.drop_caches()
        r = bc.run_fio_limit(path, "read", size, qd, total)
    finally:
        remove_path(path)
    return {"write_gbps": w["bw_bytes"] / 1e9, "read_gbps": r["bw_bytes"] / 1e9,
            "write_s": w["seconds"], "read_s": r["seconds"],
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


# ---- points: ours and fio in ABBA pairs ------------------------------------------------------

def nvme_point(Store: Any, args: argparse.Namespace, pages: Pages, size: int, qd: int, n: int, workdir: str,
               state: dict, tags: Any, have_fio: bool, fail: Any) -> dict:
    """One (size, qd) point: ours and fio alternately (ABBA) for ``--seconds``, equal volumes."""
    point = f"{bc.fmt_size(size)} qd{qd}"
    total = n * size
    row: dict = {"size": bc.fmt_size(size), "size_bytes": size, "qd": qd, "pages": n, "bytes": total}
    last: dict = {}

    def ours() -> dict:
        o = last["ours"] = run_ours(Store, args, pages, size, qd, n, next(tags), workdir, state)
        return {"write": o["write_gbps"], "read": o["read_gbps"], "seconds": o["write_s"] + o["read_s"]}

    def fio() -> dict:
        f = last["fio"] = run_fio_point(args, size, qd, total, workdir)
        return {"write": f["write_gbps"], "read": f["read_gbps"], "seconds": f["write_s"] + f["read_s"]}

    use_fio = not args.skip_fio and have_fio
    first, limit = (ours, fio if use_fio else None) if Store is not None else (fio, None)
    row["measured"] = "ours" if Store is not None else "fio"
    row["limit"] = "fio" if Store is not None and use_fio else None
    try:
        try:
            row["paired"] = bc.run_paired(first, limit, ("write", "read"), args.seconds,
                                          f"{point} {row['measured']}" + (" vs fio" if limit else ""))
        except bc.FioError as e:
            bc.progress(f"{point}: fio failed, its columns are N/A: {e}")
            row["fio_error"], row["limit"] = str(e), None
            if Store is not None:
                row["paired"] = bc.run_paired(ours, None, ("write", "read"), args.seconds, f"{point} ours")
    except Failure as e:
        fail(str(e))
        row["error"] = str(e)
    except Exception as e:  # StoreError, ConfigError, ...
        fail(f"ours {point}: {type(e).__name__}: {e}")
        row["error"] = f"{type(e).__name__}: {e}"
    if "ours" in last:
        row["ours_store"] = {k: last["ours"].get(k) for k in ("capacity", "checksum_failures", "io_errors")}
    if "fio" in last:
        row["fio_commands"] = [last["fio"]["write_command"], last["fio"]["read_command"]]
    return row


def naive_point(args: argparse.Namespace, pages: Pages, size: int, n: int, workdir: str, tags: Any,
                fail: Any) -> dict:
    """The file-per-page baseline at one page size, repeated for ``--seconds`` (no limit)."""
    row: dict = {"size": bc.fmt_size(size), "size_bytes": size, "pages": n}

    def naive() -> dict:
        r = run_naive(args, pages, size, n, next(tags), workdir)
        return {"write": r["write_gbps"], "read": r["read_gbps"], "write_incl_sync": r["write_incl_sync_gbps"],
                "seconds": r["write_s"] + r["read_s"]}

    try:
        row["runs"] = bc.run_paired(naive, None, ("write", "read", "write_incl_sync"), args.seconds,
                                    f"{bc.fmt_size(size)} naive file-per-page")
    except Failure as e:
        fail(str(e))
        row["error"] = str(e)
    except OSError as e:
        fail(f"naive {bc.fmt_size(size)}: {e}")
        row["error"] = str(e)
    return row


def report_table(rows: list, naive_rows: list) -> tuple[list, list]:
    """The table's rows, and a note per paired ratio above 1."""
    naive_by_size = {r["size"]: (r.get("runs") or {}) for r in naive_rows}
    table, notes, seen = [], [], set()
    for r in rows:
        p = r.get("paired") or {}
        w, rd = p.get("write") or {}, p.get("read") or {}
        if r.get("measured") == "fio":  # --skip-ours: fio alone in the fio columns
            cells = ["-", bc.fmt_num(w.get("ours_gbps")), "N/A", "-", bc.fmt_num(rd.get("ours_gbps")), "N/A"]
        else:
            mark = " !" if "error" in r else ""
            cells = [bc.fmt_num(w.get("ours_gbps")) + mark, bc.fmt_num(w.get("limit_gbps")), bc.fmt_ratio(w),
                     bc.fmt_num(rd.get("ours_gbps")) + mark, bc.fmt_num(rd.get("limit_gbps")), bc.fmt_ratio(rd)]
        nv = naive_by_size.get(r["size"]) if r["size"] not in seen else None
        seen.add(r["size"])
        table.append([r["size"], r["qd"], *cells, p.get("pairs", 0),
                      bc.fmt_spread(nv.get("write")) if nv else "", bc.fmt_spread(nv.get("read")) if nv else ""])
        for side in ("write", "read"):
            notes += bc.ratio_notes(f"{r['size']} qd{r['qd']} {side}", p.get(side), f"fio {side} qd{r['qd']}")
    return table, notes


def method_notes(args: argparse.Namespace, rows: list, naive_rows: list, cache_dropped: bool,
                 fio_used: bool) -> list[str]:
    notes = ["ours writes and reads a 4 KiB record header with every page (not counted in its GB/s); "
             "fio moves only the page"]
    if fio_used:
        notes.append("fio: io_uring, direct=1" + (", " + " ".join(bc.FIO_URING_EXTRA) if bc._fio_extra_ok else
                                                  ", without registered buffers (refused here)")
                     + "; fresh file per sample, like ours")
    else:
        notes.append("fio: " + ("skipped (--skip-fio)" if args.skip_fio else "not installed (apt-get install fio)"))
    if naive_rows:
        notes.append("naive = one buffered file per page, serial, no fsync (as SGLang's file backend); "
                     "median [min-max] over its runs; no limit applies")
    if not cache_dropped:
        notes.append("page cache could not be dropped (not root): reads may be cached, fio's and ours alike")
    if any("error" in r for r in rows):
        notes.append("! = ours failed at this point (see FAILURE above)")
    return notes


def restart_line(args: argparse.Namespace, restart: Optional[dict]) -> str:
    if restart is None:
        return "restart: skipped" + (" (--restart-gib 0)" if args.restart_gib == 0 else "")
    if "error" in restart:
        return f"restart: FAILED: {restart['error']}"
    return (f"restart: {bc.fmt_size(restart['capacity'])} engine, {restart['pages_written']} pages of 1M "
            f"written ({bc.fmt_num(restart['fill_gbps'])} GB/s); reopen {restart['reopen_s']:.3f} s "
            f"(engine recovery {restart['recovery_seconds']:.3f} s); entries found "
            f"{restart['entries_found']} / {restart['pages_written']} written; "
            f"{restart['sample_verified']} sampled pages verified")


def restart_point(Store: Any, args: argparse.Namespace, workdir: str, state: dict, fail: Any) -> dict:
    try:
        return run_restart(Store, args, workdir, state)
    except Failure as e:
        fail(str(e))
        return {"error": str(e)}
    except Exception as e:
        fail(f"restart: {type(e).__name__}: {e}")
        return {"error": f"{type(e).__name__}: {e}"}


def print_report(args: argparse.Namespace, rows: list, naive_rows: list, restart: Optional[dict], state: dict,
                 info: dict, workdir: str, cache_dropped: bool, fio_used: bool) -> None:
    headers = ["size", "qd", "ours W", "fio W", "W ratio [min-max]", "ours R", "fio R", "R ratio [min-max]",
               "pairs", "naive W", "naive R"]
    table, notes = report_table(rows, naive_rows)
    print(f"NVMe tier: GB/s (1e9 B/s), {args.total_mib} MiB per sample, >= {args.seconds:g} s per point in "
          f"ABBA pairs; dir {workdir} ({info['fs_type']}), io_backend {state.get('io_backend', 'N/A')}, "
          f"fixed buffers {state.get('fixed_buffers', 'N/A')}; ours/fio/naive: median over the samples; "
          f"ratio: median of the paired ours / fio [min-max]")
    bc.print_table(headers, table)
    for note in notes + method_notes(args, rows, naive_rows, cache_dropped, fio_used):
        print(f"  note: {note}")
    print(restart_line(args, restart))


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
            "  .venv/bin/python bench/nvme_bench.py                # default: 12 points of >= 10 s, < 4 GB of disk\n"
            "  .venv/bin/python bench/nvme_bench.py --quick        # smoke test (--seconds 1, small sizes)\n"
            "  .venv/bin/python bench/nvme_bench.py --dir /mnt/nvme/x --total-mib 8192 --restart-gib 16\n"
            "\n"
            "Throughput is in GB/s (10^9 bytes/s); ratio = median of ours / fio over ABBA pairs, [min-max].\n"
            "Disk use at any moment is about\n"
            "1.25 x --total-mib plus --restart-gib. Exit status: 0 ok, 1 wrong bytes or a failed\n"
            "operation, 2 setup problem (package not importable, bad option, not enough disk)."))
    p.add_argument("--sizes", default=None,
                   help=f"page sizes, comma-separated, multiples of 4K (default {DEFAULTS['sizes']})")
    p.add_argument("--qds", default=None,
                   help=f"queue depths, comma-separated, 1..1024 (default {DEFAULTS['qds']})")
    p.add_argument("--total-mib", type=int, default=None,
                   help=f"MiB written and read per sample and per system (default {DEFAULTS['total_mib']}; "
                        f"raise it on fast drives so one sample lasts well over 0.1 s)")
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
    p.add_argument("--seconds", type=float, default=None,
                   help=f"timed seconds per point, ours and fio together, taken in ABBA pairs "
                        f"(default {DEFAULTS['seconds']:g}; at least one ABBA, i.e. two pairs, whatever it says)")
    p.add_argument("--verify", default="sample", choices=["sample", "full", "none"],
                   help="check of pages read back: sample = page stamps in every 4K block, first/last 64 "
                        "bytes of every page, one whole page per batch (default); full = every byte")
    p.add_argument("--skip-fio", action="store_true", help="do not run fio")
    p.add_argument("--skip-naive", action="store_true", help="do not run the file-per-page baseline")
    p.add_argument("--skip-ours", action="store_true",
                   help="do not run the Store (fio and naive only; e.g. before the package is built)")
    p.add_argument("--quick", action="store_true",
                   help="tiny run for smoke tests: --sizes 256K,1M --qds 1,16 --total-mib 64 --restart-gib 0.25 "
                        "--seconds 1 (options given explicitly still win)")
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
    if args.seconds < 0:
        p.error("--seconds must be >= 0")
    if args.total_mib <= 0:
        p.error("--total-mib must be positive")
    if args.restart_gib < 0:
        p.error("--restart-gib must be >= 0")
    return args


def make_workdir(args: argparse.Namespace) -> Optional[str]:
    """``--dir`` (made if missing) or a fresh temp dir; None (after a message, and removing a temp
    dir) when its file system lacks room for the largest point plus the restart file."""
    if args.dir is None:
        workdir = tempfile.mkdtemp(prefix="nvme-bench-", dir="/var/tmp")
    else:
        workdir = os.path.abspath(args.dir)
        os.makedirs(workdir, exist_ok=True)
    total_req = args.total_mib * MiB
    need = max(engine_capacity(max(1, total_req // s), s, args.region_size) for s in args.sizes)
    need += round_up(int(args.restart_gib * GiB), args.region_size) if args.restart_gib else 0
    free = shutil.disk_usage(workdir).free
    if free >= need * 1.05:
        return workdir
    print(f"nvme_bench: {workdir} has {bc.fmt_size(free)} free but this run needs about "
          f"{bc.fmt_size(need)}; lower --total-mib / --restart-gib or pick another --dir", file=sys.stderr)
    if args.dir is None:
        remove_path(workdir)
    return None


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
    workdir = make_workdir(args)
    if workdir is None:
        return 2
    total_req = args.total_mib * MiB

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
    tags = itertools.count(1)

    def fail(msg: str) -> None:
        errors.append(msg)
        print(f"\n*** FAILURE: {msg}\n", file=sys.stderr, flush=True)

    try:
        for si, size in enumerate(args.sizes):
            n = max(1, total_req // size)
            pages = Pages(size, min(SGLANG_BATCH, n), seed=si + 1)
            try:
                if not args.skip_naive:
                    naive_rows.append(naive_point(args, pages, size, n, workdir, tags, fail))
                for qd in args.qds:
                    rows.append(nvme_point(Store, args, pages, size, qd, n, workdir, state, tags, have_fio, fail))
            finally:
                pages.close()

        if Store is not None and args.restart_gib > 0:
            restart = restart_point(Store, args, workdir, state, fail)
    except KeyboardInterrupt:
        errors.append("interrupted")
        print("interrupted", file=sys.stderr)
    finally:
        # each step removed its own files; a --dir given by the user stays
        if made_dir and not args.keep:
            remove_path(workdir)

    # ---- report ----
    print_report(args, rows, naive_rows, restart, state, info, workdir, cache_dropped,
                 fio_used=not args.skip_fio and have_fio)

    info["io_backend"] = state.get("io_backend")
    info["fixed_buffers"] = state.get("fixed_buffers")
    info["cache_dropped"] = cache_dropped
    result = {
        "bench": "nvme",
        "ok": not errors,
        "date": info["date"],
        "machine": info,
        "params": {"sizes": [bc.fmt_size(s) for s in args.sizes], "qds": args.qds,
                   "total_mib": args.total_mib, "seconds": args.seconds, "batch": SGLANG_BATCH, "region_size": args.region_size,
                   "io_backend_requested": args.io_backend, "direct_io": True, "verify": args.verify,
                   "restart_gib": args.restart_gib, "skip_fio": args.skip_fio or not have_fio,
                   "skip_naive": args.skip_naive, "skip_ours": args.skip_ours,
                   "fio_extra": list(bc.FIO_URING_EXTRA) if bc._fio_extra_ok else []},
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
