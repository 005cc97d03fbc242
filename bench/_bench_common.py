"""Shared helpers for the benchmarks in ``bench/`` (not a public API; no third-party imports).

What is here:

* sizes: :func:`parse_size` ("256K", "1MiB", "4M" -> bytes), :func:`fmt_size`, :func:`gbps`;
* :func:`apply_preset`: fill the options left unset with ``--quick``'s or the default values;
* :func:`progress`: one timestamped line to stderr per step;
* :class:`AlignedBuffer`: page-aligned anonymous memory (``mmap``) with its raw address, for
  zero-copy store calls and ``O_DIRECT``;
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
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

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


# ---- memory --------------------------------------------------------------------------------

class AlignedBuffer:
    """``size`` bytes of anonymous, page-aligned memory (``mmap.mmap(-1, size)``).

    ``addr`` is its raw address (for ``register_buffer`` / zero-copy calls), ``view`` a writable
    ``memoryview`` of it. With numpy, ``numpy.frombuffer(buf.mm, dtype=...)`` gives an array over the
    same memory. Call :meth:`close` (or use ``with``) once every view of it is gone."""

    def __init__(self, size: int):
        if size <= 0:
            raise ValueError(f"buffer size must be positive, got {size}")
        self.size = size
        self.mm = mmap.mmap(-1, size)
        self._anchor = ctypes.c_char.from_buffer(self.mm)
        self.addr = ctypes.addressof(self._anchor)
        if self.addr % mmap.PAGESIZE:
            raise RuntimeError("mmap returned memory that is not page-aligned")
        self.view = memoryview(self.mm)

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
    side = job["read"] if rw in ("read", "randread") else job["write"]
    clat = side.get("clat_ns", {}).get("mean")
    return {
        "bw_bytes": side["bw_bytes"],
        "iops": side.get("iops"),
        "runtime_s": side.get("runtime", 0) / 1000.0,
        "io_bytes": side.get("io_bytes"),
        "clat_mean_us": clat / 1000.0 if clat is not None else None,
        "command": " ".join(cmd),
    }


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
