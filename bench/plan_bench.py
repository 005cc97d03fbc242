#!/usr/bin/env python3
"""What planning a prefetch costs, against moving one page out of DRAM, measured in the same run.

The prefetch policy runs on SGLang's prefetch thread between the existence check and the get, so
it must cost much less than what it schedules. Per case this bench times what the Prefetcher does
between the store's ``batch_locate`` answer and its ``Store.prefetch`` call (the leading-run scan
of the answer and ``policy.plan``) for a request of ``--pages`` pages (1,000 by default), and, as
the limit, one ``batch_get_into`` of one page that is in DRAM (a real in-process store, the model's
real page size: 8 MiB for 8b), alternately (ABBA pairs; each side the median of its repetitions).
The ratio is plan time / page time: the target is well under 1.

Cases: ``cost_aware`` with 60 % DRAM then 40 % NVMe pages (two runs: the common shape, a hot prefix
before colder pages), ``cost_aware`` with DRAM and NVMe pages alternating page by page (the worst
case: every page its own run), and ``prefix_order`` (today's default).

    .venv/bin/python bench/plan_bench.py            # ~10 s
    .venv/bin/python bench/plan_bench.py --quick --model 0.5b

Prints a table and one JSON line ``{"bench": "plan", ...}``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import _bench_common as bc  # noqa: E402
import replay_model as rm  # noqa: E402

from mooncake_hicache import Store  # noqa: E402
from mooncake_hicache.config import load_config  # noqa: E402
from mooncake_hicache.policies import (PrefetchRequest, RecomputeModel, SGLangPrefetchSettings, Tier,  # noqa: E402
                                       TransferEstimator, PolicyContext, load_policy)
from mooncake_hicache.policies.prefetcher import leading_run  # noqa: E402

D, N = int(Tier.DRAM), int(Tier.NVME)


def cases(pages: int) -> list:
    hot = int(pages * 0.6)
    return [("cost_aware", "dram then nvme (2 runs)", [D] * hot + [N] * (pages - hot)),
            ("cost_aware", "alternating (every page a run)", [D if i % 2 == 0 else N for i in range(pages)]),
            ("prefix_order", "any", [D] * hot + [N] * (pages - hot))]


def planner(policy_name: str, codes: list, model: str, page_bytes: int):
    """A function doing the Prefetcher's work between locate and prefetch for ``codes``."""
    cfg = load_config({"prefetch": {"policy": policy_name, "cost_model": {"preset": model}}}, env={}).prefetch
    policy = load_policy(policy_name, PolicyContext(cfg, TransferEstimator(cfg.estimates),
                                                    RecomputeModel.from_config(cfg.cost_model)))
    settings = SGLangPrefetchSettings()

    def run() -> None:
        pages, tiers = leading_run(codes, 1, len(codes), policy.wants_locations)
        policy.plan(PrefetchRequest(pages=pages, tiers=tiers, batch_pages=len(codes), page_tokens=rm.TOKENS_PER_PAGE,
                                    page_bytes=page_bytes, settings=settings))
    return run


class OnePageGet:
    """An in-process store with one page of ``page_bytes`` in DRAM, and a registered buffer."""

    def __init__(self, page_bytes: int, workdir: str):
        slab = max(32 << 20, rm.round_up(page_bytes, 4096))
        self.store = Store.from_config({"mode": "in_process", "logging": {"level": "WARNING"},
                                        "tiers": {"dram": {"capacity": 2 * slab, "slab_size": slab}}})
        self.buf = bc.AlignedBuffer(page_bytes)
        self.store.register_buffer(self.buf.addr, page_bytes)
        self.page_bytes = page_bytes
        assert self.store.batch_put_from(["page"], [self.buf.addr], [page_bytes]) == [0]

    def __call__(self) -> None:
        assert self.store.batch_get_into(["page"], [self.buf.addr], [self.page_bytes]) == [self.page_bytes]

    def close(self) -> None:
        self.store.close()
        self.buf.close()


def median_us(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def paired(plan, get, seconds: float) -> dict:
    """ABBA pairs of (plan, page get) until ``seconds`` pass and the pair count is even (>= 4)."""
    plan_us, get_us, ratios = [], [], []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(ratios) < 4 or len(ratios) % 2:
        if len(ratios) % 2 == 0:
            p, g = median_us(plan, 50), median_us(get, 20)
        else:
            g, p = median_us(get, 20), median_us(plan, 50)
        plan_us.append(p)
        get_us.append(g)
        ratios.append(p / g)
    return {"plan_us": statistics.median(plan_us), "get_page_us": statistics.median(get_us),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "pairs": len(ratios)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--model", choices=sorted(rm.MODELS), default="8b", help="page size and cost preset (default 8b: 8 MiB pages)")
    p.add_argument("--pages", type=int, default=1000, help="pages of the planned request (default 1000)")
    p.add_argument("--seconds", type=float, default=None, help="seconds per case (default 3, 1 with --quick)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--dir", default=None, help="unused (micro.py passes it to every bench)")
    args = p.parse_args(argv)
    if args.pages < 1:
        print("plan_bench: --pages must be positive", file=sys.stderr)
        return 2
    model = rm.MODELS[args.model]
    seconds = args.seconds if args.seconds is not None else (1.0 if args.quick else 3.0)
    get = OnePageGet(model.page_bytes, tempfile.gettempdir())
    rows, out = [], []
    try:
        for policy, shape, codes in cases(args.pages):
            bc.progress(f"plan {policy}, {args.pages} pages, {shape}")
            r = paired(planner(policy, codes, model.name, model.page_bytes), get, seconds)
            out.append({"policy": policy, "case": shape, "pages": args.pages, **r})
            rows.append([policy, shape, args.pages, f"{r['plan_us']:.1f}", f"{r['get_page_us']:.1f}",
                         f"{r['ratio']:.3f} [{r['ratio_min']:.3f}-{r['ratio_max']:.3f}]", r["pairs"]])
    finally:
        get.close()
    print(f"\nPlanning a prefetch of {args.pages} pages vs one get of a {bc.fmt_size(model.page_bytes)} DRAM page "
          f"({model.name}), ABBA pairs; ratio = plan / page, median [min-max]\n")
    bc.print_table(["policy", "pages", "n", "plan us", "get 1 page us", "ratio", "pairs"], rows)
    bc.json_line({"bench": "plan", "model": model.name, "page_bytes": model.page_bytes, "cases": out,
                  "machine": bc.machine_info(tempfile.gettempdir())})
    return 0


if __name__ == "__main__":
    sys.exit(main())
