"""The KV-page workload behind ``mooncake-hicache bench`` (the product's main job), and the pieces
``bench/store_bench.py`` reuses.

``run_bench(args)`` does, from this process, what an SGLang rank does to the store:

1. Unless ``--config`` is given, writes a private single-host config into fresh temporary
   directories (Unix socket under ``/tmp``, NVMe data file under ``/var/tmp``), with the DRAM tier
   sized to a quarter of the data, so the workload overflows DRAM into NVMe, and the NVMe tier
   sized to hold all of it. ``Store.from_config`` then starts the node (node mode).
2. **write**: puts ``--pages`` pages of ``--page-size`` bytes in batches of ``--batch`` keys
   (``batch_put_from``), keys being 64-hex sha256 chains as SGLang makes them. Pages that do not
   fit in DRAM are demoted to NVMe.
3. **exists**: ``batch_is_exist`` over every key, batch by batch (repeated until there are at
   least 256 samples); latency per call of ``--batch`` keys, median and p99.
4. **read dram**: reads the last-written pages (the ones DRAM holds).
5. **read nvme**: reads the first-written pages (NVMe only; each hit is promoted to DRAM).
6. **reread**: reads those same pages again (DRAM hits now, if promotion works).

Every page carries a pattern derived from its key (the page number and a tag from the key in
the first 16 bytes of every 4 KiB block, over per-slot random bytes), and every page read is
compared byte for byte with what was written. The exit status is 1 when any page came back
wrong, any put or get failed, or (with the private config, which keeps everything) any page was
missing; 0 otherwise.

Output: a progress bar on stderr (``\\r`` text: phase, pages done/total, GB/s), a summary table on
stdout and one final JSON line ``{"bench": "store", ...}``; ``--json`` prints only the JSON line.
GB/s figures are bytes over the time spent inside the store calls (verification excluded), in
decimal GB.

Cleanup: the node this run started is stopped (SIGTERM to ``stats()["node"]["pid"]``; a node
that was already running on ``--config``'s socket is left alone) and the temporary directories
are removed.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import mmap
import os
import random
import shutil
import signal
import statistics
import struct
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from .config import Config, format_size, load_config, parse_size
from .errors import ConfigError, ErrorCode, StoreError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
STAMP_BLOCK = 4 * KiB         # a stamp (page number, key tag) at the start of every block
NVME_RECORD_HEADER = 4 * KiB  # per-record header on NVMe (docs/architecture.md)
MIN_EXISTS_SAMPLES = 256      # batch_is_exist calls timed, at least
NODE_STOP_TIMEOUT_S = 30.0

_STAMP = struct.Struct("<QQ")
_libc = ctypes.CDLL(None, use_errno=True)
_libc.memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_libc.memcmp.restype = ctypes.c_int


# ---- keys and page contents ------------------------------------------------------------------

def make_keys(n: int, seed: Optional[bytes] = None, chain_len: int = 64) -> tuple[list[str], list[int]]:
    """``n`` keys as SGLang makes them (64-hex sha256 chains, ``key_i = H(key_{i-1} || tokens_i)``),
    in chains of ``chain_len`` pages, and each page's depth (position in its chain). ``seed``
    (default random) makes the keys of one run unique."""
    seed = os.urandom(16) if seed is None else seed
    keys, depths = [], []
    prev = b""
    for i in range(n):
        depth = i % chain_len
        if depth == 0:
            prev = hashlib.sha256(seed + i.to_bytes(8, "little")).digest()
        h = hashlib.sha256(prev + i.to_bytes(8, "little")).digest()
        keys.append(h.hex())
        depths.append(depth)
        prev = h
    return keys, depths


def key_tag(key: str) -> int:
    """64 bits derived from a key, stamped into its pages."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


class Buffer:
    """``size`` bytes of page-aligned anonymous memory with its raw address, touched once so
    page faults do not land in timed calls. ``hugepages``: private memory advised for
    transparent huge pages (2 MiB, physically contiguous where the kernel finds them), as a host
    KV pool backed by huge pages is; otherwise shared 4 KiB pages, as scattered in physical
    memory as the kernel leaves them."""

    def __init__(self, size: int, hugepages: bool = False):
        self.size = size
        if hugepages:
            self.mm = mmap.mmap(-1, max(size, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            self.mm.madvise(mmap.MADV_HUGEPAGE)
        else:
            self.mm = mmap.mmap(-1, max(size, 1))
        self._anchor = ctypes.c_char.from_buffer(self.mm)
        self.addr = ctypes.addressof(self._anchor)

    def close(self) -> None:
        if self.mm is None:
            return
        del self._anchor
        try:
            self.mm.close()
        except BufferError:
            pass
        self.mm = None


class PageSlots:
    """A put buffer and a get buffer of ``slots`` pages of ``page_size`` bytes, and the content
    scheme: page ``i`` is written from and read into slot ``i % slots``. Each put slot holds random
    bytes; before page ``i`` is put, the first 16 bytes of each 4 KiB block of its slot are stamped
    with ``(i, key_tag(key_i))``. The expected content of page ``i`` is therefore its slot's
    random bytes with those stamps, which :meth:`verify` rebuilds and compares with ``memcmp``."""

    def __init__(self, page_size: int, slots: int, seed: int = 0, hugepages: bool = False):
        if page_size < _STAMP.size:
            raise ValueError(f"page size must be at least {_STAMP.size} bytes, got {page_size}")
        self.page_size = page_size
        self.slots = slots
        self.stride = page_size  # pages are packed back to back, as in SGLang's host pool
        total = page_size * slots
        self.put = Buffer(total, hugepages)
        self.get = Buffer(total, hugepages)
        self.scratch = Buffer(page_size)
        rng = random.Random(seed)
        chunk = 16 * MiB
        for off in range(0, total, chunk):
            n = min(chunk, total - off)
            self.put.mm[off:off + n] = rng.randbytes(n)
            self.get.mm[off:off + n] = bytes(n)  # fault the pages in
        self._offsets = range(0, page_size - _STAMP.size + 1, STAMP_BLOCK)

    def slot_addr(self, buf: Buffer, i: int) -> int:
        return buf.addr + (i % self.slots) * self.stride

    def _stamp(self, mm, base: int, index: int, tag: int) -> None:
        pack = _STAMP.pack_into
        for off in self._offsets:
            pack(mm, base + off, index, tag)

    def stamp(self, i: int, key: str) -> None:
        """Prepare put slot ``i % slots`` to hold page ``i`` of ``key``."""
        self._stamp(self.put.mm, (i % self.slots) * self.stride, i, key_tag(key))

    def verify(self, i: int, key: str) -> bool:
        """Whether get slot ``i % slots`` holds exactly page ``i`` of ``key``."""
        ctypes.memmove(self.scratch.addr, self.slot_addr(self.put, i), self.page_size)
        self._stamp(self.scratch.mm, 0, i, key_tag(key))
        return _libc.memcmp(self.slot_addr(self.get, i), self.scratch.addr, self.page_size) == 0

    def register(self, store) -> None:
        store.register_buffer(self.put.addr, self.put.size)
        store.register_buffer(self.get.addr, self.get.size)

    def close(self) -> None:
        for b in (self.put, self.get, self.scratch):
            b.close()


# ---- figures ---------------------------------------------------------------------------------

def percentile(samples: Sequence[float], q: float) -> Optional[float]:
    """The ``q``-th percentile (nearest rank) of ``samples``, or None if there are none."""
    if not samples:
        return None
    s = sorted(samples)
    k = max(0, min(len(s) - 1, int(round(q / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def gbps(nbytes: int, seconds: float) -> Optional[float]:
    return nbytes / seconds / 1e9 if seconds > 0 else None


class Progress:
    """A one-line text progress bar on stderr: ``phase [####....] done/total pages  x.xx GB/s``.
    Redrawn with ``\\r`` at most 10 times a second on a terminal; elsewhere (a log, a pipe) only
    the final line of each phase is printed."""

    WIDTH = 24

    def __init__(self, enabled: bool = True, stream=None, label_width: int = 10):
        self.stream = stream or sys.stderr
        self.label_width = label_width
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last = 0.0
        self.phase, self.total, self.unit = "", 0, "pages"

    def start(self, phase: str, total: int, unit: str = "pages") -> None:
        self.phase, self.total, self.unit = phase, total, unit
        self._last = 0.0
        self.update(0, None)

    def _line(self, done: int, rate: Optional[float], extra: str) -> str:
        frac = done / self.total if self.total else 1.0
        bar = "#" * int(frac * self.WIDTH)
        rate_s = f"{rate:6.2f} GB/s" if rate is not None else " " * 11
        return (f"{self.phase:<{self.label_width}} [{bar:<{self.WIDTH}}] {done:>7}/{self.total:<7} {self.unit}  "
                f"{rate_s}{extra}")

    def update(self, done: int, rate: Optional[float], extra: str = "") -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and done < self.total:
            return
        self._last = now
        print("\r" + self._line(done, rate, extra), end="", file=self.stream, flush=True)

    def finish(self, done: int, rate: Optional[float], extra: str = "") -> None:
        if not self.enabled:
            return
        line = self._line(done, rate, extra)
        print(("\r" if self.tty else "") + line, file=self.stream, flush=True)


@dataclass
class PhaseResult:
    """Figures of one timed phase."""

    name: str
    pages: int = 0
    bytes: int = 0
    seconds: float = 0.0        # inside the store calls
    batch_seconds: list = field(default_factory=list)
    errors: int = 0             # negative codes other than NOT_FOUND (puts: any non-zero)
    misses: int = 0
    mismatches: int = 0
    verified: int = 0
    tier_hits: dict = field(default_factory=dict)  # dram_hits/nvme_hits/misses from stats()

    def to_dict(self) -> dict:
        ms = [s * 1e3 for s in self.batch_seconds]
        out = {"pages": self.pages, "bytes": self.bytes, "seconds": round(self.seconds, 6),
               "gbps": _round(gbps(self.bytes, self.seconds), 3),
               "batch_ms_p50": _round(statistics.median(ms) if ms else None, 3),
               "batch_ms_p99": _round(percentile(ms, 99), 3),
               "errors": self.errors, "misses": self.misses, "mismatches": self.mismatches,
               "verified_pages": self.verified}
        out.update(self.tier_hits)
        return out


def _round(x: Optional[float], digits: int) -> Optional[float]:
    return None if x is None else round(x, digits)


def tier_counters(stats: dict) -> dict:
    t = stats.get("tiering") or {}
    if t:
        return {k: int(t.get(k, 0)) for k in ("dram_hits", "nvme_hits", "misses", "demoted", "promoted",
                                              "direct_reads", "reads_waited_for_write", "demoter_pages")}
    n = stats.get("nvme") or {}  # NVMe-only in-process store
    return {"dram_hits": 0, "nvme_hits": int(n.get("hits", 0)), "misses": int(n.get("misses", 0)),
            "demoted": 0, "promoted": 0}


def counters_delta(before: dict, after: dict) -> dict:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after}


# ---- timed operations ------------------------------------------------------------------------

def put_pages(store, slots: PageSlots, keys: Sequence[str], depths: Optional[Sequence[int]],
              start: int, stop: int, batch: int, result: PhaseResult,
              progress: Optional[Progress] = None) -> None:
    """Put pages ``start..stop-1`` in batches of ``batch`` (one call per batch, timed)."""
    size = slots.page_size
    done = 0
    s = start
    while s < stop:
        idx = range(s, min(stop, s + batch, _slot_boundary(s, slots.slots)))
        s = idx.stop
        for i in idx:
            slots.stamp(i, keys[i])
        ks = [keys[i] for i in idx]
        ptrs = [slots.slot_addr(slots.put, i) for i in idx]
        t0 = time.perf_counter()
        codes = store.batch_put_from(ks, ptrs, [size] * len(ks),
                                     depths=[depths[i] for i in idx] if depths is not None else None)
        dt = time.perf_counter() - t0
        result.batch_seconds.append(dt)
        result.seconds += dt
        result.errors += sum(1 for c in codes if c != 0)
        result.pages += len(ks)
        result.bytes += len(ks) * size
        done += len(ks)
        if progress:
            progress.update(done, gbps(result.bytes, result.seconds))


def get_pages(store, slots: PageSlots, keys: Sequence[str], indexes: Sequence[int], batch: int,
              result: PhaseResult, progress: Optional[Progress] = None, verify: bool = True,
              failures: Optional[list] = None) -> None:
    """Get the pages at ``indexes`` (consecutive runs of them, ``batch`` per call, timed) and
    compare each with its expected bytes."""
    size = slots.page_size
    done = 0
    for idx in _index_batches(indexes, min(batch, slots.slots)):
        ks = [keys[i] for i in idx]
        ptrs = [slots.slot_addr(slots.get, i) for i in idx]
        t0 = time.perf_counter()
        codes = store.batch_get_into(ks, ptrs, [size] * len(ks))
        dt = time.perf_counter() - t0
        result.batch_seconds.append(dt)
        result.seconds += dt
        for i, c in zip(idx, codes):
            if c == size:
                result.bytes += size
                if verify:
                    result.verified += 1
                    if not slots.verify(i, keys[i]):
                        result.mismatches += 1
                        if failures is not None and len(failures) < 10:
                            failures.append(f"{result.name}: page {i} ({keys[i][:16]}...) came back with wrong bytes")
            elif c == ErrorCode.NOT_FOUND:
                result.misses += 1
            else:
                result.errors += 1
                if failures is not None and len(failures) < 10:
                    what = f"{c} bytes instead of {size}" if c >= 0 else ErrorCode.describe(c)
                    failures.append(f"{result.name}: page {i} ({keys[i][:16]}...): {what}")
        result.pages += len(ks)
        done += len(ks)
        if progress:
            progress.update(done, gbps(result.bytes, result.seconds))


class _ExistsTimer:
    """Times ``batch_is_exist`` calls; counts what the first pass found."""

    def __init__(self, store, batch: int, all_full: bool, progress: Optional[Progress]):
        self.store, self.batch, self.all_full, self.progress = store, batch, all_full, progress
        self.samples: list[float] = []
        self.found = self.absent = self.errors = self.calls = 0

    def run(self, groups: Sequence[list], limit: int, first_pass: bool) -> None:
        for g in groups:
            if self.calls >= limit:
                return
            t0 = time.perf_counter()
            codes = self.store.batch_is_exist(g)
            dt = time.perf_counter() - t0
            if len(g) == self.batch or self.all_full:  # a short last batch is not a sample
                self.samples.append(dt)
            if first_pass:
                self.found += sum(1 for c in codes if c > 0)   # a raw NodeClient answers the tier (1 DRAM, 2 NVMe)
                self.absent += sum(1 for c in codes if c == 0)
                self.errors += sum(1 for c in codes if c < 0)
            self.calls += 1
            if self.progress:
                self.progress.update(self.calls, None)


def exists_latency(store, keys: Sequence[str], batch: int, min_samples: int = MIN_EXISTS_SAMPLES,
                   progress: Optional[Progress] = None) -> dict:
    """Time ``batch_is_exist`` over every key, ``batch`` keys per call, repeating passes until
    there are ``min_samples`` calls. Returns calls, keys per call, found (first pass), and the
    median / p99 latency in microseconds."""
    groups = [list(keys[s:s + batch]) for s in range(0, len(keys), batch)]
    full = [g for g in groups if len(g) == batch] or groups
    calls_total = max(len(groups), min_samples)
    if progress:
        progress.start("exists", calls_total, "calls")
    timer = _ExistsTimer(store, batch, len(full) == len(groups), progress)
    timer.run(groups, calls_total, True)
    while timer.calls < calls_total and full:
        timer.run(full, calls_total, False)
    us = [x * 1e6 for x in timer.samples]
    out = {"calls": timer.calls, "keys_per_call": len(full[0]) if full else 0, "found": timer.found,
           "absent": timer.absent, "errors": timer.errors,
           "us_p50": _round(statistics.median(us), 1) if us else None, "us_p99": _round(percentile(us, 99), 1)}
    if progress:
        progress.finish(timer.calls, None, f"  p50 {out['us_p50']} us  p99 {out['us_p99']} us")
    return out


def _slot_boundary(s: int, slots: int) -> int:
    """First index after ``s`` that maps to slot 0 again (keeps one call's slots distinct)."""
    return (s // slots + 1) * slots


def _index_batches(indexes: Sequence[int], batch: int):
    """Split ``indexes`` into calls of at most ``batch`` indexes whose slots are distinct."""
    cur: list[int] = []
    used: set = set()
    for i in indexes:
        slot = i % batch
        if len(cur) >= batch or slot in used:
            yield cur
            cur, used = [], set()
        cur.append(i)
        used.add(slot)
    if cur:
        yield cur


# ---- the private config and the node's lifetime ---------------------------------------------

def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def _pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p <<= 1
    return p


def dram_layout(page_size: int, dram_pages: int) -> tuple[int, int]:
    """``(capacity, slab_size)`` of a DRAM tier that holds ``dram_pages`` pages of ``page_size``
    (values take slots rounded up to 4 KiB; a slab holds up to 32 MiB of slots, fewer when the
    tier is small so it still has several slabs)."""
    slot = _round_up(max(page_size, 1), 4 * KiB)
    per_slab = max(1, min(max(1, (32 * MiB) // slot), -(-dram_pages // 4)))
    slab = per_slab * slot
    slabs = max(1, -(-dram_pages // per_slab))
    return slabs * slab, slab


def nvme_layout(page_size: int, pages: int) -> tuple[int, int]:
    """``(capacity, region_size)`` of an NVMe tier that keeps ``pages`` pages without evicting."""
    record = _round_up(page_size, 4 * KiB) + NVME_RECORD_HEADER
    data = record * pages
    region = min(64 * MiB, _pow2_at_least(max(4 * record + 64 * KiB, data // 8, 1 * MiB)))
    region = max(region, _pow2_at_least(record + 16 * KiB))
    capacity = _round_up(int(data * 1.25) + 4 * region, region)
    return capacity, region


def private_config(page_size: int, pages: int, dram_pages: int, sock_dir: str, nvme_dir: str,
                   mode: str = "node", **dram_overrides: Any) -> dict:
    """A single-host config (DRAM + NVMe) in ``sock_dir``/``nvme_dir`` with room for
    ``dram_pages`` pages in DRAM and all ``pages`` on NVMe; metrics off."""
    dram_cap, slab = dram_layout(page_size, dram_pages)
    nvme_cap, region = nvme_layout(page_size, pages)
    dram = {"capacity": dram_cap, "slab_size": slab, "eviction": "lru", "admission": "always",
            "write_through": False, "hugepages": True}
    dram.update(dram_overrides)
    return {
        "mode": mode,
        "tiers": {
            "dram": dram,
            "nvme": {"path": os.path.join(nvme_dir, "nvme.data"), "capacity": nvme_cap,
                     "region_size": region, "queue_depth": 64, "direct_io": True,
                     "io_backend": "auto", "sync_on_seal": True, "reinsertion": True},
        },
        "node": {"socket": os.path.join(sock_dir, "node.sock"), "timeout_ms": 10000, "autostart": True},
        "metrics": {"port": 0},
        "logging": {"level": "WARNING"},
    }


def node_answers(socket_path: str, timeout_ms: int = 1000) -> bool:
    """Whether a node answers on ``socket_path`` now (False when none or no client support)."""
    from . import _native
    client_cls = getattr(_native, "NodeClient", None)
    if client_cls is None or not os.path.exists(socket_path):
        return False
    try:
        client = client_cls(socket_path, timeout_ms)
    except Exception:
        return False
    try:
        return bool(client.healthy)
    finally:
        try:
            client.close()
        except Exception:
            pass


def _pid_gone(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # our child (the Store started it from here)
        if done == pid:
            return True
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie someone else reaps
    except (OSError, IndexError):
        return True


def stop_node(pid: int, timeout: float = NODE_STOP_TIMEOUT_S) -> bool:
    """SIGTERM the node ``pid`` and wait for it to exit (it seals its NVMe region first);
    SIGKILL after ``timeout`` seconds. Returns True when it exited on SIGTERM."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        _pid_gone(pid)
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _pid_gone(pid):
            return True
        time.sleep(0.02)
    print(f"mooncake-hicache bench: node {pid} did not stop within {timeout:.0f} s of SIGTERM; killing it",
          file=sys.stderr)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for _ in range(100):
        if _pid_gone(pid):
            break
        time.sleep(0.02)
    return False


class BenchStore:
    """A ``Store`` opened for a benchmark, which remembers whether opening it started the node,
    so :meth:`close` stops only a node it started. :meth:`restart` stops that node and opens a
    new store (and node) on the same config: DRAM comes back empty, NVMe comes back warm."""

    def __init__(self, config: Config):
        from .store import Store
        self.config = config
        self.mode = config.resolved_mode
        self.preexisting = self.mode == "node" and node_answers(config.node.socket)
        try:
            self.store = Store.from_config(config)
        except BaseException as e:
            # Drop the half-built Store now (its frames hold it): if its finalizer reconnects or
            # restarts the node, that happens here, where the caller's cleanup still sees it.
            traceback.clear_frames(e.__traceback__)
            gc.collect()
            raise
        self.node_pid: Optional[int] = None
        if self.mode == "node":
            self.node_pid = (self.store.stats().get("node") or {}).get("pid")
            if not self.node_pid and not self.preexisting:
                # stats() names no pid: find the node the store started by its command line.
                pids = node_pids_for(config.node.socket)
                self.node_pid = pids[0] if len(pids) == 1 else None

    def stats(self) -> dict:
        return self.store.stats()

    def close(self) -> None:
        """Close the store, then stop the node if this object started it."""
        if self.store is None:
            return
        pid = self.node_pid
        try:
            self.store.close()
        finally:
            self.store = None
            if pid and not self.preexisting and pid != os.getpid():
                stop_node(pid)

    def restart(self) -> float:
        """Close (stopping our node), reopen; returns the seconds the reopen took."""
        if self.preexisting:
            raise StoreError("cannot restart a node this run did not start")
        self.close()
        t0 = time.perf_counter()
        self.__init__(self.config)
        return time.perf_counter() - t0


def node_pids_for(socket_path: str) -> list[int]:
    """Pids of node processes that ``Store.from_config`` started for ``socket_path`` (their
    command line names the config it wrote, ``<socket>.yaml``). Used to stop the nodes of a
    private temporary socket even when opening the store failed half-way."""
    cfg = socket_path + ".yaml"
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if os.fsencode(cfg) in argv and b"node" in argv and b"mooncake_hicache" in argv:
            pids.append(int(entry))
    return pids


def stop_private_nodes(socket_path: str) -> None:
    """Stop every node started for the private ``socket_path`` (see :func:`node_pids_for`)."""
    for pid in node_pids_for(socket_path):
        if not _pid_gone(pid):
            stop_node(pid)


def close_bench_run(slots: Optional[PageSlots], bench: Optional[BenchStore],
                    private_socket: Optional[str] = None) -> None:
    """The end of a benchmark run (``run_bench``, ``bench/store_bench.py``): close ``slots`` and
    ``bench`` (None where they were not made), then, even if that raised, stop the nodes still
    running for ``private_socket`` (:func:`stop_private_nodes`: a store that failed half-way to
    open may have started one), before the caller removes the run's temporary files."""
    if slots is not None:
        slots.close()
    try:
        if bench is not None:
            bench.close()
    finally:
        if private_socket is not None:
            stop_private_nodes(private_socket)


def node_log_tail(config: Config, lines: int = 20) -> str:
    """The end of the log an auto-started node writes next to its socket ('' if none)."""
    try:
        with open(config.node.socket + ".log", "rb") as f:
            text = f.read()[-16 * KiB:].decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# ---- the bench command -----------------------------------------------------------------------

def _fmt(x: Optional[float], digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@dataclass
class _BenchRun:
    """One ``mooncake-hicache bench`` run: its settings, what it opened, what went wrong."""
    page_size: int
    pages: int
    batch: int
    private: bool
    quiet: bool
    progress: Progress
    temp_dirs: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    bench: Optional[BenchStore] = None
    slots: Optional[PageSlots] = None
    keys: list = field(default_factory=list)
    depths: list = field(default_factory=list)


def _bench_settings(args) -> _BenchRun:
    page_size = parse_size(args.page_size, "--page-size")
    pages, batch = int(args.pages), int(args.batch)
    if page_size < _STAMP.size:
        raise ConfigError("--page-size", f"page size {page_size} is too small; give at least 16 bytes, e.g. 1MiB")
    if pages <= 0:
        raise ConfigError("--pages", f"need at least one page, got {pages}")
    if batch <= 0:
        raise ConfigError("--batch", f"need at least one key per batch, got {batch}")
    return _BenchRun(page_size, pages, batch, private=not getattr(args, "config", None),
                     quiet=bool(getattr(args, "json", False)), progress=Progress(enabled=True))


def _bench_config(run: _BenchRun, args) -> Config:
    """``--config``, or a private single-host config in fresh temporary directories."""
    if not run.private:
        config = load_config(args.config)
    else:
        sock_dir = tempfile.mkdtemp(prefix="mch", dir="/tmp")
        run.temp_dirs.append(sock_dir)
        nvme_dir = tempfile.mkdtemp(prefix="mooncake-hicache-bench-", dir="/var/tmp")
        run.temp_dirs.append(nvme_dir)
        config = load_config(private_config(run.page_size, run.pages, max(1, run.pages // 4), sock_dir, nvme_dir))
    config.require_tier()
    if not run.quiet:
        d, n = config.tiers.dram, config.tiers.nvme
        print(f"mooncake-hicache bench: {run.pages} pages of {format_size(run.page_size)} "
              f"({format_size(run.pages * run.page_size)}), batches of {run.batch}; mode {config.resolved_mode}; "
              f"dram {format_size(d.capacity) if d else 'off'}, nvme {format_size(n.capacity) + ' at ' + n.path if n else 'off'}",
              file=sys.stderr, flush=True)
    return config


def _open_bench(run: _BenchRun, config: Config) -> None:
    try:
        run.bench = BenchStore(config)
    except StoreError:
        tail = node_log_tail(config) if config.resolved_mode == "node" else ""
        if tail:
            print(f"--- node log ({config.node.socket}.log) ---\n{tail}", file=sys.stderr)
        raise
    run.keys, run.depths = make_keys(run.pages)
    run.slots = PageSlots(run.page_size, min(run.batch, run.pages))
    run.slots.register(run.bench.store)


def _write_phase(run: _BenchRun) -> tuple[PhaseResult, dict]:
    write = PhaseResult("write")
    c0 = tier_counters(run.bench.stats())
    run.progress.start("write", run.pages)
    put_pages(run.bench.store, run.slots, run.keys, run.depths, 0, run.pages, run.batch, write, run.progress)
    run.progress.finish(write.pages, gbps(write.bytes, write.seconds))
    after = run.bench.stats()
    write.tier_hits = {k: v for k, v in counters_delta(c0, tier_counters(after)).items() if k in ("demoted",)}
    if write.errors:
        run.failures.append(f"write: {write.errors} of {run.pages} puts failed")
    return write, after


def _exists_phase(run: _BenchRun, written: int) -> dict:
    exists = exists_latency(run.bench.store, run.keys, run.batch, progress=run.progress)
    if exists["errors"]:
        run.failures.append(f"exists: {exists['errors']} keys answered with an error")
    if run.private and exists["found"] != written:
        run.failures.append(f"exists: found {exists['found']} of {written} pages written")
    return exists


def _read_phase(run: _BenchRun, name: str, idx: list) -> PhaseResult:
    r = PhaseResult(name)
    c0 = tier_counters(run.bench.stats())
    run.progress.start(name, len(idx))
    get_pages(run.bench.store, run.slots, run.keys, idx, run.batch, r, run.progress, failures=run.failures)
    r.tier_hits = counters_delta(c0, tier_counters(run.bench.stats()))
    extra = f"  dram {r.tier_hits['dram_hits']}, nvme {r.tier_hits['nvme_hits']}, miss {r.tier_hits['misses']}"
    run.progress.finish(r.pages, gbps(r.bytes, r.seconds), extra)
    if r.errors:
        run.failures.append(f"{name}: {r.errors} gets failed")
    if r.misses and run.private:
        run.failures.append(f"{name}: {r.misses} of {len(idx)} pages missing (the private config keeps every page)")
    return r


def _read_phases(run: _BenchRun, config: Config, after_write: dict) -> list:
    """The last-written pages (DRAM), the first-written (NVMe), those again (promoted)."""
    dram_entries = int((after_write.get("dram") or {}).get("entries", 0))
    n_hot = max(1, min(run.pages, dram_entries or run.pages // 4))
    # Without an NVMe tier the first-written pages are gone: nothing to read from NVMe.
    n_cold = max(0, min(n_hot, run.pages - n_hot)) if config.tiers.nvme is not None else 0
    hot, cold = list(range(run.pages - n_hot, run.pages)), list(range(0, n_cold))
    return [_read_phase(run, name, idx) for name, idx in (("read dram", hot), ("read nvme", cold), ("reread", cold))
            if idx]


def _pick(section: Optional[dict], keys: Sequence[str]) -> Optional[dict]:
    return {k: section.get(k) for k in keys if k in section} if section else None


def _bench_result(run: _BenchRun, args, config: Config, phases: dict, reads: list, final: dict, seconds: float) -> dict:
    mismatches = sum(r.mismatches for r in reads)
    if mismatches:
        run.failures.insert(0, f"{mismatches} pages came back with wrong bytes")
    tiering = final.get("tiering")
    tiers = {
        "dram": _pick(final.get("dram"), ("capacity", "page_kind", "slab_size", "eviction", "entries", "value_bytes",
                                          "evictions")),
        "nvme": _pick(final.get("nvme"), ("io_backend", "direct_io", "capacity", "region_size", "entries",
                                          "value_bytes", "checksum_failures", "io_errors")),
        "tiering": {k: tiering.get(k) for k in ("puts", "gets", "dram_hits", "nvme_hits", "misses", "demoted",
                                                "promoted", "demote_failures")} if tiering else None,
    }
    return {
        "bench": "store", "ok": not run.failures, "mode": config.resolved_mode,
        "config": "private" if run.private else os.path.abspath(args.config),
        "page_size": run.page_size, "pages": run.pages, "batch": run.batch,
        "phases": phases, "tiers": tiers,
        "verified_pages": sum(r.verified for r in reads), "mismatches": mismatches,
        "failures": run.failures, "node_pid": run.bench.node_pid if run.bench else None,
        "seconds": round(seconds, 2),
    }


def run_bench(args) -> int:
    """``mooncake-hicache bench``: see the module docstring. Returns the exit status."""
    t_start = time.perf_counter()
    run = _bench_settings(args)
    try:
        config = _bench_config(run, args)
        _open_bench(run, config)
        write, after_write = _write_phase(run)
        phases = {"write": write.to_dict(), "exists": _exists_phase(run, run.pages - write.errors)}
        reads = _read_phases(run, config, after_write)
        final = run.bench.stats()
    finally:
        # nodes left by a store that failed to open are stopped before their files go
        private_socket = os.path.join(run.temp_dirs[0], "node.sock") if run.private and run.temp_dirs else None
        close_bench_run(run.slots, run.bench, private_socket)
        for d in run.temp_dirs:
            shutil.rmtree(d, ignore_errors=True)
    for r in reads:
        phases[r.name.replace(" ", "_")] = r.to_dict()
    result = _bench_result(run, args, config, phases, reads, final, time.perf_counter() - t_start)
    if not run.quiet:
        print(summary_table(result))
        for f in run.failures:
            print(f"FAILED: {f}", file=sys.stderr)
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0 if result["ok"] else 1


def summary_table(result: dict) -> str:
    """The human-readable summary of a ``run_bench`` result."""
    ph = result["phases"]
    rows = []
    for name in ("write", "read_dram", "read_nvme", "reread"):
        p = ph.get(name)
        if not p:
            continue
        tiers = "-" if name == "write" else f"{p.get('dram_hits', 0)}/{p.get('nvme_hits', 0)}/{p.get('misses', 0)}"
        rows.append((name.replace("_", " "), p["pages"], _fmt(p["bytes"] / GiB, 2), _fmt(p["gbps"]),
                     _fmt(p["batch_ms_p50"]), _fmt(p["batch_ms_p99"]), tiers,
                     "-" if name == "write" else f"{p['verified_pages']}/{p['mismatches']}"))
    out = [_table(("phase", "pages", "GiB", "GB/s", "batch ms p50", "batch ms p99", "hits dram/nvme/miss",
                   "verified/bad"), rows)]
    e = ph["exists"]
    out.append(f"exists: {e['calls']} calls of {e['keys_per_call']} keys: p50 {e['us_p50']} us, "
               f"p99 {e['us_p99']} us; found {e['found']}, absent {e['absent']}")
    t = result["tiers"]
    if t.get("tiering"):
        tg = t["tiering"]
        nv = t.get("nvme")
        out.append(f"tiering: demoted {tg['demoted']}, promoted {tg['promoted']}; "
                   f"dram {(t['dram'] or {}).get('entries')} pages ({(t['dram'] or {}).get('page_kind')} memory pages), "
                   + (f"nvme {nv.get('entries')} pages ({nv.get('io_backend')})" if nv else "nvme off"))
    out.append(f"{'OK' if result['ok'] else 'FAILED'}: {result['verified_pages']} pages verified, "
               f"{result['mismatches']} wrong, {len(result['failures'])} problems; {result['seconds']} s")
    return "\n".join(out)
