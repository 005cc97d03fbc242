"""Reporting for the trace replay: percentiles, the text/markdown table, the target check and the
matplotlib plots. Pure functions over the result dicts that ``bench/replay.py`` builds."""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

import numpy as np

TIER_COLORS = {"dram": "#1f77b4", "nvme": "#ff7f0e", "file": "#2ca02c"}


def pct(values: Sequence[float], q: float) -> Optional[float]:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


def lat_summary(seconds: Sequence[float]) -> dict:
    """p50/p99/mean in milliseconds and the number of calls."""
    if not len(seconds):
        return {"calls": 0, "p50_ms": None, "p99_ms": None, "mean_ms": None}
    a = np.asarray(seconds, dtype=float) * 1e3
    return {"calls": int(a.size), "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def _f(x, digits=1, scale=1.0, suffix=""):
    return "-" if x is None else f"{x * scale:.{digits}f}{suffix}"


TABLE_HEADERS = ["config", "hit %", "of ceiling", "dram %", "nvme/file %", "x LRU",
                 "read GB", "written GB", "get GB/s", "get p50/p99 ms", "put p99 ms",
                 "modeled TTFT mean/p50/p99 ms", "wall s"]


def table_rows(results: Sequence[dict]) -> list:
    base = next((r for r in results if r["name"] == "lru-dram"), None)
    rows = []
    for r in results:
        tot = r["input_tokens"]
        hits = r["hit_tokens"]
        cap = hits.get("nvme", 0) + hits.get("file", 0)
        ratio = (hits["total"] / base["hit_tokens"]["total"]) if base and base["hit_tokens"]["total"] else None
        rows.append([
            r["name"],
            _f(hits["total"] / tot, 1, 100),
            _f(hits["total"] / r["ceiling_tokens"] if r["ceiling_tokens"] else None, 1, 100, "%"),
            _f(hits.get("dram", 0) / tot, 1, 100),
            _f(cap / tot, 1, 100) if r["tiers"] != ["dram"] else "-",
            _f(ratio, 2, 1, "x"),
            _f(sum(r["bytes"]["read"].values()) / 1e9, 2),
            _f(sum(r["bytes"]["written"].values()) / 1e9, 2),
            _f(r["gbps"]["get"], 2),
            f"{_f(r['latency']['get']['p50_ms'], 2)}/{_f(r['latency']['get']['p99_ms'], 2)}",
            _f(r["latency"]["put"]["p99_ms"], 2),
            f"{_f(r['ttft']['mean_ms'], 0)}/{_f(r['ttft']['p50_ms'], 0)}/{_f(r['ttft']['p99_ms'], 0)}",
            _f(r["wall_s"], 1),
        ])
    return rows


def print_table(results: Sequence[dict], file=None) -> None:
    file = file or sys.stdout
    cells = [TABLE_HEADERS] + table_rows(results)
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(TABLE_HEADERS))]
    for j, row in enumerate(cells):
        print("  ".join((str(c).ljust(w) if i == 0 else str(c).rjust(w)) for i, (c, w) in enumerate(zip(row, widths))).rstrip(), file=file)
        if j == 0:
            print("  ".join("-" * w for w in widths), file=file)
    file.flush()


def markdown_table(results: Sequence[dict]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADERS) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(TABLE_HEADERS) - 1)) + "|"]
    for row in table_rows(results):
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def failure_lines(results: Sequence[dict]) -> list:
    """One line per configuration whose replay had wrong bytes, pages not stored, or gets that
    returned fewer pages than ``batch_is_exist`` promised (each makes the run fail)."""
    out = []
    for r in results:
        parts = []
        if r.get("verify_errors"):
            parts.append(f"{r['verify_errors']} pages read back wrong")
        if r.get("put_failures"):
            parts.append(f"{r['put_failures']} pages not stored by put")
        if r.get("short_gets"):
            parts.append(f"{r['short_gets']} gets came back short ({r.get('short_get_pages', '?')} pages "
                         f"that batch_is_exist had reported present)")
        if parts:
            out.append(f"{r['name']}: " + "; ".join(parts))
    return out


BEATS_MARGIN = 0.01   # "beats" = at least 1% more hit tokens; less is a tie


def check_targets(results: Sequence[dict]) -> list:
    """The issue's targets, each ``{"target", "holds", "detail"}`` (only those the run can judge)."""
    by = {r["name"]: r for r in results}
    out = []
    base = by.get("lru-dram")
    if base and base["hit_tokens"]["total"]:
        for name in ("ours-dram+nvme/lru", "ours-dram+nvme/s3fifo", "ours-dram+nvme/prefix_lru"):
            if name in by:
                x = by[name]["hit_tokens"]["total"] / base["hit_tokens"]["total"]
                out.append({"target": f"{name} hit tokens >= 1.5x lru-dram", "holds": x >= 1.5,
                            "detail": f"{x:.2f}x ({by[name]['hit_tokens']['total']:,} vs {base['hit_tokens']['total']:,} tokens)"})
    for tier in ("ours-dram", "ours-dram+nvme"):
        a, b = by.get(f"{tier}/prefix_lru"), by.get(f"{tier}/lru")
        if a and b:
            d = a["hit_tokens"]["total"] - b["hit_tokens"]["total"]
            rel = d / b["hit_tokens"]["total"] if b["hit_tokens"]["total"] else 0.0
            verdict = "" if rel >= BEATS_MARGIN else ("; a tie" if rel > -BEATS_MARGIN else "; worse")
            out.append({"target": f"{tier}: prefix_lru beats lru (>= {BEATS_MARGIN * 100:g}% more hit tokens)",
                        "holds": rel >= BEATS_MARGIN, "detail": f"{d:+,} tokens ({rel * 100:+.2f}%){verdict}"})
    return out


def plot_all(results: Sequence[dict], outdir: str, title: str, ttft_only: bool = False) -> list:
    """hit_rate_over_time.png (one panel per config, stacked by tier, with the ceiling),
    hit_rate_total.png (all configs on one axis) and ttft_cdf.png (only this one with
    ``ttft_only``). Returns the files written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    if ttft_only:
        return _plot_ttft(results, outdir, title, plt)
    n = len(results)
    cols = 2 if n > 1 else 1
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 2.6 * rows), sharex=True, sharey=True, squeeze=False)
    for ax, r in zip(axes.flat, results):
        tl = r["timeline"]
        t = np.asarray(tl["t_min"])
        bottom = np.zeros_like(t, dtype=float)
        for tier in r["tiers"]:
            y = np.asarray(tl["hit_rate"][tier]) * 100
            ax.fill_between(t, bottom, bottom + y, step="mid", alpha=0.75, color=TIER_COLORS.get(tier), label=tier)
            bottom = bottom + y
        ax.step(t, np.asarray(tl["ceiling_rate"]) * 100, where="mid", color="black", lw=1, ls="--", label="infinite cache")
        ax.set_title(r["name"], fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes[-1]:
        ax.set_xlabel("trace time (min)")
    for ax in axes[:, 0]:
        ax.set_ylabel("hit tokens %")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(f"Hit rate over time per tier -- {title}", fontsize=11)
    fig.tight_layout()
    path = os.path.join(outdir, "hit_rate_over_time.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in results:
        tl = r["timeline"]
        ax.plot(tl["t_min"], np.asarray(tl["total_rate"]) * 100, label=r["name"], lw=1.3)
    tl = results[0]["timeline"]
    ax.plot(tl["t_min"], np.asarray(tl["ceiling_rate"]) * 100, color="black", ls="--", lw=1, label="infinite cache")
    ax.set_xlabel("trace time (min)")
    ax.set_ylabel("hit tokens % (all tiers)")
    ax.set_title(f"Hit rate over time -- {title}", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path = os.path.join(outdir, "hit_rate_total.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path)

    return files + _plot_ttft(results, outdir, title, plt)


def _plot_ttft(results, outdir, title, plt) -> list:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in results:
        c = r["ttft"]["cdf_ms"]
        ax.plot(c, np.linspace(0, 1, len(c)), label=r["name"], lw=1.3)
    ref = results[0]["ttft"].get("no_cache_cdf_ms")
    if ref:
        ax.plot(ref, np.linspace(0, 1, len(ref)), color="black", ls=":", lw=1.2, label="no cache (recompute)")
    ax.set_xscale("log")
    ax.set_xlabel("modeled TTFT (ms, log)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"Modeled TTFT CDF -- {title}", fontsize=11)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(outdir, "ttft_cdf.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
