"""Figures of the server benchmark: one summary per pass, output identity between passes, the
table, and the one JSON line.

Per pass: TTFT p50/p99/mean (time to the first streamed token), throughput (prompt + output
tokens per second of wall time), the tokens SGLang reports served from each cache level
(``cached_tokens_details``: GPU ``device``, SGLang's ``host`` tier, L3 ``storage``), the storage
backend class SGLang names, and the requests SGLang refused. Between the first pass and a later
one (same token ids, greedy): how many outputs are identical token for token.
"""

from __future__ import annotations

import json
from typing import Dict, List, Optional


def percentile(values: List[float], q: float) -> Optional[float]:
    s = sorted(values)
    if not s:
        return None
    k = (len(s) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(results: List[dict], wall_s: float) -> dict:
    """Figures of one pass: ``results`` are ``serve_server.generate`` answers."""
    done = [x for x in results if not x.get("rejected")]
    ttft = [x["ttft_s"] * 1e3 for x in done]
    prompt = sum(x["prompt_tokens"] for x in done)
    out = sum(x["output_tokens"] for x in done)
    return {
        "requests": len(results), "rejected": len(results) - len(done),
        "ttft_p50_ms": percentile(ttft, 50), "ttft_p99_ms": percentile(ttft, 99),
        "ttft_mean_ms": sum(ttft) / len(ttft) if ttft else None,
        "throughput_tok_s": (prompt + out) / wall_s if wall_s > 0 and done else None,
        "prompt_tokens": prompt, "output_tokens": out,
        "cached_tokens": sum(x["cached_tokens"] for x in done),
        "device_hit_tokens": sum(x["device_tokens"] for x in done),
        "host_hit_tokens": sum(x["host_tokens"] for x in done),
        "l3_hit_tokens": sum(x["storage_tokens"] for x in done),
        "storage_backends": sorted({x["storage_backend"] for x in done if x.get("storage_backend")}),
        "wall_s": wall_s,
    }


def compare_outputs(first: Dict[str, dict], later: Dict[str, dict]) -> dict:
    """Greedy outputs of the same requests (by id) in two passes: how many are identical, and for
    the others the first differing position."""
    common = [rid for rid in first if rid in later and not first[rid].get("rejected")
              and not later[rid].get("rejected")]
    diffs = []
    for rid in common:
        a, b = first[rid]["output_ids"], later[rid]["output_ids"]
        if a != b:
            at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            diffs.append({"rid": rid, "first_diff_at": at})
    return {"compared": len(common), "identical": len(common) - len(diffs), "differing": diffs[:20]}


COLUMNS = [("run", "run"), ("pass", "pass"), ("reqs", "requests"), ("rej", "rejected"),
           ("TTFT p50 ms", "ttft_p50_ms"), ("TTFT p99 ms", "ttft_p99_ms"), ("tok/s", "throughput_tok_s"),
           ("GPU hit", "device_hit_tokens"), ("host hit", "host_hit_tokens"), ("L3 hit", "l3_hit_tokens"),
           ("same output", "identical")]


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def rows(doc: dict) -> List[List[str]]:
    out = []
    for run in doc["runs"]:
        for p in run.get("passes", []):
            s = dict(p["summary"], run=run["name"], **{"pass": p["name"]})
            same = p.get("outputs_vs_first")
            s["identical"] = f"{same['identical']}/{same['compared']}" if same else None
            out.append([_cell(s.get(key)) for _, key in COLUMNS])
    return out


def table(doc: dict) -> str:
    body = rows(doc)
    headers = [h for h, _ in COLUMNS]
    widths = [max(len(x[i]) for x in body + [headers]) for i in range(len(headers))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(lines)


def json_line(doc: dict) -> str:
    """One line for machines: every run's pass summaries and output identity."""
    slim = {"bench": "serve", "runs": [
        {"name": r["name"], "error": r.get("error"), "fit": r.get("fit"),
         "passes": [dict(p["summary"], name=p["name"], outputs_vs_first=p.get("outputs_vs_first"))
                    for p in r.get("passes", [])]} for r in doc["runs"]]}
    return json.dumps(slim, separators=(",", ":"), default=str)
