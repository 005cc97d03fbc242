"""Prefetch policies in the trace replay: ``bench/replay.py TRACE --prefetch-policy a,b,c``.

Each policy replays the trace once, on its own fresh store (our DRAM + NVMe store, in-process, LRU,
the replay's usual tier sizes), through the same :class:`~mooncake_hicache.policies.Prefetcher`
the SGLang backend uses. Per request it does what SGLang 0.5.23 does with its storage backend:

1. **hit query**: ``Prefetcher.leading_pages`` on the request's pages, 128 a call, stopping at the
   first call that reports fewer than it was asked about (SGLang's ``_storage_hit_query``); the
   policy decides what is reported and starts its prefetch (``Store.prefetch``);
2. **threshold**: a hit shorter than SGLang's ``prefetch_threshold`` (256 tokens) is dropped
   before any read, as SGLang does;
3. **load**: ``batch_get_into`` of the reported pages, 128 a call (every page checked by its stamp);
4. **prefill** of the tokens not loaded: *modeled* (``replay_model.compute_s``);
5. **backup**: the pages after the loaded prefix that the store does not hold, and the declined
   ones (SGLang recomputed them), are written, as our SGLang backend does
   (``Prefetcher.to_write``): a declined page lands in DRAM for the next request.

**Time to first token** of a request, judged by the store calls it made, never by the policy's
estimates::

    TTFT = overhead + calls + scale-up + prefill (modeled)

* ``calls``: the measured wall time of the request's real store calls at the replay's page size:
  the hit queries (locate/exists, planning, prefetch submission) and the gets (including any wait
  for a promotion in flight);
* ``scale-up``: the replay moves pages ``--scale`` times smaller than the model's; the bytes it did
  not move are charged at the tier's GB/s measured in the same run at the real page size (the
  calibration pass; or ``--tier-gbps``): per page a get served, ``(real - replayed page bytes) /
  GB/s`` of its tier. A page counts as NVMe when it was on NVMe when SGLang asked or when the get
  read it from NVMe: a page a prefetch promoted meanwhile still had to come off the device, and the
  replay goes straight from the hit query to the get (no scheduling gap in which a prefetch could
  hide), so prefetch gets no credit it did not earn in measured time. With ``--scale 1`` the
  scale-up term is 0 and every load figure is measured;
* ``prefill``: ``compute(input - loaded | loaded)`` of ``replay_model`` (H100, 50 % MFU).

The policy learns its transfer estimates only from what the harness charged for each get (the
same ``observe_get`` the SGLang backend calls with its measured get time). The baseline
``recompute`` (report nothing, recompute every token) is a policy of this module, loaded by its
dotted path ``replay_policies:RecomputeAllPolicy`` like a user's policy.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Optional, Sequence

import numpy as np

import _bench_common as bc
import replay_model as rm
from replay_backends import HostPool, StoreBackend, calibrate
from replay_report import pct

from mooncake_hicache.config import load_config
from mooncake_hicache.policies import (PrefetchPlan, Prefetcher, PrefetchPolicy, PrefetchRequest,
                                       SGLangPrefetchSettings, Tier)

BASELINE = "recompute"
POLICY_PATHS = {BASELINE: "replay_policies:RecomputeAllPolicy"}
PARITY_BAND = (0.5, 1.0)      # "the slow tier within 2x of recompute parity": parity / 2 .. parity
TARGET_SLACK = 1.05           # "never worse than the better baseline by more than 5 %"
CDF_POINTS = 200


class RecomputeAllPolicy(PrefetchPolicy):
    """Baseline: report no hit; SGLang recomputes every token."""

    name = BASELINE
    wants_locations = False
    prefetches = False

    def plan(self, request: PrefetchRequest) -> PrefetchPlan:
        return PrefetchPlan(report=0)


def parse_policies(text: str) -> list:
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"--prefetch-policy: give distinct policy names separated by commas, got {text!r}")
    return names


# ---- one policy ------------------------------------------------------------------------------

class _Run:
    """The per-request state of one policy's replay."""

    def __init__(self, name: str, sizes: dict, model: rm.ModelShape, gbps: dict, workdir: str, args):
        self.name, self.model, self.gbps = name, model, gbps
        self.page, self.real_page = sizes["page_bytes"], model.page_bytes
        self.pool = HostPool(self.page)
        dram = {"capacity": sizes["dram_capacity"], "slab_size": sizes["dram_slab"], "eviction": "lru"}
        nvme = {"path": os.path.join(workdir, "nvme.data"), "capacity": sizes["nvme_capacity"],
                "region_size": sizes["nvme_region"]}
        self.backend = StoreBackend(self.pool, dram, nvme)
        self.store = self.backend.store
        cfg = load_config({"prefetch": {"policy": POLICY_PATHS.get(name, name), "batch_pages": args.prefetch_batch_pages,
                                        "cost_model": {"preset": model.name}}}, env={}).prefetch
        self.settings = SGLangPrefetchSettings()
        self.prefetcher = Prefetcher(self.store, cfg, settings=self.settings)
        self.sizes = [self.page] * self.pool.slots
        self.verify_errors = self.short_gets = self.put_failures = self.revoked_tokens = 0

    def hit_query(self, keys: list) -> tuple:
        """(pages reported, measured seconds) of SGLang's hit query on the request."""
        reported, spent = 0, 0.0
        for b in range(0, len(keys), rm.BATCH_PAGES):
            batch = keys[b:b + rm.BATCH_PAGES]
            t0 = time.perf_counter()
            k = self.prefetcher.leading_pages(batch, 1, offset_pages=b, page_tokens=rm.TOKENS_PER_PAGE,
                                              page_bytes=self.real_page, prev_key=keys[b - 1] if b else None,
                                              last_key=batch[-1])
            spent += time.perf_counter() - t0
            reported += k
            if k < len(batch):
                break
        return reported, spent

    def load(self, keys: list, reported: int, nvme_at_query: np.ndarray) -> tuple:
        """(pages loaded, measured seconds, scale-up seconds, {tier: pages})."""
        got, measured, scaled = 0, 0.0, 0.0
        by_tier = {"dram": 0, "nvme": 0}
        for b in range(0, reported, rm.BATCH_PAGES):
            batch = keys[b:min(b + rm.BATCH_PAGES, reported)]
            m = len(batch)
            for s in range(m):
                self.pool.clear_stamp(s)
            t = self.store.stats()["tiering"]
            t0 = time.perf_counter()
            codes = self.store.batch_get_into(batch, [self.pool.ptr(s) for s in range(m)], self.sizes[:m])
            dt = time.perf_counter() - t0
            nvme_served = self.store.stats()["tiering"]["nvme_hits"] - t["nvme_hits"]
            ok = 0
            while ok < m and codes[ok] == self.page and self.pool.check(ok, batch[ok]):
                ok += 1
            self.verify_errors += sum(1 for s in range(ok, m) if codes[s] == self.page and not self.pool.check(s, batch[s]))
            nvme = min(ok, max(int(nvme_at_query[b:b + ok].sum()), nvme_served))
            extra = self.real_page - self.page
            up = (ok - nvme) * extra / (self.gbps["dram"] * 1e9) + nvme * extra / (self.gbps["nvme"] * 1e9)
            if ok == m:
                self.prefetcher.observe_get(batch, m * self.real_page, dt + up)
            by_tier["dram"] += ok - nvme
            by_tier["nvme"] += nvme
            got, measured, scaled = got + ok, measured + dt, scaled + up
            if ok < m:
                self.short_gets += 1
                break
        return got, measured, scaled, by_tier

    def back_up(self, keys: list, got: int) -> None:
        """Write the pages after the loaded prefix that the store does not hold."""
        for b in range(got, len(keys), rm.BATCH_PAGES):
            batch = keys[b:b + rm.BATCH_PAGES]
            todo = self.prefetcher.to_write(batch, self.store.batch_is_exist(batch))   # as our SGLang backend
            if not todo:
                continue
            for s, i in enumerate(todo):
                self.pool.stamp(s, batch[i])
            codes = self.store.batch_put_from([batch[i] for i in todo], [self.pool.ptr(s) for s in range(len(todo))],
                                              self.sizes[:len(todo)], depths=[b + i for i in todo])
            self.put_failures += sum(1 for c in codes if c != 0)

    def close(self) -> None:
        self.backend.close()
        self.pool.close()


def replay_policy(name: str, trace, sizes: dict, model: rm.ModelShape, gbps: dict, args, workdir: str) -> dict:
    workdir = os.path.join(workdir, "policy-" + name.replace(":", "_").replace(".", "_"))
    os.makedirs(workdir, exist_ok=True)
    run = _Run(name, sizes, model, gbps, workdir, args)
    reqs = trace.requests
    n = len(reqs)
    cols = {k: np.zeros(n) for k in ("calls_s", "scaleup_s", "prefill_s", "ttft_s", "loaded_pages",
                                     "nvme_pages", "reported_pages")}
    bar = bc.Bar(n, f"policy {name:<14}", unit="req")
    t_start = time.perf_counter()
    try:
        st0 = run.store.stats()["tiering"]
        for i, req in enumerate(reqs):
            _one_request(run, trace.page_keys(req), req.input_length, i, cols)
            if (i + 1) % 50 == 0 or i + 1 == n:
                bar.update_to(i + 1, f"TTFT mean {cols['ttft_s'][:i + 1].mean() * 1e3:.0f} ms")
        wall = time.perf_counter() - t_start
        st1 = run.store.stats()
        pstats = run.prefetcher.stats()
    finally:
        run.close()
        shutil.rmtree(workdir, ignore_errors=True)
    bar.close(f"{wall:.0f}s")
    return _result(name, run, reqs, cols, st0, st1, pstats, wall)


def _one_request(run: _Run, keys: list, input_tokens: int, i: int, cols: dict) -> None:
    reported, query_s = run.hit_query(keys)
    if reported * rm.TOKENS_PER_PAGE < run.settings.threshold_tokens:
        run.revoked_tokens += reported * rm.TOKENS_PER_PAGE   # SGLang drops a hit this short
        reported = 0
    loc = np.asarray(run.store.batch_locate(keys[:reported]) if reported else [], dtype=np.int64)
    got, load_s, up_s, by_tier = run.load(keys, reported, loc == int(Tier.NVME))
    run.back_up(keys, got)
    tpp = rm.TOKENS_PER_PAGE
    prefill = rm.compute_s(run.model, input_tokens - got * tpp, got * tpp)
    cols["calls_s"][i] = query_s + load_s
    cols["scaleup_s"][i] = up_s
    cols["prefill_s"][i] = prefill
    cols["ttft_s"][i] = rm.TTFT_OVERHEAD_S + query_s + load_s + up_s + prefill
    cols["loaded_pages"][i] = got
    cols["nvme_pages"][i] = by_tier["nvme"]
    cols["reported_pages"][i] = reported


def _result(name: str, run: _Run, reqs, cols: dict, st0: dict, st1: dict, pstats: dict, wall: float) -> dict:
    tpp, real = rm.TOKENS_PER_PAGE, run.real_page
    ms = cols["ttft_s"] * 1e3
    inputs = np.array([r.input_length for r in reqs], dtype=np.int64)
    t1 = st1["tiering"]
    loaded = int(cols["loaded_pages"].sum())
    q = np.linspace(0, 100, CDF_POINTS)
    return {
        "name": name, "requests": len(reqs), "input_tokens": int(inputs.sum()),
        "ttft_ms": {"mean": float(ms.mean()), "p50": pct(ms, 50), "p90": pct(ms, 90), "p99": pct(ms, 99),
                    "cdf": np.percentile(ms, q).round(3).tolist()},
        "ttft_parts_mean_ms": {"calls_measured": float(cols["calls_s"].mean() * 1e3),
                               "scale_up": float(cols["scaleup_s"].mean() * 1e3),
                               "prefill_modeled": float(cols["prefill_s"].mean() * 1e3),
                               "overhead": rm.TTFT_OVERHEAD_S * 1e3},
        "hit_tokens": loaded * tpp, "hit_tokens_nvme": int(cols["nvme_pages"].sum()) * tpp,
        "declined_tokens": int(pstats.get("declined_tokens", 0)), "revoked_tokens": run.revoked_tokens,
        "probe_tokens": int(pstats.get("probe_pages", 0)) * tpp,
        "bytes_real_gb": {"loaded": loaded * real / 1e9,
                          "prefetched": (t1["prefetch_done"] - st0["prefetch_done"]) * real / 1e9,
                          "written": (t1["puts"] - st0["puts"]) * real / 1e9,
                          "demoted": (t1["demoted"] - st0["demoted"]) * real / 1e9},
        "prefetcher": pstats, "plan_us_mean": pstats.get("plan_us_mean"),
        "verify_errors": run.verify_errors, "short_gets": run.short_gets, "put_failures": run.put_failures,
        "wall_s": round(wall, 1),
    }


# ---- targets and report ----------------------------------------------------------------------

def parity_gbps(model: rm.ModelShape, trace) -> float:
    """The tier speed at which loading a token costs what recomputing it does, for a token at the
    trace's mean prompt middle (the recompute cost grows with the position)."""
    mid = int(np.mean([r.input_length for r in trace.requests]) / 2)
    per_token = rm.compute_s(model, 1, mid)
    return model.bytes_per_token / per_token / 1e9


def check_targets(results: Sequence[dict], nvme_gbps: float, parity: float) -> list:
    by = {r["name"]: r for r in results}
    ca, load_all = by.get("cost_aware"), by.get("prefix_order") or by.get("none")
    base = by.get(BASELINE)
    out = []
    if ca and load_all and base:
        for q in ("p50", "p99"):
            best = min(load_all["ttft_ms"][q], base["ttft_ms"][q])
            holds = ca["ttft_ms"][q] <= TARGET_SLACK * best
            out.append({"target": f"cost_aware {q} <= 1.05 x min({load_all['name']}, {BASELINE})", "holds": holds,
                        "detail": f"{ca['ttft_ms'][q]:.1f} ms vs {best:.1f} ms ({ca['ttft_ms'][q] / best:.3f}x)"})
    ratio = nvme_gbps / parity if parity else None
    if ca and by.get("prefix_order") and ratio is not None:
        po = by["prefix_order"]["ttft_ms"]["mean"]
        applies = PARITY_BAND[0] <= ratio <= PARITY_BAND[1]
        detail = (f"{ca['ttft_ms']['mean']:.1f} vs {po:.1f} ms; NVMe {nvme_gbps:.2f} GB/s = {ratio:.2f}x parity "
                  f"({parity:.2f} GB/s)")
        out.append({"target": "cost_aware mean < prefix_order mean (NVMe slower than recompute parity, by 2x at most)",
                    "holds": (ca["ttft_ms"]["mean"] < po) if applies else None,
                    "detail": detail if applies else detail + ": outside the band, not applicable"})
    return out


HEADERS = ["policy", "TTFT mean/p50/p99 ms", "calls ms", "scale-up ms", "prefill ms (modeled)", "hit %",
           "hit nvme %", "declined %", "loaded GB", "prefetched GB", "written GB", "short gets", "plan us", "wall s"]


def table_rows(results: Sequence[dict]) -> list:
    rows = []
    for r in results:
        t, parts, gb, tok = r["ttft_ms"], r["ttft_parts_mean_ms"], r["bytes_real_gb"], r["input_tokens"]
        rows.append([r["name"], f"{t['mean']:.0f}/{t['p50']:.0f}/{t['p99']:.0f}", f"{parts['calls_measured']:.2f}",
                     f"{parts['scale_up']:.1f}", f"{parts['prefill_modeled']:.1f}",
                     f"{r['hit_tokens'] / tok * 100:.1f}", f"{r['hit_tokens_nvme'] / tok * 100:.1f}",
                     f"{r['declined_tokens'] / tok * 100:.1f}", f"{gb['loaded']:.1f}", f"{gb['prefetched']:.1f}",
                     f"{gb['written']:.1f}", str(r["short_gets"]),
                     "-" if r["plan_us_mean"] is None else f"{r['plan_us_mean']:.0f}",
                     f"{r['wall_s']:.0f}"])
    return rows


def markdown(results: Sequence[dict]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join(["---"] + ["---:"] * (len(HEADERS) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines)


def failures(results: Sequence[dict]) -> list:
    """Wrong bytes and pages a put did not store fail the run. A short get (a page gone between
    the hit query and the get: with NVMe full, the get's own promotions can demote pages whose
    region reclaim drops a later page of the same request) is SGLang's partial hit: counted
    (``short_gets``), the rest recomputed, not a failure."""
    return [f"{r['name']}: {r['verify_errors']} wrong pages, {r['put_failures']} failed puts" for r in results
            if r["verify_errors"] or r["put_failures"]]


def plot_cdf(results: Sequence[dict], path: str, title: str) -> Optional[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    q = np.linspace(0, 100, CDF_POINTS) / 100
    for r in results:
        ax.plot(r["ttft_ms"]["cdf"], q, label=r["name"])
    ax.set_xscale("log")
    ax.set_xlabel("TTFT, ms (measured store calls + scale-up + modeled prefill)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report(doc: dict, output: str, plots: bool) -> list:
    results = doc["results"]
    title = (f"{os.path.basename(doc['trace']['path'])}, {doc['trace']['requests']} req, {doc['model']}, "
             f"scale 1/{doc['sizes']['scale']:g}; DRAM {doc['tier_gbps']['dram']:.2f} GB/s, "
             f"NVMe {doc['tier_gbps']['nvme']:.2f} GB/s ({doc['tier_gbps_source']})")
    print(f"\nPrefetch policies: {title}\n")
    bc.print_table(HEADERS, table_rows(results))
    lines = [f"FAILED  {f}" for f in failures(results)]
    for t in doc["targets"]:
        state = "n/a   " if t["holds"] is None else ("HOLDS " if t["holds"] else "MISSED")
        lines.append(f"target {state}  {t['target']}: {t['detail']}")
    print("\n" + "\n".join(lines) if lines else "")
    print(f"\nTTFT = {rm.TTFT_OVERHEAD_S * 1e3:.0f} ms + calls (measured) + scale-up (bytes the 1/{doc['sizes']['scale']:g} "
          f"pages did not move, at the tier GB/s above) + prefill (modeled); NVMe parity {doc['parity_gbps']:.2f} GB/s")
    os.makedirs(output, exist_ok=True)
    import json
    files = [os.path.join(output, "prefetch_policies.json"), os.path.join(output, "prefetch_policies.md")]
    with open(files[0], "w") as f:
        json.dump(doc, f, indent=1, default=float)
    with open(files[1], "w") as f:
        f.write(f"# Prefetch policies: {title}\n\n{markdown(results)}\n\n")
        f.write("".join(f"- {line}\n" for line in lines))
        f.write(f"\nTTFT = overhead + calls (measured) + scale-up + prefill (modeled); NVMe parity "
                f"{doc['parity_gbps']:.2f} GB/s; command: `{doc['command']}`\n")
    if plots:
        p = plot_cdf(results, os.path.join(output, "prefetch_ttft_cdf.png"), title)
        if p:
            files.append(p)
    print(f"\nwrote {', '.join(os.path.relpath(x) for x in files)}")
    return files


def tier_speeds(model: rm.ModelShape, override: dict, workdir: str) -> tuple:
    """({dram, nvme} GB/s at the real page size, where they came from)."""
    speeds = {t: override[t] for t in ("dram", "nvme") if t in override}
    if len(speeds) == 2:
        return speeds, "given"
    t0 = time.perf_counter()
    measured = calibrate("store-tiered", model.page_bytes, workdir)
    bc.progress(f"calibration at {bc.fmt_size(model.page_bytes)} pages: dram {measured.get('dram') or 0:.2f} GB/s, "
                f"nvme {measured.get('nvme') or 0:.2f} GB/s ({time.perf_counter() - t0:.1f}s)")
    for t in ("dram", "nvme"):
        if t not in speeds:
            if not measured.get(t):
                raise RuntimeError(f"the calibration could not measure the {t} tier; give --tier-gbps {t}=X")
            speeds[t] = measured[t]
    return speeds, "measured in this run" if not override else "measured, with " + \
        ",".join(f"{k}={v:g}" for k, v in override.items()) + " given"


def run_policies(names: list, trace, sizes: dict, model: rm.ModelShape, args, workdir: str, override: dict) -> int:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # replay_policies:... by dotted path
    speeds, source = tier_speeds(model, override, workdir)
    results = [replay_policy(name, trace, sizes, model, speeds, args, workdir) for name in names]
    parity = parity_gbps(model, trace)
    doc = {"bench": "replay-prefetch", "trace": trace.summary(), "model": model.name, "sizes": sizes,
           "tier_gbps": speeds, "tier_gbps_source": source, "parity_gbps": parity,
           "settings": vars(SGLangPrefetchSettings()), "command": " ".join(sys.argv),
           "machine": bc.machine_info(args.workdir), "targets": check_targets(results, speeds["nvme"], parity),
           "results": results}
    report(doc, args.output, plots=not args.no_plots)
    bad = failures(results)
    if bad:
        print("replay: FAILED:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1
    return 0
