#!/usr/bin/env python3
"""Cluster benchmark: a rank on host A reads and writes pages that live on the other hosts' nodes,
in batches of 128 pages, against the limits measured in the same run, alternately (ABBA).

**Setup.** ``--nodes`` node processes (a, b, c by default) on 127.0.0.1, each with its own Unix
socket, DRAM arena and TCP port, static members, R=1; a client process (``cluster_worker.py``) that
is a rank of node a. Every key of the workload is chosen so that its holder is not a (weighted
rendezvous placement, as the pool computes it): every byte crosses TCP from another node's arena.

**What is measured, per page size** (``--sizes``, default 256K, 1M, 4M), on a set of ``--set-mib``
MiB (a multiple of 128 pages):

* **get**: ``batch_get_into`` of the resident set, 128 pages per call, every page checked byte for
  byte afterwards (untimed); **put**: ``batch_put_from`` of a fresh set (removed after, untimed).
* paired with, in the same run, alternately: **tcp x4** and **tcp x1** (plain loopback TCP
  sockets, a sender process whose pages sit in arena-kind memory and a receiver process that
  receives each batch's bytes straight into a page-aligned buffer like the rank's registered one,
  over 4 or 1 connections at once), **memcpy** (the same bytes from arena-kind memory into that
  buffer, one memmove per page), and **mooncake** (the same workload on Mooncake's store over TCP:
  master + storage nodes + a client that contributes no memory; when available, see below).
  Each pair runs ours then the others, or the others then ours (ABBA), until ``--seconds`` of
  timed calls; a ratio is the median over the pairs of ours / theirs, with its min-max.
* **exists**: ``batch_is_exist`` of 128 keys spread over all the nodes (present), ``--exists-calls``
  calls, alternating with Mooncake's on 128 of its keys: p50 and p99 (us).
* **CPU**: cores per GB/s, i.e. CPU seconds per GB moved: the client's (its process CPU inside the
  timed calls, every thread) and the nodes' (``/proc/<pid>/stat`` user + system of every server
  process over the sample: our nodes; Mooncake's storage nodes and master; the TCP sender).

**Mooncake** runs under its own interpreter (``bench/mooncake_env.py``: ``--mooncake-python`` or
``bench/.mooncake-venv``, made by ``bench/mooncake_env.py install``); this process never imports
it. ``--mooncake auto`` (default) uses it when found and says why not otherwise; ``off`` skips it;
``require`` fails without it. Its transfer engine is told ``MC_TCP_BIND_ADDRESS=127.0.0.1``;
master, metadata and metrics listen on 127.0.0.1.

``--transport rdma`` (or ``auto``) runs our pool with that ``cluster.transport``: on a host with an
RDMA NIC the pages move with one-sided RDMA into the client's registered buffers (tests/hw/ runs it
there). With ``MOONCAKE_HICACHE_FAKE_VERBS=1`` it runs on the FAKE verbs provider, which proves the
option works and nothing else (a note says so: those are not RDMA figures).

``--only limits`` measures the limits alone (no pool; what CI can run without the cluster
transport). ``--smoke``: 64 KiB pages, one batch, ``--seconds 1``.

Output: progress on stderr, a table on stdout, then one JSON line ``{"bench": "cluster", ...}``.
Exit status 1 when a page came back wrong or one of our calls failed or missed, 2 for a setup
problem, 0 otherwise (targets are reported, not asserted). GB/s are decimal over the time inside
the calls.

Examples::

    .venv/bin/python bench/cluster_bench.py                       # 256K,1M,4M; 512 MiB sets; 10 s a point
    .venv/bin/python bench/cluster_bench.py --smoke               # a quick check that everything runs
    .venv/bin/python bench/cluster_bench.py --sizes 1M --seconds 30 --mooncake require
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
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench_common as bc  # noqa: E402
import cluster_pools as cp  # noqa: E402
import mooncake_env  # noqa: E402

MiB = bc.MiB
BATCH = 128
SLAB = 32 * MiB
STREAMS = (4, 1)
DEFAULTS = {"sizes": "256K,1M,4M", "set_mib": 512, "seconds": 10.0, "exists_calls": 400}
SMOKE = {"sizes": "64K", "set_mib": 8, "seconds": 1.0, "exists_calls": 20}
TARGETS = {"vs_tcp4": 0.8, "vs_mooncake": 1.5, "cpu_vs_mooncake": 0.5, "exists_p50_us": 250.0}
LIMITS = ("tcp4", "tcp1", "memcpy")


# ---- one sample ------------------------------------------------------------------------------

class Tally:
    """Every sample of one (op, system) at one size: bytes, call seconds, batch latencies, CPU."""

    def __init__(self):
        self.samples: list[float] = []  # GB/s of each sample
        self.bytes = 0
        self.seconds = 0.0
        self.batches: list[float] = []
        self.client_cpu = 0.0
        self.node_cpu = 0.0
        self.misses = self.wrong = self.errors = 0

    def add(self, nbytes: int, r: dict, node_cpu: float) -> float:
        secs = sum(r["batches"])
        self.bytes += nbytes
        self.seconds += secs
        self.batches += r["batches"]
        self.client_cpu += r["cpu"]
        self.node_cpu += node_cpu
        self.misses += r.get("misses", 0)
        self.wrong += r.get("wrong", 0)
        self.errors += r.get("errors", 0)
        g = bc.gbps(nbytes, secs) or 0.0
        self.samples.append(g)
        return g

    def summary(self, size: int) -> dict:
        ms = sorted(b * 1e3 for b in self.batches)
        gb = self.bytes / 1e9
        med = statistics.median(self.samples) if self.samples else None
        return {"gbps": _r(med), "gbps_min": _r(min(self.samples, default=None)),
                "gbps_max": _r(max(self.samples, default=None)),
                "pages_per_s": _r(med * 1e9 / size if med else None, 0),
                "batch_ms_p50": _r(statistics.median(ms) if ms else None),
                "batch_ms_p99": _r(ms[min(len(ms) - 1, int(len(ms) * 0.99))] if ms else None),
                "client_cores_per_gbps": _r(self.client_cpu / gb if gb else None),
                "node_cores_per_gbps": _r(self.node_cpu / gb if gb else None),
                "samples": len(self.samples), "batches": len(ms),
                "misses": self.misses, "wrong": self.wrong, "errors": self.errors}


def _r(x: Optional[float], digits: int = 3) -> Optional[float]:
    return None if x is None else round(x, digits)


class SizeRun:
    """The measurements at one page size over the pools (ours, Mooncake's; either may be absent)
    and the TCP limit."""

    def __init__(self, args, size: int, pools: dict, tcp: cp.TcpLimit, failures: list, run_id: str):
        self.args, self.size, self.pools, self.tcp, self.failures = args, size, pools, tcp, failures
        self.pages = max(BATCH, args.set_mib * MiB // size // BATCH * BATCH)
        self.nbytes = self.pages * size
        self.tag = f"{run_id}-{bc.fmt_size(size)}"
        self.tallies: dict = {}
        self.keys: dict = {}
        self.fresh = 0

    def tally(self, op: str, system: str) -> Tally:
        return self.tallies.setdefault((op, system), Tally())

    def prepare(self) -> None:
        self.tcp.buffers(self.size, BATCH)
        for name, pool in self.pools.items():
            pool.client.call("buffers", size=self.size, slots=BATCH)
            keys = pool.remote_keys(f"set-{self.tag}", self.pages)
            r = pool.client.call("put", keys=keys)
            self._check(name, "initial put", r)
            self._check(name, "first read", pool.client.call("get", keys=keys))
            self.keys[name] = keys

    def _check(self, system: str, what: str, r: dict) -> None:
        bad = {k: r.get(k, 0) for k in ("wrong", "errors", "misses") if r.get(k, 0)}
        if bad and (system == "ours" or bad.get("wrong")):
            self.failures.append(f"{bc.fmt_size(self.size)} {system} {what}: {bad}")
        elif bad:
            bc.progress(f"note: {system} {what} at {bc.fmt_size(self.size)}: {bad}")

    # -- samples (each returns the GB/s it measured) --

    def get(self, system: str) -> float:
        pool = self.pools[system]
        n0 = pool.node_cpu()
        r = pool.client.call("get", keys=self.keys[system])
        self._check(system, "get", r)
        return self.tally("get", system).add(self.nbytes, r, pool.node_cpu() - n0)

    def put(self, system: str) -> float:
        pool = self.pools[system]
        self.fresh += 1
        keys = pool.remote_keys(f"put-{self.tag}-{self.fresh}", self.pages)
        n0 = pool.node_cpu()
        r = pool.client.call("put", keys=keys)
        node = pool.node_cpu() - n0
        self._check(system, "put", r)
        pool.client.call("remove", keys=keys)
        return self.tally("put", system).add(self.nbytes, r, node)

    def limit(self, op: str, which: str) -> float:
        if which == "memcpy":
            r = self.tcp.receiver.call("memcpy", batches=self.pages // BATCH)
            return self.tally(op, which).add(self.nbytes, r, 0.0)
        n0 = cp.cpu_seconds(self.tcp.sender.pid)
        r = self.tcp.receiver.call("tcp", batches=self.pages // BATCH, streams=int(which[3:]))
        return self.tally(op, which).add(self.nbytes, r, cp.cpu_seconds(self.tcp.sender.pid) - n0)

    # -- a paired point --

    def point(self, op: str) -> dict:
        others = [s for s in self.pools if s != "ours"] + list(LIMITS)
        sample = self.get if op == "get" else self.put
        metrics = tuple(f"vs_{o}" for o in others)

        def ours() -> dict:
            g = sample("ours")
            return {**{m: g for m in metrics}, "seconds": self.nbytes / (g * 1e9) if g else 0.0}

        def theirs() -> dict:
            out, secs = {}, 0.0
            for o in others:
                g = sample(o) if o in self.pools else self.limit(op, o)
                out[f"vs_{o}"] = g
                secs += self.nbytes / (g * 1e9) if g else 0.0
            return {**out, "seconds": secs}

        if "ours" not in self.pools:  # limits alone: no pairs, the same budget
            return bc.run_paired(theirs, None, metrics, self.args.seconds, f"{op} {bc.fmt_size(self.size)} limits")
        return bc.run_paired(ours, theirs, metrics, self.args.seconds, f"{op} {bc.fmt_size(self.size)}")

    def run(self) -> dict:
        self.prepare()
        pairs = {op: self.point(op) for op in ("get", "put")}
        out = {"size": self.size, "pages_per_sample": self.pages, "bytes_per_sample": self.nbytes, "ops": {}}
        for op in ("get", "put"):
            out["ops"][op] = {"systems": {s: t.summary(self.size) for (o, s), t in self.tallies.items() if o == op},
                              "ratios": {m: _ratio(v) for m, v in pairs[op].items()
                                         if m.startswith("vs_") and "ours" in self.pools},
                              "pairs": pairs[op]["pairs"]}
        return out

    def exists(self) -> dict:
        """batch_is_exist of 128 keys: ours spread over every node, Mooncake's from its set;
        blocks of calls alternate between the two."""
        keysets = {}
        if "ours" in self.pools:
            keysets["ours"] = self.pools["ours"].spread_keys(f"exists-{self.tag}", BATCH)
            self._check("ours", "exists put", self.pools["ours"].client.call("put", keys=keysets["ours"]))
        for name in self.pools:
            keysets.setdefault(name, self.keys[name][:BATCH])
        calls = {name: [] for name in keysets}
        block = max(1, self.args.exists_calls // 10)
        for k in range(0, self.args.exists_calls, block):
            order = list(keysets) if (k // block) % 2 == 0 else list(reversed(keysets))
            for name in order:
                r = self.pools[name].client.call("exists", keys=keysets[name], repeat=block)
                calls[name] += r["calls"]
                if r["present"] != BATCH:
                    self._check(name, "exists", {"misses": BATCH - r["present"]})
        if "ours" in keysets:
            self.pools["ours"].client.call("remove", keys=keysets["ours"])
        return {name: _latency_us(c) for name, c in calls.items()}

    def cleanup(self) -> None:
        for name, pool in self.pools.items():
            pool.client.call("remove", keys=self.keys.get(name, []))


def _ratio(r: dict) -> dict:
    return {k: _r(r.get(k)) for k in ("ratio", "ratio_min", "ratio_max", "ours_gbps", "limit_gbps")}


def _latency_us(calls: list) -> dict:
    us = sorted(c * 1e6 for c in calls)
    return {"calls": len(us), "p50_us": _r(statistics.median(us), 1),
            "p99_us": _r(us[min(len(us) - 1, int(len(us) * 0.99))], 1)}


# ---- report ----------------------------------------------------------------------------------

ROW_ORDER = ("ours", "mooncake", "tcp4", "tcp1", "memcpy")
LABELS = {"ours": "ours (pool, TCP)", "mooncake": "mooncake store (TCP)", "tcp4": "loopback TCP x4",
          "tcp1": "loopback TCP x1", "memcpy": "memcpy"}


def report_rows(results: list) -> list:
    rows = []
    for res in results:
        for op, data in res["ops"].items():
            for s in sorted(data["systems"], key=ROW_ORDER.index):
                v = data["systems"][s]
                ratio = data["ratios"].get(f"vs_{s}")
                rows.append([bc.fmt_size(res["size"]), op, LABELS[s],
                             _spread(v), bc.fmt_num(v["pages_per_s"], 0), bc.fmt_num(v["batch_ms_p50"]),
                             bc.fmt_num(v["batch_ms_p99"]), bc.fmt_num(v["client_cores_per_gbps"]),
                             bc.fmt_num(v["node_cores_per_gbps"]), bc.fmt_ratio(ratio) if ratio else "-"])
    return rows


def _spread(v: dict) -> str:
    if v["gbps"] is None:
        return "N/A"
    return f"{v['gbps']:.2f} [{v['gbps_min']:.2f}-{v['gbps_max']:.2f}]"


def transport_notes(args) -> list:
    if args.transport == "tcp":
        return []
    from mooncake_hicache import _native
    info = _native.rdma_devices()
    if info["fake"]:
        return ["our pool ran on the FAKE verbs provider (MOONCAKE_HICACHE_FAKE_VERBS=1): its bytes move with "
                "process_vm_readv/writev, so its figures are not RDMA figures"]
    return [f"transport {args.transport}: see each node's log for the transport it chose (verbs provider "
            f"{info['provider'] or 'none'})"]


def print_report(results: list, exists: Optional[dict], args, mooncake: str) -> list:
    print(f"\ncluster bench: batches of {BATCH} pages, {args.seconds:g} s per point (ABBA pairs), mooncake: {mooncake}")
    bc.print_table(["size", "op", "system", "GB/s [min-max]", "pages/s", "p50 ms", "p99 ms", "client cores/GB/s",
                    "node cores/GB/s", "ours / this [min-max]"], report_rows(results))
    if exists:
        print()
        bc.print_table(["batch_is_exist(128)", "calls", "p50 us", "p99 us"],
                       [[LABELS[n], v["calls"], v["p50_us"], v["p99_us"]] for n, v in exists.items()])
    notes = transport_notes(args)
    for res in results:
        for op, data in res["ops"].items():
            for lim in LIMITS:
                notes += bc.ratio_notes(f"{bc.fmt_size(res['size'])} {op} vs {lim}", data["ratios"].get(f"vs_{lim}"), lim)
    for n in notes:
        print(f"note: {n}")
    return notes


# ---- main ------------------------------------------------------------------------------------

def open_isolation(args) -> cp.Isolation:
    why = cp.Isolation.available()
    if args.netns == "on" and why:
        raise cp.WorkerError(f"--netns on: cannot make a network namespace here ({why})")
    if args.netns == "auto" and why:
        bc.progress(f"note: every process runs in this network namespace ({why}); Mooncake's wildcard "
                    "listeners are then reachable from this host's other interfaces")
    iso = cp.Isolation(args.netns != "off" and not why)
    if iso.name:
        bc.progress(f"every process runs in network namespace {iso.name} (loopback only)")
    return iso


def open_pools(args, workdir: str, iso: cp.Isolation) -> tuple[dict, str]:
    """The pools to measure, and what the report says about Mooncake."""
    pools, set_bytes, max_size = {}, args.set_mib * MiB, max(bc.parse_size_list(args.sizes))
    per_node = 2 * set_bytes * 5 // 4 // max(1, args.nodes - 1) + BATCH * max_size // max(1, args.nodes) + 2 * SLAB
    per_node = -(-per_node // SLAB) * SLAB
    if args.only == "limits":
        return pools, "not measured (--only limits)"
    pools["ours"] = cp.OurPool(workdir, args.nodes, per_node, SLAB, iso, args.transport)
    mooncake = "off"
    if args.mooncake != "off":
        python, version, why = mooncake_env.find(args.mooncake_python)
        if python is None and args.mooncake == "require":
            raise cp.WorkerError(f"--mooncake require: {why}")
        if python is None:
            bc.progress(f"note: Mooncake is not measured: {why}")
            mooncake = f"not available ({why})"
        else:
            bc.progress(f"starting Mooncake's store ({version}) under {python}")
            pools["mooncake"] = cp.MooncakePool(python, workdir, max(1, args.nodes - 1), per_node, 128 * MiB, iso)
            mooncake = version
    return pools, mooncake


def run(args, workdir: str, failures: list) -> tuple[list, Optional[dict], str]:
    pools, mooncake = {}, ""
    tcp = None
    results, exists = [], None
    iso = open_isolation(args)
    try:
        pools, mooncake = open_pools(args, workdir, iso)
        tcp = cp.TcpLimit(workdir, max(STREAMS), iso)
        run_id = os.urandom(4).hex()
        for size in bc.parse_size_list(args.sizes):
            sr = SizeRun(args, size, pools, tcp, failures, run_id)
            results.append(sr.run())
            if exists is None and pools:
                exists = sr.exists()
            sr.cleanup()
    finally:
        for p in list(pools.values()) + ([tcp] if tcp else []):
            p.close()
        iso.close()
    return results, exists, mooncake


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring for what is measured.")
    p.add_argument("--smoke", action="store_true", help=f"a quick run: {SMOKE}")
    p.add_argument("--sizes", help=f"page sizes (default {DEFAULTS['sizes']})")
    p.add_argument("--set-mib", type=int, help=f"MiB per sample, rounded to whole batches (default {DEFAULTS['set_mib']})")
    p.add_argument("--seconds", type=float, help=f"timed seconds per point (default {DEFAULTS['seconds']:g})")
    p.add_argument("--exists-calls", type=int, help=f"batch_is_exist calls per system (default {DEFAULTS['exists_calls']})")
    p.add_argument("--nodes", type=int, default=3, help="node processes of our pool (default 3; pages live on all but a)")
    p.add_argument("--only", choices=("all", "limits"), default="all", help="limits: tcp and memcpy only (no pool)")
    p.add_argument("--mooncake", choices=("auto", "off", "require"), default="auto")
    p.add_argument("--mooncake-python", help="a Python that imports mooncake.store (default bench/.mooncake-venv)")
    p.add_argument("--netns", choices=("auto", "on", "off"), default="auto",
                   help="run every process in a fresh network namespace with only loopback (auto: when root)")
    p.add_argument("--transport", choices=("tcp", "rdma", "auto"), default="tcp",
                   help="cluster.transport of our pool (default tcp; rdma needs a device: tests/hw/)")
    p.add_argument("--workdir", help="where configs and logs go (default: a temporary directory, removed)")
    args = p.parse_args(argv)
    bc.apply_preset(args, SMOKE if args.smoke else DEFAULTS)
    bc.parse_size_list(args.sizes)
    if args.set_mib <= 0 or args.seconds < 0 or args.nodes < 2 or args.exists_calls < 1:
        raise ValueError("--set-mib and --exists-calls must be positive, --seconds >= 0, --nodes >= 2")
    return args


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except ValueError as e:
        print(f"cluster_bench: {e}", file=sys.stderr)
        return 2
    workdir = args.workdir or tempfile.mkdtemp(prefix="cluster-bench-")
    os.makedirs(workdir, exist_ok=True)
    failures: list = []
    t0, setup_error = time.perf_counter(), None
    results, exists, mooncake = [], None, ""
    try:
        results, exists, mooncake = run(args, workdir, failures)
    except Exception as e:  # noqa: BLE001 - reported, exit 2
        traceback.print_exc()
        setup_error = f"{type(e).__name__}: {e}"
    notes = print_report(results, exists, args, mooncake)
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    bc.json_line({"bench": "cluster", "ok": not failures and not setup_error, "failures": failures,
                  "setup_error": setup_error, "batch": BATCH, "nodes": args.nodes, "only": args.only,
                  "seconds_per_point": args.seconds, "transport": args.transport, "mooncake": mooncake, "targets": TARGETS, "notes": notes,
                  "results": results, "exists": exists, "seconds": round(time.perf_counter() - t0, 1),
                  "machine": bc.machine_info(workdir)})
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    if setup_error:
        return 2
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
