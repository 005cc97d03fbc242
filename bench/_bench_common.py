"""Shared helpers for the benchmarks in ``bench/`` (not a public API; tqdm is the only
third-party import, and optional).

What is here:

* sizes: :func:`parse_size` ("256K", "1MiB", "4M" -> bytes), :func:`fmt_size`, :func:`gbps`;
* :func:`apply_preset`: fill the options left unset with ``--quick``'s or the default values;
* :func:`progress`: one timestamped line to stderr per step; :class:`Bar`: a tqdm progress bar on
  a terminal, a line per 10 % elsewhere;
* :func:`run_paired`: measure ours and its limit alternately (ABBA) until a time budget is spent,
  and summarize the paired ratios (median, min-max); :func:`fmt_ratio`;
* :class:`AlignedBuffer`: page-aligned anonymous memory (``mmap``) with its raw address, for
  zero-copy store calls and ``O_DIRECT``; :class:`ArenaBuffer`: shared memory of the kind our DRAM
  arena uses (hugetlb or THP memfd), for memcpy limits;
* :func:`drop_caches`: ``sync`` + ``echo 3 > /proc/sys/vm/drop_caches`` when permitted;
* :func:`fio_path`, :func:`fio_version`, :func:`run_fio`: run one fio job, return its figures
  parsed from ``--output-format=json``;
* :func:`fs_type`, :func:`machine_info`: what the figures were measured on;
* :func:`print_table`, :func:`json_line`: the outputs.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import json
import mmap
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Optional, Sequence

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

_T0 = time.monotonic()

# ---- sizes ---------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1,
          "k": KiB, "kb": KiB, "kib": KiB,
          "m": MiB, "mb": MiB, "mib": MiB,
          "g": GiB, "gb": GiB, "gib": GiB,
          "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes in ``text``: a number with an optional binary unit, e.g. ``4096``, ``256K``, ``1M``,
    ``4MiB``, ``0.5G``. Units are powers of two here (K = 1024), as fio reads them."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 4096, 256K, 1M, 4MiB, 2G)")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value != int(value):
        raise ValueError(f"not a whole number of bytes: {text!r}")
    return int(value)


def parse_size_list(text: str) -> list[int]:
    """``"256K,1M,4M"`` -> ``[262144, 1048576, 4194304]``."""
    return [parse_size(part) for part in str(text).split(",") if part.strip()]


def parse_int_list(text: str) -> list[int]:
    """``"1,4,16,64"`` -> ``[1, 4, 16, 64]``."""
    return [int(part) for part in str(text).split(",") if part.strip()]


def fmt_size(n: int) -> str:
    """Short binary form: 262144 -> ``256K``, 1048576 -> ``1M``, 3 << 30 -> ``3G``; other values
    get one decimal (``1.5M``) or stay in bytes."""
    for unit, div in (("T", 1 << 40), ("G", GiB), ("M", MiB), ("K", KiB)):
        if n >= div:
            q = n / div
            return f"{q:.0f}{unit}" if n % div == 0 else f"{q:.1f}{unit}"
    return f"{n}B"


def gbps(nbytes: int, seconds: float) -> Optional[float]:
    """Throughput in GB/s (decimal: 1e9 bytes per second), or None for a zero-length interval."""
    return nbytes / seconds / 1e9 if seconds > 0 else None


def fmt_num(x: Optional[float], digits: int = 2) -> str:
    """A figure for a table cell: ``N/A`` for None."""
    return "N/A" if x is None else f"{x:.{digits}f}"


# ---- options -------------------------------------------------------------------------------

def apply_preset(args: Any, preset: dict) -> None:
    """Set each option named in ``preset`` that the command line left unset (None) on ``args``
    (an ``argparse.Namespace``) to the preset's value; options given explicitly win."""
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)


# ---- progress ------------------------------------------------------------------------------

def progress(msg: str) -> None:
    """One line to stderr, prefixed with the seconds since the script started."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


class Bar:
    """Progress of one step on stderr: a ``tqdm`` bar redrawn in place on a terminal; elsewhere (a
    log, a pipe) one :func:`progress` line per 10 % and one at the end. ``update_to(done, note)``
    moves it to ``done`` of ``total``; ``close(note)`` ends it."""

    def __init__(self, total: float, desc: str, unit: str = "it", line_mode: bool = False):
        self.total, self.desc, self.unit = max(total, 1e-9), desc, unit
        self.done, self._decile = 0.0, -1
        self._t0 = time.monotonic()
        self._bar = None
        if sys.stderr.isatty() and not line_mode:
            try:
                from tqdm import tqdm
                self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                                 leave=True, bar_format="{l_bar}{bar}| {n:.4g}/{total:.4g} " + unit
                                 + " [{elapsed}<{remaining}{postfix}]")
            except ImportError:  # pip install tqdm for a bar; lines meanwhile
                pass

    def update_to(self, done: float, note: str = "") -> None:
        done = min(done, self.total)
        if self._bar is not None:
            self._bar.update(done - self.done)
            if note:
                self._bar.set_postfix_str(note, refresh=False)
        else:
            decile = int(done / self.total * 10)
            if decile != self._decile and done < self.total:
                self._decile = decile
                progress(f"{self.desc} {done:.4g}/{self.total:.4g} {self.unit} "
                         f"{done / self.total * 100:3.0f}% {note}".rstrip())
        self.done = done

    def close(self, note: str = "") -> None:
        if self._bar is not None:
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.close()
        else:
            progress(f"{self.desc} done in {time.monotonic() - self._t0:.1f}s {note}".rstrip())


# ---- paired measurements (ABBA) --------------------------------------------------------------

def run_paired(ours: Callable[[], dict], limit: Optional[Callable[[], dict]], metrics: Sequence[str],
               seconds: float, desc: str, min_pairs: int = 2) -> dict:
    """Measure ``ours`` against ``limit`` alternately, in ABBA order (pair k runs ours first when
    k is even, the limit first when k is odd), until the timed seconds of both sides together
    reach ``seconds`` and the number of pairs is even and at least ``min_pairs``. Each call
    returns ``{metric: GB/s, ..., "seconds": timed seconds}`` for every name in ``metrics``;
    each pair gives one ratio per metric (ours / limit, taken minutes apart at most).

    ``limit`` None repeats ``ours`` alone (a figure with no limit): same budget, no ratios.
    Returns :func:`summarize_pairs` of the samples."""
    samples: list[tuple[dict, Optional[dict]]] = []
    timed = 0.0
    bar = Bar(float(seconds), desc, unit="s")
    try:
        while True:
            k = len(samples)
            if limit is None:
                o, lim = ours(), None
            elif k % 2 == 0:
                o = ours()
                lim = limit()
            else:
                lim = limit()
                o = ours()
            samples.append((o, lim))
            timed += o["seconds"] + (lim["seconds"] if lim else 0.0)
            summary = summarize_pairs(samples, metrics)
            bar.update_to(timed, _bar_note(summary, metrics))
            if timed >= seconds and len(samples) >= min_pairs and (limit is None or len(samples) % 2 == 0):
                break
    finally:
        bar.close()
    return summary


def summarize_pairs(samples: Sequence[tuple[dict, Optional[dict]]], metrics: Sequence[str]) -> dict:
    """``{"pairs", "seconds", metric: {"ours_gbps", "limit_gbps", "ratio", "ratio_min",
    "ratio_max", "ours", "limit", "ratios"}}``: medians over the pairs, and every sample."""
    out: dict = {"pairs": len(samples),
                 "seconds": round(sum(o["seconds"] + (lim["seconds"] if lim else 0.0) for o, lim in samples), 3)}
    for m in metrics:
        ours = [o[m] for o, _ in samples if o.get(m) is not None]
        lims = [lim[m] for _, lim in samples if lim and lim.get(m) is not None]
        ratios = [o[m] / lim[m] for o, lim in samples
                  if lim and o.get(m) is not None and lim.get(m)]
        out[m] = {"ours_gbps": _median(ours), "limit_gbps": _median(lims),
                  "ours_min": min(ours) if ours else None, "ours_max": max(ours) if ours else None,
                  "ratio": _median(ratios), "ratio_min": min(ratios) if ratios else None,
                  "ratio_max": max(ratios) if ratios else None,
                  "ours": [round(x, 4) for x in ours], "limit": [round(x, 4) for x in lims],
                  "ratios": [round(x, 4) for x in ratios]}
    return out


def _median(xs: Sequence[float]) -> Optional[float]:
    return statistics.median(xs) if xs else None


def _bar_note(summary: dict, metrics: Sequence[str]) -> str:
    parts = [f"pairs {summary['pairs']}"]
    for m in metrics:
        r = summary[m]
        if r["ratio"] is not None:
            parts.append(f"{m} {r['ours_gbps']:.2f} GB/s x{r['ratio']:.2f}")
        elif r["ours_gbps"] is not None:
            parts.append(f"{m} {r['ours_gbps']:.2f} GB/s")
    return ", ".join(parts)


def fmt_ratio(r: Optional[dict]) -> str:
    """``0.82 [0.78-0.86]``: the median paired ratio and its range; ``N/A`` without pairs."""
    if not r or r.get("ratio") is None:
        return "N/A"
    return f"{r['ratio']:.2f} [{r['ratio_min']:.2f}-{r['ratio_max']:.2f}]"


def fmt_spread(r: Optional[dict]) -> str:
    """``1.23 [1.10-1.31]``: the median of ours and its range (for figures without a limit)."""
    if not r or r.get("ours_gbps") is None:
        return "N/A"
    if r["ours_min"] == r["ours_max"]:
        return f"{r['ours_gbps']:.2f}"
    return f"{r['ours_gbps']:.2f} [{r['ours_min']:.2f}-{r['ours_max']:.2f}]"


def ratio_notes(label: str, r: Optional[dict], limit: str) -> list[str]:
    """Notes for a paired ratio above 1.0 against a physical limit (see bench/README.md, "When
    a ratio exceeds 1")."""
    if not r or r.get("ratio") is None or r["ratio"] <= 1.0:
        return []
    if r["ratio_min"] <= 1.0:
        return [f"{label}: median ratio {r['ratio']:.2f} > 1 but its pairs span {r['ratio_min']:.2f}-"
                f"{r['ratio_max']:.2f}: within this run's noise around the {limit} limit"]
    return [f"{label}: every pair above 1 ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) against {limit}: "
            f"the limit is not what ours does; see bench/README.md 'When a ratio exceeds 1'"]


# ---- memory --------------------------------------------------------------------------------

class AlignedBuffer:
    """``size`` bytes of anonymous, page-aligned memory (``mmap.mmap(-1, size)``).

    ``addr`` is its raw address (for ``register_buffer`` / zero-copy calls), ``view`` a writable
    ``memoryview`` of it. With numpy, ``numpy.frombuffer(buf.mm, dtype=...)`` gives an array over the
    same memory. Call :meth:`close` (or use ``with``) once every view of it is gone."""

    page_kind = "4k"

    def __init__(self, size: int):
        if size <= 0:
            raise ValueError(f"buffer size must be positive, got {size}")
        self.size = size
        self.mm = self._map(size)
        self._anchor = ctypes.c_char.from_buffer(self.mm)
        self.addr = ctypes.addressof(self._anchor)
        if self.addr % mmap.PAGESIZE:
            raise RuntimeError("mmap returned memory that is not page-aligned")
        self.view = memoryview(self.mm)

    def _map(self, size: int) -> mmap.mmap:
        return mmap.mmap(-1, size)

    def close(self) -> None:
        """Unmap. Views made elsewhere (numpy arrays, slices) must be dropped first."""
        if self.mm is None:
            return
        self.view.release()
        del self._anchor
        try:
            self.mm.close()
        except BufferError:
            pass  # someone still holds a view; the memory goes with the last reference
        self.mm = None

    def __enter__(self) -> "AlignedBuffer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


HUGE_2M = 2 * MiB
MADV_POPULATE_WRITE = 23  # Linux 5.14; not in Python's mmap module before 3.13


def shmem_thp_advisable() -> bool:
    """Whether an madvise(MADV_HUGEPAGE) on shared memory gets huge pages here (the test
    csrc/dram/dram_arena.cpp makes: shmem_enabled is advise, always or within_size)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/shmem_enabled") as f:
            text = f.read()
    except OSError:
        return False
    return any(f"[{m}]" in text for m in ("advise", "always", "within_size"))


class ArenaBuffer(AlignedBuffer):
    """Memory of the kind our DRAM arena is made of (csrc/dram/dram_arena.cpp), so a memcpy limit
    copies into and out of the same kind of pages as the store: ``size`` rounded up to 2 MiB of a
    shared memfd, hugetlb 2 MiB pages when ``hugepages`` and the pool has them, else shmem with
    ``MADV_HUGEPAGE`` when THP applies to shmem, else 4 KiB pages; faulted in up front.
    ``page_kind`` says which (``hugetlb``, ``thp``, ``4k``), as the store's ``stats()`` does."""

    def __init__(self, size: int, hugepages: bool = True):
        self._hugepages = hugepages
        super().__init__((size + HUGE_2M - 1) // HUGE_2M * HUGE_2M)

    def _map(self, size: int) -> mmap.mmap:
        if self._hugepages:
            try:
                fd = os.memfd_create("bench-arena", os.MFD_CLOEXEC | os.MFD_HUGETLB | os.MFD_HUGE_2MB)
            except OSError:
                fd = -1
            if fd >= 0:
                try:
                    os.ftruncate(fd, size)
                    mm = mmap.mmap(fd, size, mmap.MAP_SHARED)  # reserves the hugepages, or fails
                    self.page_kind = "hugetlb"
                    return self._populate(mm)
                except OSError:
                    pass
                finally:
                    os.close(fd)
        fd = os.memfd_create("bench-arena", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED)
        finally:
            os.close(fd)
        if self._hugepages and shmem_thp_advisable():
            try:
                mm.madvise(mmap.MADV_HUGEPAGE)
                self.page_kind = "thp"
            except OSError:
                pass
        return self._populate(mm)

    @staticmethod
    def _populate(mm: mmap.mmap) -> mmap.mmap:
        """Fault every page in now, so no timed copy pays a first touch."""
        try:
            mm.madvise(MADV_POPULATE_WRITE)
        except OSError:  # an older kernel: touch one byte per 4 KiB page
            for off in range(0, len(mm), mmap.PAGESIZE):
                mm[off] = 0
        return mm


# ---- page cache ----------------------------------------------------------------------------

_drop_note_shown = False


def drop_caches() -> bool:
    """Write back dirty pages, then drop the page cache (``echo 3 > /proc/sys/vm/drop_caches``).
    Returns True if the drop was done; False if not permitted (not root, read-only /proc in a
    container), after printing one note that buffered reads may then be served from cache."""
    global _drop_note_shown
    os.sync()  # drop_caches only drops clean pages
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError as e:
        if not _drop_note_shown:
            progress(f"note: cannot drop the page cache ({e.strerror}); buffered reads may be cached "
                     "(run as root for cold-cache reads)")
            _drop_note_shown = True
        return False


def can_drop_caches() -> bool:
    """Whether :func:`drop_caches` can work here (root, and /proc/sys/vm/drop_caches writable)."""
    return os.geteuid() == 0 and os.access("/proc/sys/vm/drop_caches", os.W_OK)


# ---- fio -----------------------------------------------------------------------------------

def fio_path() -> Optional[str]:
    """Path of the ``fio`` binary, or None if it is not installed."""
    return shutil.which("fio")


def fio_version() -> Optional[str]:
    exe = fio_path()
    if not exe:
        return None
    try:
        return subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


class FioError(RuntimeError):
    """fio ran but failed (bad option, io_uring not permitted, I/O error, ...)."""


def fio_command(filename: str, rw: str, bs: int, iodepth: int, size: int,
                ioengine: str = "io_uring", direct: bool = True, extra: Sequence[str] = ()) -> list[str]:
    """The fio command line :func:`run_fio` runs (one job, JSON output)."""
    return [fio_path() or "fio", f"--name={rw}", f"--filename={filename}", f"--rw={rw}",
            f"--bs={bs}", f"--iodepth={iodepth}", f"--size={size}", f"--ioengine={ioengine}",
            f"--direct={1 if direct else 0}", "--numjobs=1", "--group_reporting",
            "--output-format=json", *extra]


def run_fio(filename: str, rw: str, bs: int, iodepth: int, size: int,
            ioengine: str = "io_uring", direct: bool = True, extra: Sequence[str] = (),
            timeout: float = 3600) -> dict:
    """Run one fio job and return ``{"bw_bytes", "iops", "runtime_s", "io_bytes", "clat_mean_us",
    "command"}`` for its read side (``rw`` read/randread) or write side (write/randwrite). Raises :class:`FioError`
    when fio fails or reports an error; FileNotFoundError when fio is not installed."""
    if not fio_path():
        raise FileNotFoundError("fio is not installed (apt-get install fio)")
    cmd = fio_command(filename, rw, bs, iodepth, size, ioengine, direct, extra)
    return _fio_json(cmd, "read" if rw in ("read", "randread") else "write", timeout)


def _fio_json(cmd: list[str], side_name: str, timeout: float) -> dict:
    """Runs a one-job fio command with JSON output; its read or write side (see run_fio)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout
    # fio may print warnings before the JSON document; parse from the first '{'.
    start = out.find("{")
    try:
        doc = json.loads(out[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        doc = None
    if proc.returncode != 0 or doc is None:
        msg = (proc.stderr.strip() or out.strip())[-800:]
        raise FioError(f"fio exited with {proc.returncode}: {msg}\ncommand: {' '.join(cmd)}")
    job = doc["jobs"][0]
    if job.get("error"):
        raise FioError(f"fio job error {job['error']} ({proc.stderr.strip()[-400:]})\ncommand: {' '.join(cmd)}")
    side = job[side_name]
    clat = side.get("clat_ns", {}).get("mean")
    return {
        "bw_bytes": side["bw_bytes"],
        "iops": side.get("iops"),
        "runtime_s": side.get("runtime", 0) / 1000.0,
        "io_bytes": side.get("io_bytes"),
        "clat_mean_us": clat / 1000.0 if clat is not None else None,
        "command": " ".join(cmd),
    }


# fio's io_uring options that match our engine's (registered buffers and files): with them fio is
# the best this kernel path does; a fio or kernel that refuses them runs without (noted once).
FIO_URING_EXTRA = ("--fixedbufs=1", "--registerfiles=1")
_fio_extra_ok: Optional[bool] = None


def run_fio_limit(filename: str, rw: str, bs: int, iodepth: int, size: int) -> dict:
    """:func:`run_fio` with io_uring, ``direct=1`` and :data:`FIO_URING_EXTRA` when accepted;
    adds ``"seconds"``: the bytes over the bandwidth (fio's own runtime is whole milliseconds)."""
    global _fio_extra_ok
    r = None
    if _fio_extra_ok is not False:
        try:
            r = run_fio(filename, rw, bs, iodepth, size, extra=FIO_URING_EXTRA)
            _fio_extra_ok = True
        except FioError as e:
            if _fio_extra_ok is None:
                progress(f"note: fio refused {' '.join(FIO_URING_EXTRA)} ({str(e).splitlines()[0][:120]}); "
                         "running it without registered buffers")
            _fio_extra_ok = False
    if r is None:
        r = run_fio(filename, rw, bs, iodepth, size)
    r["seconds"] = (r["io_bytes"] or size) / r["bw_bytes"] if r["bw_bytes"] else 0.0
    return r


def run_fio_replay(reads: Sequence[tuple[str, int, int]], log_path: str, bs: int, iodepth: int) -> dict:
    """fio replaying exactly ``reads`` ((file, offset, length), in this order) from a version 2
    iolog written to ``log_path``, with io_uring, ``direct=1`` and ``iodepth`` in flight: the
    disk's limit for the same bytes at the same places as ours. Returns :func:`run_fio`'s dict
    plus ``"seconds"``."""
    # fio (3.33) leaves the reads still in flight when the log runs out (up to iodepth of them)
    # out of io_bytes and its rate. The log ends with 2 x iodepth more reads, the first ones of
    # `reads` again (the same kind of read: counting some of them moves no rate), so the reads
    # left out are among those; io_bytes must cover every byte of `reads`, and bw_bytes is the
    # rate of what fio counted.
    files = sorted({f for f, _, _ in reads})
    pad = [reads[i % len(reads)] for i in range(2 * iodepth)] if reads else []
    with open(log_path, "w") as log:
        log.write("fio version 2 iolog\n")
        log.writelines(f"{f} add\n" for f in files)
        log.writelines(f"{f} open\n" for f in files)
        log.writelines(f"{f} read {off} {length}\n" for f, off, length in [*reads, *pad])
    # Registered files need nr_files = open_files, which a replay does not set: buffers only.
    cmd = [fio_path() or "fio", "--name=replay", f"--read_iolog={log_path}", f"--bs={bs}",
           f"--iodepth={iodepth}", "--ioengine=io_uring", "--direct=1", "--numjobs=1",
           "--output-format=json", *(("--fixedbufs=1",) if _fio_extra_ok is not False else ())]
    r = _fio_json(cmd, "read", 3600)
    nbytes = sum(length for _, _, length in reads)
    if not nbytes <= r["io_bytes"] <= nbytes + sum(length for _, _, length in pad):
        raise FioError(f"fio replayed {r['io_bytes']} bytes of {nbytes} (command: {r['command']})")
    r["seconds"] = r["io_bytes"] / r["bw_bytes"] if r["bw_bytes"] else 0.0
    return r


def block_reads(path: str) -> Optional[tuple[int, int]]:
    """(read requests completed, bytes read) so far by the block device holding ``path``
    (/sys/dev/block/MAJ:MIN/stat); None where the kernel does not say. The difference over a
    phase gives its requests' mean size: a read the device splits (its max_segments) shows up
    as more, smaller requests."""
    try:
        dev = os.stat(path).st_dev
        with open(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat") as f:
            fields = f.read().split()
        return int(fields[0]), int(fields[2]) * 512
    except (OSError, ValueError, IndexError):
        return None


# ---- machine -------------------------------------------------------------------------------

def fs_type(path: str) -> Optional[str]:
    """File system type of the mount holding ``path`` (longest matching mount point in
    /proc/mounts), e.g. ``ext4``; None if it cannot be told."""
    try:
        real = os.path.realpath(path)
        best, best_type = "", None
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, best_type = mnt, parts[2]
        return best_type
    except OSError:
        return None


def _cpu_model() -> Optional[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _mem_total_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * KiB
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_info(path: str) -> dict:
    """Kernel, CPU, memory, file system of ``path``, Python, fio version and the date."""
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "kernel": platform.release(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "mem_bytes": _mem_total_bytes(),
        "dir": os.path.realpath(path),
        "fs_type": fs_type(path),
        "python": platform.python_version(),
        "fio": fio_version(),
    }


# ---- output --------------------------------------------------------------------------------

def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], file=None) -> None:
    """A plain-text table: left-aligned first column(s) of text, right-aligned numbers."""
    file = file or sys.stdout
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) for c, w in zip(row, widths)).rstrip()

    print(fmt(cells[0]), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for row in cells[1:]:
        print(fmt(row), file=file)
    file.flush()


def json_line(obj: dict, file=None) -> None:
    """``obj`` as exactly one line of JSON (keys kept in insertion order)."""
    file = file or sys.stdout
    print(json.dumps(obj, separators=(", ", ": "), default=str), file=file)
    file.flush()
