#!/usr/bin/env python3
"""Trace replay: what the tiers buy on a real long-context workload, side by side.

Replays a Mooncake-format trace (``bench/traces/README.md``) against several KV-page stores, doing
per request what SGLang's HiCache does with its storage backend:

1. page keys: the request's 512-token blocks become 64-token pages with chained sha256 keys
   (``key_i = H(key_{i-1} || block id || page index)``; only full pages);
2. ``batch_is_exist`` on the prefix in 128-page batches, stopping at the first miss (leading hits);
3. ``batch_get_into`` the hits in 128-page batches into a host buffer (bytes checked by a stamp);
4. ``batch_put_from`` the pages after the hit prefix, in 128-page batches, with ``depths`` = the
   page's position in the chain.

Pages carry real bytes of the chosen model shape (``--model``), divided by ``--scale``; tier
capacities are scaled so each tier holds as many pages as the real one would (``replay_model.py``).

Configurations compared in one run (``--configs`` picks a subset; equal DRAM page capacity
everywhere, NVMe ``nvme_ratio`` (4) times larger):

* ``lru-dram``                 baseline: a plain LRU page cache in DRAM, no capacity tier;
* ``hicache-file``             baseline: SGLang's ``HiCacheFile`` (one file per page) behind a DRAM
                               LRU of our DRAM tier's page count (SGLang's host tier), written
                               through; HiCacheFile capped at our DRAM + NVMe page capacity
                               (skipped with a note without sglang);
* ``ours-dram/{lru,s3fifo,prefix_lru}``       our Store, DRAM tier only;
* ``ours-dram+nvme/{lru,s3fifo,prefix_lru}``  our Store, DRAM in front of the NVMe tier;
* ``ours-nvme``                our Store, NVMe tier only (not in the default set).

Reported per configuration: hit tokens per tier over all input tokens and against the
infinite-cache ceiling, bytes read and written per tier, achieved GB/s of the get/put calls,
p50/p99 latency per batch call, and a modeled TTFT per request (``replay_model.py``; tier
bandwidths from a calibration pass at the model's real page size). Output: a table on stdout,
``replay.json``, ``results.md`` and PNG plots (hit rate over time per tier, overall hit rate
over time, TTFT CDF) in ``--output``; a progress bar on stderr.

Examples::

    .venv/bin/python bench/replay.py bench/traces/conversation_sample.jsonl --max-requests 600   # ~40 s
    .venv/bin/python bench/replay.py ../shared/traces/conversation_trace.jsonl --output bench/results
    .venv/bin/python bench/replay.py TRACE --model 8b --configs lru-dram,ours-dram+nvme/prefix_lru
    .venv/bin/python bench/replay.py TRACE --max-requests 2000 --speed 20   # 20x faster than real time
    .venv/bin/python bench/replay.py TRACE --model 8b --prefetch-policy prefix_order,none,cost_aware,recompute

Exit status: 0 when the run completed, every page read back was right, every put stored its page
and every get returned all the pages ``batch_is_exist`` promised; 1 otherwise (each failure is
counted and printed per configuration); 2 for bad arguments or input.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

import _bench_common as bc  # noqa: E402
import replay_model as rm  # noqa: E402
from replay_backends import (DRAM_SLAB, HiCacheFileBackend, HostPool, HostTierFront,  # noqa: E402
                             PyLruBackend, StoreBackend, calibrate, dram_slots, nvme_capacity_for,
                             nvme_pages_per_region, sglang_available, timed_get)
from replay_report import (check_targets, failure_lines, lat_summary, markdown_table,  # noqa: E402
                           plot_all, print_table)
from replay_policies import parse_policies, run_policies  # noqa: E402
from replay_trace import Trace  # noqa: E402

POLICIES = ("lru", "s3fifo", "prefix_lru")
DEFAULT_CONFIGS = (["lru-dram"] + [f"ours-dram/{p}" for p in POLICIES]
                   + [f"ours-dram+nvme/{p}" for p in POLICIES] + ["hicache-file"])
ALL_CONFIGS = DEFAULT_CONFIGS + ["ours-nvme"]
NVME_REGION = 64 * rm.MiB
NVME_RECORD_HEADER = rm.NVME_RECORD_HEADER
TIMELINE_BUCKETS = 60
CDF_POINTS = 200


# ---- sizing ------------------------------------------------------------------------------------

def plan(model: rm.ModelShape, scale: float, dram_real: int, nvme_real: int) -> dict:
    """Scaled page size and tier capacities holding as many pages as the real tiers would."""
    page = rm.scaled_page_bytes(model, scale)
    dram_pages_real = dram_real // model.page_bytes
    nvme_pages_real = nvme_real // model.page_bytes
    # whole slabs, as many pages as the real tier holds (rounded down to a slab, at least one);
    # a tier smaller than four default slabs gets four smaller ones
    slab = DRAM_SLAB
    if dram_pages_real * page < 4 * DRAM_SLAB:
        slab = max(1, dram_pages_real // 4) * page
    per_slab = slab // page
    dram_cap = max(1, dram_pages_real // per_slab) * slab
    dram_cap = rm.round_up(dram_cap, 2 * rm.MiB)   # the arena is sized in 2 MiB (hugepage) units
    dram_pages = dram_slots(dram_cap, page, slab)
    # 64 MiB regions, or smaller ones for a small tier (at least 16 regions: the tier reclaims
    # a region at a time, so its page capacity stays close to the real tier's)
    need = nvme_pages_real * (page + NVME_RECORD_HEADER)
    region = NVME_REGION if need >= 16 * NVME_REGION else max(rm.MiB, rm.round_up(need // 16, rm.MiB))
    nvme_cap = nvme_capacity_for(nvme_pages_real, page, region)
    per_region = nvme_pages_per_region(page, region)
    nvme_pages_max = nvme_cap // region * per_region
    # HiCacheFile (behind a host-tier LRU of dram_pages) may hold as many pages as our two tiers
    # together at their fullest, and evicts a region's worth of pages at a time, as our NVMe
    # tier does (reclaiming its oldest region): both then hold between max - region and max.
    file_pages = dram_pages + nvme_pages_max
    return {"page_bytes": page, "real_page_bytes": model.page_bytes, "scale": scale,
            "dram_real_bytes": dram_real, "nvme_real_bytes": nvme_real,
            "dram_capacity": dram_cap, "dram_slab": slab, "dram_pages": dram_pages,
            "nvme_capacity": nvme_cap, "nvme_region": region, "nvme_pages": nvme_pages_real,
            "nvme_pages_per_region": per_region, "nvme_pages_max": nvme_pages_max,
            "file_max_pages": file_pages, "file_max_bytes": file_pages * page,
            "file_eviction_ratio": round(1 - per_region / file_pages, 6)}


def describe(name: str) -> str:
    if name == "lru-dram":
        return "plain LRU page cache in DRAM (baseline, no capacity tier)"
    if name == "hicache-file":
        return ("SGLang HiCacheFile, one file per page, behind a DRAM LRU of our DRAM page count (SGLang's host "
                "tier), capped at our DRAM + NVMe page capacity (baseline)")
    if name == "ours-nvme":
        return "our Store, NVMe tier only"
    tiers, pol = name.split("/")
    return f"our Store, {'DRAM tier only' if tiers == 'ours-dram' else 'DRAM tier in front of the NVMe tier'}, eviction {pol}"


def make_backend(name: str, pool: HostPool, sizes: dict, workdir: str):
    dram = {"capacity": sizes["dram_capacity"], "slab_size": sizes["dram_slab"]}
    nvme = {"path": os.path.join(workdir, "nvme.data"), "capacity": sizes["nvme_capacity"],
            "region_size": sizes["nvme_region"]}
    if name == "lru-dram":
        return PyLruBackend(pool, sizes["dram_pages"])
    if name == "hicache-file":
        return HostTierFront(PyLruBackend(pool, sizes["dram_pages"]),
                             HiCacheFileBackend(pool, os.path.join(workdir, "hicache-file"), sizes["file_max_bytes"],
                                                sizes["file_eviction_ratio"]))
    if name == "ours-nvme":
        return StoreBackend(pool, None, nvme)
    tiers, pol = name.split("/")
    dram = dict(dram, eviction=pol)
    return StoreBackend(pool, dram, nvme if tiers == "ours-dram+nvme" else None)


CALIB_TIERS = {"lru": ("dram",), "file": ("dram", "file"), "store-nvme": ("nvme",), "store-dram": ("dram",),
               "store-tiered": ("dram", "nvme")}


def calib_kind(name: str) -> str:
    if name == "lru-dram":
        return "lru"
    if name == "hicache-file":
        return "file"
    if name == "ours-nvme":
        return "store-nvme"
    return "store-tiered" if name.startswith("ours-dram+nvme") else "store-dram"


# ---- one configuration -------------------------------------------------------------------------

def replay_one(name: str, trace: Trace, ceiling: list, sizes: dict, model: rm.ModelShape,
               args, workdir: str, line_progress: bool = False) -> dict:
    workdir = os.path.join(workdir, name.replace("/", "_"))
    os.makedirs(workdir, exist_ok=True)
    page = sizes["page_bytes"]
    pool = HostPool(page)
    backend = make_backend(name, pool, sizes, workdir)
    tiers = list(backend.tiers)
    reqs = trace.requests
    n_req = len(reqs)
    hit_pages = {t: np.zeros(n_req, dtype=np.int64) for t in tiers}
    lat = {"exists": [], "get": [], "put": []}
    get_rec = []          # (seconds, pages per tier...) per get batch
    get_bytes = put_bytes = 0
    get_time = put_time = 0.0
    verify_errors = get_short = get_short_pages = put_failed = 0
    late_s = 0.0
    bar = bc.Bar(n_req, f"{name:<26}", unit="req", line_mode=line_progress)
    perf = time.perf_counter
    t_start = perf()
    ts0 = reqs[0].timestamp_ms
    hits_so_far = tokens_so_far = 0
    try:
        for i, req in enumerate(reqs):
            if args.speed > 0:
                due = t_start + (req.timestamp_ms - ts0) / 1000.0 / args.speed
                wait = due - perf()
                if wait > 0:
                    time.sleep(wait)
                else:
                    late_s = max(late_s, -wait)
            keys = trace.page_keys(req)
            n = len(keys)
            # 1. leading hits
            lead = 0
            for b in range(0, n, rm.BATCH_PAGES):
                batch = keys[b:b + rm.BATCH_PAGES]
                t0 = perf()
                k = backend.exists_prefix(batch)
                lat["exists"].append(perf() - t0)
                lead += k
                if k < len(batch):
                    break
            # 2. read them
            got = 0
            for b in range(0, lead, rm.BATCH_PAGES):
                batch = keys[b:min(b + rm.BATCH_PAGES, lead)]
                m = len(batch)
                for s in range(m):
                    pool.clear_stamp(s)
                dt, (ok, by_tier) = timed_get(backend, batch, range(m))
                lat["get"].append(dt)
                get_time += dt
                for s in range(ok):
                    if not pool.check(s, batch[s]):
                        verify_errors += 1
                        ok = s
                        break
                get_bytes += ok * page
                counts = [by_tier.get(t, 0) for t in tiers]
                get_rec.append((dt, *counts))
                # pages counted by the tiers beyond a short read are not part of the usable prefix
                extra = sum(counts) - ok
                for j in range(len(tiers) - 1, -1, -1):
                    if extra <= 0:
                        break
                    cut = min(extra, counts[j])
                    counts[j] -= cut
                    extra -= cut
                for t, c in zip(tiers, counts):
                    hit_pages[t][i] += c
                got += ok
                if ok < m:
                    get_short += 1
                    get_short_pages += m - ok
                    break
            # 3. store what was not served
            for b in range(got, n, rm.BATCH_PAGES):
                batch = keys[b:b + rm.BATCH_PAGES]
                m = len(batch)
                for s in range(m):
                    pool.stamp(s, batch[s])
                t0 = perf()
                stored = backend.put(batch, range(m), list(range(b, b + m)))
                dt = perf() - t0
                lat["put"].append(dt)
                put_time += dt
                put_bytes += stored * page
                put_failed += m - stored
            hits_so_far += got * rm.TOKENS_PER_PAGE
            tokens_so_far += req.input_length
            bar.update_to(i + 1, f"hit {hits_so_far / max(1, tokens_so_far) * 100:4.1f}%")
        wall = perf() - t_start
        counters = backend.counters()
    finally:
        backend.close()
        pool.close()
        shutil.rmtree(workdir, ignore_errors=True)
    bar.close(f"hit {hits_so_far / max(1, tokens_so_far) * 100:4.1f}%  {wall:.0f}s")

    # -- accounting
    tpp = rm.TOKENS_PER_PAGE
    inputs = np.array([r.input_length for r in reqs], dtype=np.int64)
    ceil_pages = np.asarray(ceiling, dtype=np.int64)
    total_hit_pages = sum(hit_pages.values())
    hit_tokens = {t: int(v.sum()) * tpp for t, v in hit_pages.items()}
    hit_tokens["total"] = int(total_hit_pages.sum()) * tpp

    # per-tier GB/s of the replay's own get batches: single-tier batches directly; for mixed
    # batches the DRAM share is taken at the DRAM rate and the rest of the time is NVMe's
    rec = np.asarray(get_rec, dtype=float).reshape(-1, 1 + len(tiers))
    tier_gbps = {}
    if len(rec):
        if len(tiers) == 1:
            tier_gbps[tiers[0]] = (rec[:, 1].sum() * page / rec[:, 0].sum() / 1e9) if rec[:, 0].sum() > 0 else None
        else:
            d, nv_ = rec[:, 1], rec[:, 2]   # DRAM, then the capacity tier (nvme or file)
            pure = (nv_ == 0) & (d > 0)
            dram_bw = d[pure].sum() * page / rec[pure, 0].sum() if pure.any() else None
            tier_gbps["dram"] = dram_bw / 1e9 if dram_bw else None
            mixed = nv_ > 0
            if mixed.any():
                t_nv = rec[mixed, 0] - (d[mixed] * page / dram_bw if dram_bw else 0.0)
                t_nv = np.maximum(t_nv, 1e-9)
                tier_gbps[tiers[1]] = nv_[mixed].sum() * page / t_nv.sum() / 1e9
            else:
                tier_gbps[tiers[1]] = None

    # timeline over trace time
    t_rel = np.array([(r.timestamp_ms - ts0) / 1000.0 for r in reqs])
    edges = np.linspace(0, max(t_rel[-1], 1e-9), TIMELINE_BUCKETS + 1)
    idx = np.clip(np.searchsorted(edges, t_rel, side="right") - 1, 0, TIMELINE_BUCKETS - 1)
    tok = np.bincount(idx, weights=inputs, minlength=TIMELINE_BUCKETS)
    safe = np.where(tok > 0, tok, 1)
    timeline = {"t_min": ((edges[:-1] + edges[1:]) / 2 / 60).round(3).tolist(),
                "tokens": tok.astype(int).tolist(),
                "hit_rate": {t: (np.bincount(idx, weights=hit_pages[t] * tpp, minlength=TIMELINE_BUCKETS) / safe).round(4).tolist() for t in tiers},
                "total_rate": (np.bincount(idx, weights=total_hit_pages * tpp, minlength=TIMELINE_BUCKETS) / safe).round(4).tolist(),
                "ceiling_rate": (np.bincount(idx, weights=ceil_pages * tpp, minlength=TIMELINE_BUCKETS) / safe).round(4).tolist()}

    return {"name": name, "description": describe(name), "tiers": tiers,
            "requests": n_req, "input_tokens": int(inputs.sum()),
            "ceiling_tokens": int(ceil_pages.sum()) * tpp, "hit_tokens": hit_tokens,
            "hit_rate": hit_tokens["total"] / int(inputs.sum()),
            "of_ceiling": hit_tokens["total"] / (int(ceil_pages.sum()) * tpp) if ceil_pages.sum() else None,
            "bytes": {"read": counters["read"], "written": counters["written"]},
            "gbps": {"get": bc.gbps(get_bytes, get_time), "put": bc.gbps(put_bytes, put_time), "get_by_tier": tier_gbps},
            "latency": {k: lat_summary(v) for k, v in lat.items()},
            "verify_errors": verify_errors, "short_gets": get_short, "short_get_pages": get_short_pages,
            "put_failures": put_failed,
            "max_lag_s": round(late_s, 3) if args.speed > 0 else None,
            "wall_s": wall, "backend_stats": counters.get("stats"),
            "timeline": timeline,
            "_per_request": {"hit_pages": hit_pages, "inputs": inputs}}


def add_ttft(result: dict, model: rm.ModelShape, gbps: dict) -> None:
    pr = result["_per_request"]
    inputs, hp = pr["inputs"], pr["hit_pages"]
    tiers = list(hp)
    ttft = np.empty(len(inputs))
    for i in range(len(inputs)):
        ttft[i] = rm.ttft_s(model, int(inputs[i]), {t: int(hp[t][i]) * rm.TOKENS_PER_PAGE for t in tiers}, gbps)
    ms = ttft * 1e3
    nocache = np.array([(rm.TTFT_OVERHEAD_S + rm.compute_s(model, int(x), 0)) * 1e3 for x in inputs])
    q = np.linspace(0, 100, CDF_POINTS)
    result["ttft"] = {"tier_gbps": gbps, "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
                      "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
                      "no_cache_mean_ms": float(nocache.mean()),
                      "cdf_ms": np.percentile(ms, q).round(3).tolist(),
                      "no_cache_cdf_ms": np.percentile(nocache, q).round(3).tolist()}


# ---- main --------------------------------------------------------------------------------------

def parse_tier_gbps(text: Optional[str]) -> dict:
    out = {}
    for part in (text or "").split(","):
        if part.strip():
            k, _, v = part.partition("=")
            if k.strip() not in ("dram", "nvme", "file") or not v:
                raise ValueError(f"--tier-gbps: expected tier=GB/s with tier dram, nvme or file, got {part!r}")
            out[k.strip()] = float(v)
    return out


_WORKER: dict = {}


def _worker_run(name: str) -> tuple:
    """One configuration in a worker process (``--jobs`` > 1); the trace came with the fork."""
    w = _WORKER
    try:
        return name, replay_one(name, w["trace"], w["ceiling"], w["sizes"], w["model"], w["args"], w["workdir"],
                                line_progress=True), None
    except Exception:
        return name, None, traceback.format_exc()


EXPECTED_COST = {"hicache-file": 0, "ours-dram+nvme/s3fifo": 1, "ours-dram+nvme/lru": 2,
                 "ours-dram+nvme/prefix_lru": 2, "ours-nvme": 3}


def run_configs(names, trace, ceiling, sizes, model, args, workdir, override) -> tuple:
    """Calibrate (sequentially), then replay every configuration, ``args.jobs`` at a time."""
    calib = {}
    for name in names:
        kind = calib_kind(name)
        if kind in calib:
            continue
        if all(t in override for t in CALIB_TIERS[kind]):
            calib[kind] = {}          # every tier's bandwidth given: nothing to measure
            continue
        try:
            t0 = time.perf_counter()
            calib[kind] = calibrate(kind, model.page_bytes, workdir)
            bc.progress(f"calibration {kind} at {bc.fmt_size(model.page_bytes)} pages: "
                        + ", ".join(f"{t} {v:.2f} GB/s" if v else f"{t} n/a" for t, v in calib[kind].items())
                        + f" ({time.perf_counter() - t0:.1f}s)")
        except Exception as e:  # a calibration failure should not lose the replay
            bc.progress(f"calibration {kind} failed: {e}")
            calib[kind] = {}

    done, failed = {}, []
    if args.jobs <= 1 or len(names) == 1:
        for name in names:
            try:
                done[name] = replay_one(name, trace, ceiling, sizes, model, args, workdir)
            except Exception:
                traceback.print_exc()
                failed.append(name)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        _WORKER.update(trace=trace, ceiling=ceiling, sizes=sizes, model=model, args=args, workdir=workdir)
        order = sorted(names, key=lambda n: EXPECTED_COST.get(n, 9))   # longest first
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("fork")) as ex:
            for name, r, err in ex.map(_worker_run, order):
                if r is None:
                    print(err, file=sys.stderr)
                    failed.append(name)
                else:
                    done[name] = r
    results = []
    for name in names:
        r = done.get(name)
        if r is None:
            continue
        kind = calib_kind(name)
        gb = dict(calib[kind])
        for t in r["tiers"]:
            if not gb.get(t):
                gb[t] = r["gbps"]["get_by_tier"].get(t)   # fall back to the replay's own figure
        gb.update({t: v for t, v in override.items() if t in r["tiers"]})
        r["calibrated_gbps"] = calib[kind]
        add_ttft(r, model, gb)
        results.append(r)
    return results, failed


def title_of(doc: dict) -> str:
    s = doc["sizes"]
    return (f"{os.path.basename(doc['trace']['path'])}, {doc['trace']['requests']} req, {doc['model']['name']}, "
            f"DRAM {bc.fmt_size(s['dram_real_bytes'])} / NVMe {bc.fmt_size(s['nvme_real_bytes'])} (real)")


def write_report(doc: dict, output: str, plots: bool = True) -> list:
    """Print the table and targets; write replay.json, results.md and the PNGs into ``output``."""
    results, sizes = doc["results"], doc["sizes"]
    title = title_of(doc)
    jobs = doc["args"].get("jobs", 1)
    print(f"\nReplay of {title}; scale 1/{sizes['scale']:g} ({bc.fmt_size(sizes['page_bytes'])} pages); "
          f"infinite-cache ceiling {results[0]['ceiling_tokens'] / results[0]['input_tokens'] * 100:.1f}% of "
          f"{results[0]['input_tokens']:,} input tokens\n")
    print_table(results)
    for line in failure_lines(results):
        print(f"FAILED  {line}")
    targets = doc["targets"]
    if targets:
        print()
        for t in targets:
            print(f"target {'HOLDS ' if t['holds'] else 'MISSED'}  {t['target']}: {t['detail']}")
    src = (f"what-if, {doc['ttft_what_if']} given, the rest calibrated" if doc.get("ttft_what_if")
           else "calibrated at the real page size")
    ttft_note = f"TTFT model tier GB/s ({src}): " + "; ".join(
        f"{r['name']} " + ",".join(f"{t}={v:.2f}" for t, v in r["ttft"]["tier_gbps"].items() if v) for r in results)
    nocache = results[0]["ttft"]["no_cache_mean_ms"]
    print(f"\n{ttft_note}\nTTFT with no cache at all (recompute every token): mean {nocache:.0f} ms")

    os.makedirs(output, exist_ok=True)
    files = []
    per = {r["name"]: r.pop("_per_request") for r in results if "_per_request" in r}
    if per:
        # per-request hit pages, so --report --tier-gbps can model TTFT for other hardware
        arrays = {"inputs": next(iter(per.values()))["inputs"]}
        for name, pr in per.items():
            for t, v in pr["hit_pages"].items():
                arrays[f"{name}|{t}"] = v.astype(np.int32)
        npath = os.path.join(output, "per_request.npz")
        np.savez_compressed(npath, **arrays)
        files.append(npath)
    jpath = os.path.join(output, "replay.json")
    with open(jpath, "w") as f:
        json.dump(doc, f, indent=1, default=float)
    files.append(jpath)
    mpath = os.path.join(output, "results.md")
    with open(mpath, "w") as f:
        f.write(f"# Replay: {title}\n\nScale 1/{sizes['scale']:g} ({bc.fmt_size(sizes['page_bytes'])} pages); "
                f"DRAM {sizes['dram_pages']:,} pages, NVMe {sizes['nvme_pages']:,} pages in every config; "
                f"whole run {doc['wall_s'] / 60:.1f} min ({jobs} job{'s' if jobs != 1 else ''}).\n\n")
        f.write(markdown_table(results) + "\n\n")
        for line in failure_lines(results):
            f.write(f"- **FAILED** {line}\n")
        for t in targets:
            f.write(f"- target {'**holds**' if t['holds'] else '**missed**'}: {t['target']}: {t['detail']}\n")
        f.write(f"\n{ttft_note}; no cache: mean {nocache:.0f} ms.\n")
    files.append(mpath)
    if plots:
        try:
            files += plot_all(results, output, title, ttft_only=bool(doc.get("ttft_what_if")))
        except Exception as e:
            print(f"replay: plots failed: {e}", file=sys.stderr)
    print(f"\nwrote {', '.join(os.path.relpath(x) for x in files)}  (run took {doc['wall_s']:.0f}s)")
    return files


def policy_mode(args, trace, sizes, model, override) -> int:
    """``--prefetch-policy``: one replay per policy (replay_policies.py)."""
    os.makedirs(args.workdir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="mooncake-hicache-replay-", dir=args.workdir)
    try:
        return run_policies(parse_policies(args.prefetch_policy), trace, sizes, model, args, workdir, override)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("trace", help="Mooncake-format trace (JSON lines with timestamp, input_length, output_length, hash_ids); "
                   "with --report, a replay.json to render again")
    p.add_argument("--model", choices=sorted(rm.MODELS), default="0.5b", help="KV shape: bytes per token (default 0.5b: 12 KiB/token)")
    p.add_argument("--scale", type=float, default=None, help="divide page bytes (and tier bytes, keeping page counts) by S (default: 64 for 0.5b, 512 for 8b)")
    p.add_argument("--max-requests", type=int, default=None, help="replay only the first N requests")
    p.add_argument("--speed", type=float, default=0.0, help="replay X times faster than the trace's timestamps; 0 = as fast as possible (default)")
    p.add_argument("--output", default=os.path.join(HERE, "out", "replay"), help="directory for replay.json, results.md and the PNGs (default bench/out/replay)")
    p.add_argument("--configs", default="default", help=f"comma-separated subset of: {', '.join(ALL_CONFIGS)} (default: all but ours-nvme)")
    p.add_argument("--dram", default=None, help="real (unscaled) DRAM tier capacity, e.g. 32GiB (default per model: 32GiB for 0.5b, 256GiB for 8b)")
    p.add_argument("--nvme", default=None, help="real NVMe tier capacity (default 4x --dram)")
    p.add_argument("--workdir", default="/var/tmp", help="where the NVMe data file and HiCacheFile's files go (default /var/tmp)")
    p.add_argument("--tier-gbps", default=None, help="TTFT model: use these tier bandwidths instead of measuring, e.g. dram=20,nvme=7,file=2")
    p.add_argument("--jobs", type=int, default=1, help="configurations replayed at once, one process each (default 1: clean timings; "
                   "hit figures do not depend on it)")
    p.add_argument("--prefetch-policy", default=None, metavar="LIST",
                   help="replay once per prefetch policy instead of per configuration (our DRAM + NVMe store), e.g. "
                        "prefix_order,none,cost_aware,recompute ('recompute': report no hit; any "
                        "package.module:Class policy too); see bench/README.md")
    p.add_argument("--prefetch-batch-pages", type=int, default=16, help="prefetch.batch_pages of the policies (default 16)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    p.add_argument("--report", action="store_true", help="TRACE is a replay.json: print its table and write results.md and plots into --output")
    args = p.parse_args(argv)

    if args.report:
        try:
            with open(args.trace) as f:
                doc = json.load(f)
            if doc.get("bench") != "replay":
                raise ValueError("not a replay.json")
        except (OSError, ValueError) as e:
            print(f"replay: cannot read {args.trace}: {e}", file=sys.stderr)
            return 2
        doc["targets"] = check_targets(doc["results"])
        same_dir = os.path.abspath(args.output) == os.path.dirname(os.path.abspath(args.trace))   # rewrite in place
        if args.tier_gbps:
            # what-if: model TTFT again with other tier bandwidths, from the stored per-request hits
            try:
                override = parse_tier_gbps(args.tier_gbps)
                per = np.load(os.path.join(os.path.dirname(os.path.abspath(args.trace)), "per_request.npz"))
            except (ValueError, OSError) as e:
                print(f"replay: --report --tier-gbps needs per_request.npz beside the JSON: {e}", file=sys.stderr)
                return 2
            if same_dir:
                print("replay: --report --tier-gbps writes a what-if report; give another --output", file=sys.stderr)
                return 2
            model = rm.MODELS[doc["model"]["name"]]
            for r in doc["results"]:
                r["_per_request"] = {"inputs": per["inputs"],
                                     "hit_pages": {t: per[f"{r['name']}|{t}"].astype(np.int64) for t in r["tiers"]}}
                gb = dict(r["ttft"]["tier_gbps"])
                gb.update({t: v for t, v in override.items() if t in r["tiers"]})
                add_ttft(r, model, gb)
                r.pop("_per_request")
            doc["ttft_what_if"] = override
        write_report(doc, args.output, plots=not args.no_plots)
        return 0

    model = rm.MODELS[args.model]
    try:
        scale = args.scale if args.scale is not None else float(model.default_scale)
        if scale <= 0:
            raise ValueError("--scale must be positive")
        if args.speed < 0:
            raise ValueError("--speed must be >= 0")
        if args.max_requests is not None and args.max_requests <= 0:
            raise ValueError("--max-requests must be positive")
        if args.jobs < 1:
            raise ValueError("--jobs must be >= 1")
        dram_real = bc.parse_size(args.dram) if args.dram else model.default_dram
        nvme_real = bc.parse_size(args.nvme) if args.nvme else model.nvme_ratio * dram_real
        override = parse_tier_gbps(args.tier_gbps)
        names = DEFAULT_CONFIGS if args.configs == "default" else (ALL_CONFIGS if args.configs == "all" else
                                                                   [c.strip() for c in args.configs.split(",") if c.strip()])
        bad = [c for c in names if c not in ALL_CONFIGS]
        if bad:
            raise ValueError(f"unknown config(s) {', '.join(bad)}; choose from {', '.join(ALL_CONFIGS)}")
        if args.prefetch_policy is not None:
            parse_policies(args.prefetch_policy)
            if "file" in override:
                raise ValueError("--tier-gbps: the prefetch policy replay has tiers dram and nvme only")
    except ValueError as e:
        print(f"replay: {e}", file=sys.stderr)
        return 2

    t_all = time.perf_counter()
    try:
        trace = Trace(args.trace, args.max_requests)
    except (OSError, ValueError) as e:
        print(f"replay: cannot read the trace: {e}", file=sys.stderr)
        return 2
    ceiling = trace.ceiling_pages()
    sizes = plan(model, scale, dram_real, nvme_real)
    summ = trace.summary()
    bc.progress(f"trace {os.path.basename(args.trace)}: {summ['requests']} requests over {summ['duration_s'] / 60:.1f} min, "
                f"{summ['input_tokens']:,} input tokens, {summ['pages']:,} pages; infinite-cache ceiling "
                f"{sum(ceiling) * rm.TOKENS_PER_PAGE / summ['input_tokens'] * 100:.1f}% of tokens")
    bc.progress(f"model {model.name}: {bc.fmt_size(model.page_bytes)} pages, scale 1/{scale:g} -> {bc.fmt_size(sizes['page_bytes'])}; "
                f"DRAM {bc.fmt_size(dram_real)} real = {sizes['dram_pages']:,} pages ({bc.fmt_size(sizes['dram_capacity'])} here), "
                f"NVMe {bc.fmt_size(nvme_real)} real = {sizes['nvme_pages']:,} pages ({bc.fmt_size(sizes['nvme_capacity'])} here)")

    if args.prefetch_policy is not None:
        return policy_mode(args, trace, sizes, model, override)

    if "hicache-file" in names:
        why = sglang_available()
        if why:
            print(f"note: skipping the hicache-file baseline: sglang is not importable ({why}); "
                  "install it (pip install sglang) to compare with SGLang's HiCacheFile", file=sys.stderr)
            names = [c for c in names if c != "hicache-file"]

    os.makedirs(args.workdir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="mooncake-hicache-replay-", dir=args.workdir)
    try:
        results, failed = run_configs(names, trace, ceiling, sizes, model, args, workdir, override)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not results:
        print("replay: no configuration completed", file=sys.stderr)
        return 1
    doc = {"bench": "replay", "trace": summ, "model": {"name": model.name, "shape_of": model.hf_name,
                                                     "bytes_per_token": model.bytes_per_token, "page_bytes": model.page_bytes},
           "sizes": sizes, "args": dict(vars(args)), "ttft_model": rm.constants(),
           "machine": bc.machine_info(args.workdir), "targets": check_targets(results), "failed": failed,
           "wall_s": round(time.perf_counter() - t_all, 1), "results": results}
    write_report(doc, args.output, plots=not args.no_plots)
    problems = failure_lines(results) + [f"{name}: crashed (traceback above)" for name in failed]
    if problems:
        print("replay: FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
