"""Mixed load (``store_bench.py --mixed``): do reads of NVMe hits keep their speed while another
client puts at full speed? (issue 15: reads never wait for writes.)

For each page size, twice: once with the clean reserve (``--clean-reserve``, else the config's
default) and once without (``clean_reserve: 0``), each against a private node like store_bench's.
Per sample a fresh set X is pushed to NVMe by a second set Y (DRAM full of Y, never demoted), the
page cache is dropped, and all of X is read in batches of 128, every page verified:

* **get nvme + putter**: while a second thread puts fresh pages as fast as the store takes them
  (bounded: four sets per sample at most, stopped when the reads end);
* **get nvme alone**: the same reads without the putter, the point's pair (ABBA).

A put that finds every DRAM slot pinned by the reader's batch is refused (``NO_SPACE``, the
store's documented answer): counted as "puts refused", not a failure of the run.

The ratio (reads with the putter / reads alone) has the target >= 0.80. Reported besides: read
batch p99 with and without the putter, the putter's GB/s, and the tiering counters of the reads
(``reads_waited_for_write`` must stay 0 with the reserve; ``direct_reads``: NVMe hits that found
no clean slot). Output: a table, then one JSON line ``{"bench": "store_mixed", ...}``.
"""

from __future__ import annotations

import argparse
import threading
import time

import _bench_common as bc
import store_bench as sb
from mooncake_hicache.bench_command import PageSlots, counters_delta, make_keys, tier_counters
from mooncake_hicache.errors import ErrorCode

TARGET = 0.80  # reads with the putter / reads alone
POINTS = [("read_with_putter", "get nvme + putter", "get nvme alone", "read_with_putter_vs_alone")]
PUTTER_SETS = 4  # pages the putter may write per sample, in sets


class MixedBench(sb.SizeBench):
    """The mixed-load points for one page size and one clean-reserve setting."""

    nvme_sets = 2 + PUTTER_SETS + 1  # X, Y and the putter's pages stay on NVMe
    points = POINTS

    def __init__(self, args, size: int, set_pages: int, failures: list[str], reserve: float | None):
        super().__init__(argparse.Namespace(**{**vars(args), "clean_reserve": reserve}), size, set_pages, failures)
        self.label = f"{bc.fmt_size(size)} reserve {'default' if reserve is None else reserve:}"
        self.putter_slots: PageSlots | None = None
        self.putter_samples: list[dict] = []

    def start(self) -> None:
        super().start()
        self.putter_slots = PageSlots(self.size, min(sb.BATCH, self.set_pages), seed=self.size + 1)
        self.putter_slots.register(self.store)

    def close(self) -> None:
        if self.putter_slots is not None:
            self.putter_slots.close()
        super().close()

    def put_until(self, stop: threading.Event) -> None:
        """Puts fresh pages, batch after batch, until ``stop`` (or PUTTER_SETS sets). A put that
        finds every DRAM slot pinned (the reader's batch holds its pages while it copies them) is
        refused with NO_SPACE, the store's documented answer: counted, and left out of the GB/s;
        any other error is a failure of the run."""
        keys, depths = make_keys(self.set_pages * PUTTER_SETS)
        slots, stored, refused = self.putter_slots, 0, 0
        t0 = time.perf_counter()
        for s in range(0, len(keys), slots.slots):
            if stop.is_set():
                break
            idx = range(s, min(len(keys), s + slots.slots))
            for i in idx:
                slots.stamp(i, keys[i])
            codes = self.store.batch_put_from([keys[i] for i in idx], [slots.slot_addr(slots.put, i) for i in idx],
                                              [self.size] * len(idx), depths=[depths[i] for i in idx])
            stored += sum(1 for c in codes if c == 0)
            refused += sum(1 for c in codes if c == ErrorCode.NO_SPACE)
            if any(c not in (0, ErrorCode.NO_SPACE) for c in codes):
                self.failures.append(f"{self.label} putter: {set(codes) - {0}} from batch_put_from")
        self.putter_samples.append({"gbps": bc.gbps(stored * self.size, time.perf_counter() - t0),
                                    "pages": stored, "refused": refused})

    def read_sample(self, key: str, with_putter: bool) -> dict:
        x, _ = self.nvme_resident_set()
        bc.drop_caches()
        stop = threading.Event()
        putter = threading.Thread(target=self.put_until, args=(stop,)) if with_putter else None
        if putter:
            putter.start()
        try:
            sample = self.timed_get(key, x, range(self.set_pages))
        finally:
            stop.set()
            if putter:
                putter.join()
        self.remove_all()
        return sample

    def run(self) -> dict:
        c0 = tier_counters(self.bench.stats())
        self.point("read_with_putter", lambda: self.read_sample("read_with_putter", True),
                   lambda: self.read_sample("read_alone", False))
        self.out["counters"] = counters_delta(c0, tier_counters(self.bench.stats()))
        self.out["phases"] = {k: v.to_dict() for k, v in self.phase.items()}
        self.out["putter"] = self.putter_samples
        self.out["clean_reserve"] = self.config.tiers.dram.clean_reserve
        ratio = (self.out["points"]["read_with_putter"] or {}).get("ratio")
        self.out["met"] = None if ratio is None else ratio >= TARGET
        return self.out


def report_row(r: dict) -> tuple:
    p, ph = r["points"]["read_with_putter"], r["phases"]
    alone, mixed = ph.get("read_alone") or {}, ph.get("read_with_putter") or {}
    put = [s["gbps"] for s in r["putter"] if s["gbps"]]
    c = r["counters"]
    return (bc.fmt_size(r["page_size"]), r["clean_reserve"], bc.fmt_num(p.get("limit_gbps")),
            bc.fmt_num(p.get("ours_gbps")), sb._pct(p), bc.fmt_num(alone.get("batch_ms_p99")),
            bc.fmt_num(mixed.get("batch_ms_p99")), bc.fmt_num(sorted(put)[len(put) // 2] if put else None),
            sum(s["refused"] for s in r["putter"]), c.get("reads_waited_for_write"), c.get("direct_reads"), p["pairs"], sb._mark(r["met"]))


def run_mixed(args, sizes: list[int]) -> int:
    failures: list[str] = []
    t0 = time.perf_counter()
    benches = (MixedBench(args, size, max(2, args.set_mib * sb.MiB // size), failures, reserve)
               for size in sizes for reserve in (args.clean_reserve, 0.0))
    results, setup_error = sb.run_benches(benches, failures)
    print(f"Mixed load {'through the node' if args.mode == 'node' else 'in process'}: NVMe-hit reads alone and "
          f"with a putter at full speed, ABBA, >= {args.seconds:g} s per point; ratio: median [min-max] of the pairs")
    headers = ("size", "reserve", "read alone GB/s", "read + putter GB/s", "ratio", "p99 ms alone", "p99 ms + putter",
               "putter GB/s", "puts refused", "reads waited for write", "direct reads", "n", f"met (>= {TARGET:.0%})")
    bc.print_table(headers, [report_row(r) for r in results])
    return sb.finish_run("store_mixed", args, results, failures, setup_error, t0, target=TARGET)
