#!/usr/bin/env python3
"""Store benchmark: a client process talks to the per-host node, in batches of 128 KV pages, each
ratio paired with the limit measured alternately in the same run.

For each page size (default 256K, 1M, 4M) it starts a private node (node mode, Unix socket under
``--sock-dir``, NVMe data file under ``--dir``; DRAM sized to hold one set of ``--set-mib`` MiB,
NVMe to hold two and a half) and measures, from this process, every call timed on its own:

* **put dram, cold arena**  ``batch_put_from`` of a set into the node's fresh arena (the first
  write to each arena page may fault it in; a figure, no limit); ``remove_all`` empties DRAM;
* **put dram**  vs **memcpy in**: ``remove_all`` (untimed), then ``batch_put_from`` of set A into
  empty, already-touched DRAM; the limit copies the same pages from the same client buffer into
  memory of the arena's kind (hugetlb / THP / 4 KiB shared memfd, as csrc/dram/dram_arena.cpp
  makes it: ``ArenaBuffer``), one ``memmove`` per page as the client does;
* **exists**  ``batch_is_exist`` of 128 keys of A (``--exists-calls``), through the Store and
  through the raw ``NodeClient`` (the transport alone): median, p99 (a figure);
* **get dram**  vs **memcpy out**: ``batch_get_into`` of A (DRAM hits), every page verified; the
  limit copies the same bytes out of the arena-kind memory into the client's get buffer;
* **put+demote**  vs **fio write**: ``batch_put_from`` of a fresh set into a full DRAM, so every
  put displaces a page that goes to NVMe (steady state: the NVMe tier is full too and reclaims
  its oldest region as it goes); the limit is fio writing the same bytes at the same block size and
  the store's queue depth. Without a clean reserve each put writes its victim inside the call;
  with one, most of those writes happen in the background demoter (``put_demote_counters``:
  ``demoted`` inside puts, ``demoter_pages`` in the background), so the row can exceed fio write;
* **get nvme, dram full**  vs **fio read**: per sample, a fresh set X is put and pushed to NVMe
  by a second set Y, so DRAM is full of pages of Y that were never demoted (write-through off);
  the page cache is dropped and the first half of X is read: each NVMe hit either takes a clean
  slot (the clean reserve: ``tiers.dram.clean_reserve``, ``--clean-reserve``) or is read straight
  into the caller's buffer; without a reserve each promotion first writes a page of Y (issue 15).
  X and Y are removed. Paired with fio making the same reads after the same set-up (X and Y
  put, the page cache dropped): through the node fio replays them exactly (an iolog of the
  values' offsets and lengths in the node's data file, found with GET_LOCATE and released:
  the same bytes at the same places, at the store's queue depth); in-process it reads as many
  bytes of its own file. A virtual disk reads slower for a while after a burst of writes, so
  the limit meets the disk in the state ours does;
* **get nvme**  vs **fio read**: per sample, X pushed to NVMe by Y as above; Y is removed, which
  frees DRAM; the page cache is dropped; the second half of X is read, each page promoted into a
  free slot: the NVMe read path alone; X is removed. Paired with fio making the same reads
  after the same set-up, as above;
* **get nvme after restart**  (a figure) the node is restarted (SIGTERM seals NVMe; DRAM comes
  back empty) and a set that was pushed to NVMe is read back.

**Pairing.** Each paired point alternates ours and its limit in ABBA order (ours, limit, limit,
ours, ...) with equal volumes, until the timed seconds of both reach ``--seconds`` (default 10)
over an even number of pairs; the table shows the median of the paired ratios with their
min-max. A figure without a limit repeats ours alone for the same budget (median [min-max]).
The page cache is dropped before every read phase (ours and fio's; needs root, else a note).

Targets (reported, not asserted): put dram and get dram >= 70% of memcpy; exists of 128 keys
< 100 us median; get nvme (with DRAM free, and with DRAM full) >= 85% of fio read.

**Mixed load** (``--mixed``, bench/store_mixed.py): one thread puts fresh pages at full speed
while this one reads NVMe hits; read GB/s and batch p99 with the putter running, paired (ABBA)
with the same reads without it, once with the clean reserve and once without (``clean_reserve:
0``). Target: reads with the putter within 20% of reads alone. Every page read is compared byte for byte with what
was written; the exit status is 1 if any page came back wrong or any call failed, 2 for a setup
problem, 0 otherwise (whether or not targets are met).

GB/s are decimal (1e9 bytes/s) over the time inside the store calls (verification excluded).
Output: progress on stderr (a bar per point on a terminal), a table on stdout, then one line of
JSON ``{"bench": "store_node", ...}``.

Examples::

    .venv/bin/python bench/store_bench.py                 # default: 256K, 1M, 4M pages, 1 GiB sets, >= 10 s per point
    .venv/bin/python bench/store_bench.py --quick         # smoke test: 1M pages, 128 MiB sets, --seconds 1
    .venv/bin/python bench/store_bench.py --sizes 1M --set-mib 4096 --dir /mnt/nvme
    .venv/bin/python bench/store_bench.py --sizes 1M,4M --clean-reserve 0     # no clean reserve
    .venv/bin/python bench/store_bench.py --mixed --sizes 1M,4M               # put storm + NVMe reads
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import sys
import tempfile
import time
import traceback
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench_common as bc  # noqa: E402

from mooncake_hicache import load_config  # noqa: E402
from mooncake_hicache.errors import ErrorCode, MooncakeHiCacheError  # noqa: E402
from mooncake_hicache.bench_command import (  # noqa: E402
    BenchStore, PageSlots, PhaseResult, close_bench_run, counters_delta, exists_latency, get_pages,
    make_keys, node_log_tail, private_config, put_pages, tier_counters)

KiB, MiB, GiB = bc.KiB, bc.MiB, bc.GiB
BATCH = 128  # keys per call, SGLang's STORAGE_BATCH_SIZE
NVME_SETS = 2.5  # the NVMe tier holds this many sets (so a set pushed there survives a sample)

TARGETS = {"put_dram_vs_memcpy": 0.70, "get_dram_vs_memcpy": 0.70, "exists_us_p50": 100.0,
           "get_nvme_vs_fio": 0.85, "get_nvme_dram_full_vs_fio": 0.85}
QUICK = {"sizes": "1M", "set_mib": 128, "exists_calls": 200, "seconds": 1.0}
DEFAULTS = {"sizes": "256K,1M,4M", "set_mib": 1024, "exists_calls": 1000, "seconds": 10.0}

# (key, label, limit, target key): the rows of the report, in order
POINTS = [("put_dram_cold", "put dram, cold arena", None, None),
          ("put_dram", "put dram", "memcpy in", "put_dram_vs_memcpy"),
          ("get_dram", "get dram", "memcpy out", "get_dram_vs_memcpy"),
          ("put_demote", "put+demote to nvme", "fio write", None),
          ("get_nvme_dram_full", "get nvme, dram full", "fio read", "get_nvme_dram_full_vs_fio"),
          ("get_nvme", "get nvme", "fio read", "get_nvme_vs_fio"),
          ("get_nvme_restart", "get nvme after restart", None, None)]


class RawExists:
    """``batch_is_exist`` straight on a ``NodeClient`` (the transport without the Store layer)."""

    def __init__(self, socket_path: str):
        from mooncake_hicache import _native
        self.client = _native.NodeClient(socket_path, 5000)

    def batch_is_exist(self, keys):
        return self.client.batch_exists(list(keys))

    def close(self) -> None:
        self.client.close()


class SizeBench:
    """Every measurement for one page size, against one private node (see the module docstring)."""

    nvme_sets = NVME_SETS  # the NVMe tier holds this many sets
    points = POINTS

    def __init__(self, args, size: int, set_pages: int, failures: list[str]):
        self.args, self.size, self.set_pages, self.failures = args, size, set_pages, failures
        self.label = bc.fmt_size(size)
        self.set_bytes = set_pages * size
        self.half = max(1, set_pages // 2)
        self.sock_dir = tempfile.mkdtemp(prefix="mch", dir=args.sock_dir)
        self.data_dir = tempfile.mkdtemp(prefix="mch-store-bench-", dir=args.dir)
        self.fio_path = os.path.join(self.data_dir, "fio.data")
        self.bench: Optional[BenchStore] = None
        self.slots: Optional[PageSlots] = None
        self.arena: Optional[bc.ArenaBuffer] = None
        self.out: dict[str, Any] = {"page_size": size, "set_pages": set_pages, "set_bytes": self.set_bytes,
                                    "points": {}, "notes": []}
        self.phase: dict[str, PhaseResult] = {}

    # ---- lifetime ----

    def start(self) -> None:
        dram = {} if self.args.clean_reserve is None else {"clean_reserve": self.args.clean_reserve}
        raw = private_config(self.size, int(self.nvme_sets * self.set_pages), self.set_pages, self.sock_dir,
                             self.data_dir, mode=self.args.mode, **dram)
        self.config = config = load_config(raw)
        self.fio_qd = self.args.fio_qd or config.tiers.nvme.queue_depth
        self.out["config"] = {"dram_capacity": config.tiers.dram.capacity, "slab_size": config.tiers.dram.slab_size,
                              "nvme_capacity": config.tiers.nvme.capacity, "region_size": config.tiers.nvme.region_size,
                              "nvme_queue_depth": config.tiers.nvme.queue_depth, "hugepages": config.tiers.dram.hugepages,
                              "clean_reserve": config.tiers.dram.clean_reserve}
        bc.progress(f"{self.label}: starting a {config.resolved_mode} store (dram {bc.fmt_size(config.tiers.dram.capacity)}, "
                    f"nvme {bc.fmt_size(config.tiers.nvme.capacity)} in {self.data_dir})")
        try:
            t0 = time.perf_counter()
            self.bench = BenchStore(config)
            self.out["start_s"] = round(time.perf_counter() - t0, 3)
        except MooncakeHiCacheError:
            tail = node_log_tail(config)
            if tail:
                print(f"--- node log ---\n{tail}", file=sys.stderr)
            raise
        self.slots = PageSlots(self.size, min(BATCH, self.set_pages), seed=self.size,
                               hugepages=self.args.client_hugepages)
        self.slots.register(self.bench.store)
        self.arena = bc.ArenaBuffer(self.set_bytes, hugepages=config.tiers.dram.hugepages)

    def close(self) -> None:
        if self.arena is not None:
            self.arena.close()
        try:
            close_bench_run(self.slots, self.bench, os.path.join(self.sock_dir, "node.sock"))
        finally:
            shutil.rmtree(self.sock_dir, ignore_errors=True)
            shutil.rmtree(self.data_dir, ignore_errors=True)

    @property
    def store(self):
        return self.bench.store

    # ---- building blocks ----

    def fresh_set(self) -> tuple[list[str], list[int]]:
        return make_keys(self.set_pages)

    def result(self, key: str) -> PhaseResult:
        return self.phase.setdefault(key, PhaseResult(key))

    def count_tiers(self, r: PhaseResult, before: dict) -> None:
        """Add the node's tier counters since ``before`` (hits per tier, demotions) to ``r``."""
        for k, v in counters_delta(before, tier_counters(self.bench.stats())).items():
            r.tier_hits[k] = r.tier_hits.get(k, 0) + v

    def timed_put(self, key: str, keys, depths) -> dict:
        """Put a whole set; one sample of point ``key`` (its batches accumulate there)."""
        r = self.result(key)
        b0, s0, e0 = r.bytes, r.seconds, r.errors
        c0 = tier_counters(self.bench.stats())
        put_pages(self.store, self.slots, keys, depths, 0, len(keys), BATCH, r)
        self.count_tiers(r, c0)
        if r.errors > e0:
            self.failures.append(f"{self.label} {key}: {r.errors - e0} puts failed")
        return {"gbps": bc.gbps(r.bytes - b0, r.seconds - s0), "seconds": r.seconds - s0}

    def timed_get(self, key: str, keys, indexes) -> dict:
        """Get ``indexes`` of a set, every page verified; one sample of point ``key``."""
        r = self.result(key)
        b0, s0 = r.bytes, r.seconds
        bad0 = r.errors + r.misses + r.mismatches
        c0 = tier_counters(self.bench.stats())
        get_pages(self.store, self.slots, keys, indexes, BATCH, r, failures=self.failures)
        self.count_tiers(r, c0)
        if r.errors + r.misses + r.mismatches > bad0:
            self.failures.append(f"{self.label} {key}: {r.mismatches} wrong pages, {r.errors} errors, "
                                 f"{r.misses} misses so far")
        return {"gbps": bc.gbps(r.bytes - b0, r.seconds - s0), "seconds": r.seconds - s0}

    def put_untimed(self, keys, depths) -> None:
        codes = []
        for s in range(0, len(keys), self.slots.slots):
            idx = range(s, min(len(keys), s + self.slots.slots))
            for i in idx:
                self.slots.stamp(i, keys[i])
            codes += self.store.batch_put_from([keys[i] for i in idx], [self.slots.slot_addr(self.slots.put, i) for i in idx],
                                               [self.size] * len(idx), depths=[depths[i] for i in idx])
        if any(codes):
            self.failures.append(f"{self.label}: {sum(1 for c in codes if c)} untimed puts failed")

    def remove_keys(self, keys) -> None:
        bad = sum(1 for k in keys if self.store.remove(k) not in (0, ErrorCode.NOT_FOUND))
        if bad:
            self.failures.append(f"{self.label} remove: {bad} removes failed")

    def remove_all(self) -> None:
        rc = self.store.remove_all()
        if rc != 0:
            self.failures.append(f"{self.label} remove_all returned {rc}")

    def memcpy(self, into_arena: bool) -> dict:
        """The memcpy limit: the set's pages between the client's slots and arena-kind memory,
        one ``memmove`` per page (as the client copies), timed per batch of 128 like ours."""
        size, slots, move, t = self.size, self.slots, ctypes.memmove, 0.0
        buf = slots.put if into_arena else slots.get
        for s in range(0, self.set_pages, slots.slots):
            pairs = [(self.arena.addr + i * size, slots.slot_addr(buf, i))
                     for i in range(s, min(self.set_pages, s + slots.slots))]
            t0 = time.perf_counter()
            if into_arena:
                for dst, src in pairs:
                    move(dst, src, size)
            else:
                for src, dst in pairs:
                    move(dst, src, size)
            t += time.perf_counter() - t0
        return {"gbps": bc.gbps(self.set_bytes, t), "seconds": t}

    def fio(self, rw: str, nbytes: int) -> dict:
        bc.drop_caches()
        r = bc.run_fio_limit(self.fio_path, rw, self.size, self.fio_qd, nbytes)
        self.out.setdefault("fio_commands", {})[rw] = r["command"]
        return {"gbps": r["bw_bytes"] / 1e9, "seconds": r["seconds"]}

    def point(self, key: str, ours, limit=None) -> None:
        """Run point ``key`` (of self.points): ours against its limit in ABBA pairs, or ours alone."""
        _, name, lim, _ = next(p for p in self.points if p[0] == key)
        if limit is not None and self.args.skip_fio and lim.startswith("fio"):
            limit = None
        desc = f"{self.label} {name}" + (f" vs {lim}" if limit else "")
        summary = bc.run_paired(ours, limit, ("gbps",), self.args.seconds, desc)
        self.out["points"][key] = dict(summary["gbps"], pairs=summary["pairs"], limit=lim if limit else None)

    def single(self, key: str, *samples: dict) -> None:
        """Record point ``key`` from samples taken elsewhere (no limit)."""
        summary = bc.summarize_pairs([(smp, None) for smp in samples], ("gbps",))
        self.out["points"][key] = dict(summary["gbps"], pairs=summary["pairs"], limit=None)

    # ---- the points ----

    def run(self) -> dict:
        a_keys, a_depths = self.fresh_set()
        # the first touch of the arena happens once: one sample
        self.single("put_dram_cold", self.timed_put("put_dram_cold", *self.fresh_set()))
        self.remove_all()

        def put_a():
            self.remove_all()
            return self.timed_put("put_dram", a_keys, a_depths)

        self.point("put_dram", put_a, lambda: self.memcpy(into_arena=True))
        self.measure_exists(a_keys)
        self.point("get_dram", lambda: self.timed_get("get_dram", a_keys, range(self.set_pages)),
                   lambda: self.memcpy(into_arena=False))
        c0 = tier_counters(self.bench.stats())
        self.point("put_demote", lambda: self.timed_put("put_demote", *self.fresh_set()),
                   lambda: self.fio("write", self.set_bytes))
        self.out["put_demote_counters"] = counters_delta(c0, tier_counters(self.bench.stats()))
        self.remove_all()
        c0 = tier_counters(self.bench.stats())
        self.point("get_nvme_dram_full", self.dram_full_sample, self.dram_full_limit)
        self.out["get_nvme_dram_full_counters"] = counters_delta(c0, tier_counters(self.bench.stats()))
        c0 = tier_counters(self.bench.stats())
        self.point("get_nvme", self.get_nvme_sample, self.get_nvme_limit)
        self.out["get_nvme_counters"] = counters_delta(c0, tier_counters(self.bench.stats()))
        self.after_restart()
        self.finish()
        return self.out

    def nvme_resident_set(self) -> tuple[list[str], list[str]]:
        """A fresh set X pushed to NVMe by a second set Y (DRAM full of Y, never demoted):
        returns (X's keys, Y's keys)."""
        x, xd = self.fresh_set()
        y, yd = self.fresh_set()
        self.put_untimed(x, xd)
        self.put_untimed(y, yd)
        return x, y

    def dram_full_sample(self) -> dict:
        """The first half of X read with DRAM full of Y (the sample); then X and Y are removed."""
        x, y = self.nvme_resident_set()
        bc.drop_caches()
        sample = self.counting_blocks("get_nvme_dram_full", "ours",
                                      lambda: self.timed_get("get_nvme_dram_full", x, range(self.half)))
        self.remove_all()
        return sample

    # The limits of the two NVMe-read points: fio makes the same reads as ours, right after the
    # same set-up writes (a virtual disk reads slower for a while after a burst of writes), with
    # the page cache dropped. Through the node it replays ours exactly (same file, offsets and
    # lengths: same_reads); in-process it reads as many bytes of its own file.

    def dram_full_limit(self) -> dict:
        """fio's reads of the first half of X after the set-up of :meth:`dram_full_sample`."""
        x, _ = self.nvme_resident_set()
        sample = self.same_reads("get_nvme_dram_full", [x[i] for i in range(self.half)])
        self.remove_all()
        return sample

    def get_nvme_limit(self) -> dict:
        """fio's reads of the second half of X after the set-up of :meth:`get_nvme_sample`."""
        x, y = self.nvme_resident_set()
        self.remove_keys(y)
        sample = self.same_reads("get_nvme", [x[i] for i in range(self.half, self.set_pages)])
        self.remove_keys(x)
        return sample

    def same_reads(self, key: str, keys) -> dict:
        reads = self.value_places(keys) if self.config.resolved_mode == "node" else None
        if reads is None:
            return self.counting_blocks(key, "limit", lambda: self.fio("read", len(keys) * self.size))
        bc.drop_caches()
        log = os.path.join(self.data_dir, "fio-replay.iolog")
        r = self.counting_blocks(key, "limit",
                                 lambda: bc.run_fio_replay(reads, log, -(-self.size // 4096) * 4096, self.fio_qd))
        self.out.setdefault("fio_commands", {})["replay"] = r["command"]
        return {"gbps": r["bw_bytes"] / 1e9, "seconds": r["seconds"]}

    def value_places(self, keys) -> Optional[list]:
        """(data file, offset, length rounded up to 4 KiB) of each key's value on the node's NVMe,
        in the order ours reads them; None (with a failure) when one is not there."""
        from mooncake_hicache import _native
        client = _native.NodeClient(self.config.node.socket, 5000)
        try:
            places = []
            for b in range(0, len(keys), BATCH):
                places += client._locations(list(keys[b:b + BATCH]))
        finally:
            client.close()
        if any(length <= 0 for length, _ in places):
            self.failures.append(f"{self.label}: fio replay: {sum(1 for n, _ in places if n <= 0)} pages not on NVMe")
            return None
        path = self.config.tiers.nvme.path
        return [(path, off, -(-length // 4096) * 4096) for length, off in places]

    def counting_blocks(self, key: str, side: str, reads) -> dict:
        """``reads()`` (timed reads: ours or fio's), with the disk's read requests it caused added
        up in out["block_reads"][key][side]: their mean size shows how the device split them."""
        b0 = bc.block_reads(self.data_dir)
        r = reads()
        b1 = bc.block_reads(self.data_dir)
        if b0 and b1:
            acc = self.out.setdefault("block_reads", {}).setdefault(key, {}).setdefault(side, [0, 0])
            acc[0] += b1[0] - b0[0]
            acc[1] += b1[1] - b0[1]
        return r

    def get_nvme_sample(self) -> dict:
        """The second half of X read after Y is removed (DRAM free: the sample); then X is removed."""
        x, y = self.nvme_resident_set()
        self.remove_keys(y)
        bc.drop_caches()
        sample = self.counting_blocks("get_nvme", "ours",
                                      lambda: self.timed_get("get_nvme", x, range(self.half, self.set_pages)))
        self.remove_keys(x)
        return sample

    def measure_exists(self, keys) -> None:
        ex = exists_latency(self.store, keys, BATCH, min_samples=self.args.exists_calls)
        if ex["found"] != self.set_pages:
            self.failures.append(f"{self.label} exists: found {ex['found']} of {self.set_pages} keys just written")
        self.out["exists"] = ex
        if self.config.resolved_mode == "node":
            raw = RawExists(self.config.node.socket)
            try:
                self.out["exists_raw_client"] = exists_latency(raw, keys, BATCH, min_samples=self.args.exists_calls)
            finally:
                raw.close()

    def after_restart(self) -> None:
        x, xd = self.fresh_set()
        y, yd = self.fresh_set()
        self.put_untimed(x, xd)
        self.put_untimed(y, yd)  # X on NVMe
        self.out["restart_s"] = round(self.bench.restart(), 3)
        self.slots.register(self.store)
        bc.drop_caches()
        self.single("get_nvme_restart", self.timed_get("get_nvme_restart", x, range(self.set_pages)))

    def finish(self) -> None:
        final = self.bench.stats()
        self.out["phases"] = {k: v.to_dict() for k, v in self.phase.items()}
        for key in ("get_dram", "get_nvme", "get_nvme_restart"):
            ph = self.out["phases"].get(key) or {}
            tier = "dram_hits" if key == "get_dram" else "nvme_hits"
            if ph and ph.get(tier, 0) < ph["pages"]:
                self.out["notes"].append(f"{key}: only {ph.get(tier, 0)} of {ph['pages']} gets were {tier}")
        self.out["dram_page_kind"] = (final.get("dram") or {}).get("page_kind")
        self.out["limit_page_kind"] = self.arena.page_kind
        if self.out["dram_page_kind"] != self.arena.page_kind:
            self.out["notes"].append(f"the memcpy limit copies into {self.arena.page_kind} pages, the store's arena "
                                     f"has {self.out['dram_page_kind']} pages (hugepages ran out?)")
        for key, sides in (self.out.get("block_reads") or {}).items():
            kib = {side: round(b / max(n, 1) / 1024) for side, (n, b) in sides.items()}
            self.out["notes"].append(f"{key}: disk read requests of {kib.get('ours')} KiB on average for ours, "
                                     f"{kib.get('limit')} KiB for fio")
        self.out["nvme_io_backend"] = (final.get("nvme") or {}).get("io_backend")
        self.out["checksum_failures"] = (final.get("nvme") or {}).get("checksum_failures")
        self.out["ratios"] = ratios(self.out)


def ratios(r: dict) -> dict:
    pts = r.get("points", {})
    out = {k: (pts.get(p) or {}).get("ratio") for k, p in
           (("put_dram_vs_memcpy", "put_dram"), ("get_dram_vs_memcpy", "get_dram"), ("get_nvme_vs_fio", "get_nvme"),
            ("get_nvme_dram_full_vs_fio", "get_nvme_dram_full"), ("put_demote_vs_fio_write", "put_demote"))}
    out["exists_us_p50"] = (r.get("exists") or {}).get("us_p50")
    out["met"] = {k: (None if out.get(k) is None else
                      (out[k] < t if k == "exists_us_p50" else out[k] >= t)) for k, t in TARGETS.items()}
    return out


def _pct(r: Optional[dict]) -> str:
    if not r or r.get("ratio") is None:
        return "-"
    return f"{100 * r['ratio']:.0f}% [{100 * r['ratio_min']:.0f}-{100 * r['ratio_max']:.0f}]"


def _mark(met: Optional[bool]) -> str:
    return "-" if met is None else ("yes" if met else "NO")


TARGET_TEXT = {"put_dram_vs_memcpy": ">= 70% memcpy", "get_dram_vs_memcpy": ">= 70% memcpy",
               "get_nvme_vs_fio": ">= 85% fio read", "get_nvme_dram_full_vs_fio": ">= 85% fio read"}


def report_rows(r: dict) -> list:
    size, pts, ph = bc.fmt_size(r["page_size"]), r.get("points", {}), r.get("phases", {})
    met = (r.get("ratios") or {}).get("met", {})
    rows = []
    for key, name, lim, target in POINTS:
        p = pts.get(key)
        if not p:
            continue
        batches = ph.get(key) or {}
        rows.append((size, name, bc.fmt_spread(p), bc.fmt_num(batches.get("batch_ms_p50")),
                     bc.fmt_num(batches.get("batch_ms_p99")), p.get("limit") or "-", bc.fmt_num(p.get("limit_gbps")),
                     _pct(p), p["pairs"], TARGET_TEXT.get(target, ""), _mark(met.get(target)) if target else ""))
    for key, name in (("exists", "exists x128, Store"), ("exists_raw_client", "exists x128, raw NodeClient")):
        e = r.get(key)
        if e:
            rows.append((size, name, "-", f"{e['us_p50']} us", f"{e['us_p99']} us", "-", "-", "-", e["calls"],
                         "< 100 us p50" if key == "exists" else "", _mark(met.get("exists_us_p50")) if key == "exists" else ""))
    return rows


def print_report(results: list[dict], seconds: float, mode: str) -> None:
    where = "through the node (a client process)" if mode == "node" else "in this process (in_process mode)"
    print(f"Store {where}: GB/s (1e9 B/s) median [min-max] over the samples, >= {seconds:g} s per point; "
          f"vs limit: median of the paired ratios [min-max], ABBA; n: pairs (rows with a limit) or samples")
    headers = ("size", "operation", "GB/s", "batch ms p50", "batch ms p99", "limit", "limit GB/s", "vs limit",
               "n", "target", "met")
    bc.print_table(headers, [row for r in results for row in report_rows(r)])
    for r in results:
        size = bc.fmt_size(r["page_size"])
        print(f"  {size}: restart {r.get('restart_s')} s; dram pages {r.get('dram_page_kind')}, memcpy limit pages "
              f"{r.get('limit_page_kind')}; nvme {r.get('nvme_io_backend')}; checksum failures {r.get('checksum_failures')}")
        for key, _name, lim, _t in POINTS:
            if lim:
                for note in bc.ratio_notes(f"{size} {key}", (r.get("points") or {}).get(key), lim):
                    print(f"  note: {note}")
        for note in r.get("notes") or []:
            print(f"  note: {size}: {note}")
    if not bc.can_drop_caches():
        print("  note: page cache not dropped (not root): fio's and the node's reads may come from cache")


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="See the module docstring for what is measured.")
    p.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    p.add_argument("--sizes", help=f"page sizes, comma-separated (default {DEFAULTS['sizes']})")
    p.add_argument("--set-mib", type=int, help=f"MiB per page set; DRAM holds one set (default {DEFAULTS['set_mib']})")
    p.add_argument("--seconds", type=float, help=f"timed seconds per point, ours and limit together, in ABBA "
                   f"pairs (default {DEFAULTS['seconds']:g}; at least two pairs whatever it says)")
    p.add_argument("--exists-calls", type=int, help=f"timed batch_is_exist calls (default {DEFAULTS['exists_calls']})")
    p.add_argument("--fio-qd", type=int, default=None, help="fio queue depth (default: the store's tiers.nvme.queue_depth)")
    p.add_argument("--dir", default="/var/tmp", help="where the NVMe data file and the fio file go (default /var/tmp)")
    p.add_argument("--sock-dir", default="/tmp", help="where the node's socket directory goes (default /tmp)")
    p.add_argument("--skip-fio", action="store_true", help="no fio limit (the NVMe rows get no ratio)")
    p.add_argument("--clean-reserve", type=float, default=None,
                   help="tiers.dram.clean_reserve of the store (default: the config default; 0 turns it off)")
    p.add_argument("--mixed", action="store_true",
                   help="the mixed-load benchmark instead (bench/store_mixed.py): a putter at full speed and an "
                        "NVMe-hit reader, with and without the clean reserve")
    p.add_argument("--client-hugepages", action="store_true",
                   help="the client's page buffers in transparent huge pages (as a host KV pool backed by huge "
                        "pages): an NVMe value read straight into them goes to the disk as one request, not as "
                        "one per max_segments scattered 4 KiB pages")
    p.add_argument("--mode", choices=("node", "in_process"), default="node",
                   help="node (default: a client process through the node) or in_process (tiers in this process)")
    args = p.parse_args(argv)
    bc.apply_preset(args, QUICK if args.quick else DEFAULTS)
    return args


def check_args(args: argparse.Namespace) -> Optional[list[int]]:
    """The page sizes to run, or None (reported) when the arguments are unusable."""
    try:
        sizes = bc.parse_size_list(args.sizes)
        if not sizes or args.set_mib <= 0 or args.seconds < 0 or (args.fio_qd is not None and args.fio_qd <= 0):
            raise ValueError("--sizes must be non-empty, --set-mib and --fio-qd positive, --seconds >= 0")
        os.makedirs(args.dir, exist_ok=True)
    except (ValueError, OSError) as e:
        print(f"store_bench: {e}", file=sys.stderr)
        return None
    if not args.skip_fio and bc.fio_path() is None:
        bc.progress("note: fio is not installed (apt-get install fio); the NVMe rows get no ratio")
        args.skip_fio = True
    return sizes


def run_benches(benches, failures: list[str]) -> tuple[list[dict], Optional[str]]:
    """Start, run and close each bench (a SizeBench) in turn; stops at the first setup error."""
    results = []
    for b in benches:
        try:
            b.start()
            results.append(b.run())
        except MooncakeHiCacheError as e:
            setup_error = f"{b.label}: {type(e).__name__}: {e}"
            print(f"store_bench: {setup_error}", file=sys.stderr)
            return results, setup_error
        except Exception as e:  # noqa: BLE001 - report and exit non-zero
            traceback.print_exc()
            return results, f"{b.label}: {type(e).__name__}: {e}"
        finally:
            b.close()
    return results, None


def finish_run(bench: str, args, results, failures, setup_error, t0: float, **extra) -> int:
    """The failures on stderr, the JSON line, and the exit status."""
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    bc.json_line({"bench": bench, "mode": args.mode, "client_hugepages": getattr(args, "client_hugepages", False),
                  "ok": not failures and not setup_error,
                  "failures": failures, "setup_error": setup_error, "batch": BATCH,
                  "seconds_per_point": args.seconds, "cache_dropped": bc.can_drop_caches(),
                  "fio_extra": list(bc.FIO_URING_EXTRA) if bc._fio_extra_ok else [], **extra,
                  "results": results, "seconds": round(time.perf_counter() - t0, 1),
                  "machine": bc.machine_info(args.dir)})
    if setup_error:
        return 2
    return 1 if failures else 0


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    sizes = check_args(args)
    if sizes is None:
        return 2
    if args.mixed:
        from store_mixed import run_mixed
        return run_mixed(args, sizes)
    failures: list[str] = []
    t0 = time.perf_counter()
    benches = (SizeBench(args, size, max(2, args.set_mib * MiB // size), failures) for size in sizes)
    results, setup_error = run_benches(benches, failures)
    print_report(results, args.seconds, args.mode)
    if args.client_hugepages:
        print("  client page buffers: transparent huge pages (--client-hugepages)")
    return finish_run("store_node", args, results, failures, setup_error, t0, targets=TARGETS)


if __name__ == "__main__":
    sys.exit(main())
