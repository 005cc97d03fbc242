"""The prefetch-policy replay (bench/replay.py --prefetch-policy): a small replay of the sample trace
with a DRAM tier small enough that hits come from NVMe runs every policy, writes its report, and
its time accounting adds up: TTFT = overhead + measured calls + scale-up + modeled prefill, the
scale-up is exactly the bytes the scaled pages did not move at the given tier speeds, and the
policies that report every hit load the same pages. With NVMe much slower than recomputing,
cost_aware loads no NVMe page and does better on the mean than loading every hit."""

from __future__ import annotations

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
SAMPLE = os.path.join(BENCH, "traces", "conversation_sample.jsonl")
sys.path.insert(0, BENCH)

import replay  # noqa: E402
import replay_model as rm  # noqa: E402

pytestmark = pytest.mark.skipif(not os.path.exists(SAMPLE), reason="bench/traces sample missing")

POLICIES = ["prefix_order", "none", "cost_aware", "recompute"]


@pytest.fixture(scope="module")
def slow_nvme_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("policies")
    out = tmp / "out"
    rc = replay.main([SAMPLE, "--model", "8b", "--max-requests", "150", "--dram", "2GiB", "--nvme", "64GiB",
                      "--tier-gbps", "dram=10,nvme=0.5", "--prefetch-policy", ",".join(POLICIES),
                      "--output", str(out), "--workdir", str(tmp)])
    assert rc == 0
    return json.loads((out / "prefetch_policies.json").read_text()), out


def test_the_report_has_every_policy_its_table_and_its_plot(slow_nvme_run):
    doc, out = slow_nvme_run
    assert [r["name"] for r in doc["results"]] == POLICIES
    assert "| policy |" in (out / "prefetch_policies.md").read_text()
    assert (out / "prefetch_ttft_cdf.png").stat().st_size > 1000
    assert doc["tier_gbps"] == {"dram": 10.0, "nvme": 0.5} and doc["tier_gbps_source"] == "given"
    for r in doc["results"]:
        assert r["verify_errors"] == 0 and r["short_gets"] == 0 and r["put_failures"] == 0


def test_ttft_is_overhead_plus_measured_calls_plus_scale_up_plus_modeled_prefill(slow_nvme_run):
    doc, _ = slow_nvme_run
    extra = rm.MODELS["8b"].page_bytes - doc["sizes"]["page_bytes"]
    tpp = rm.TOKENS_PER_PAGE
    for r in doc["results"]:
        parts = r["ttft_parts_mean_ms"]
        assert r["ttft_ms"]["mean"] == pytest.approx(sum(parts.values()), rel=1e-9)
        # the scale-up is the bytes each loaded page did not move, at its tier's given speed
        nvme_pages = r["hit_tokens_nvme"] // tpp
        dram_pages = r["hit_tokens"] // tpp - nvme_pages
        expected = (dram_pages * extra / 10e9 + nvme_pages * extra / 0.5e9) / r["requests"] * 1e3
        assert parts["scale_up"] == pytest.approx(expected, rel=1e-9)
        assert r["ttft_ms"]["p50"] <= r["ttft_ms"]["p99"]


def test_reporting_every_hit_loads_the_same_pages_and_recompute_loads_none(slow_nvme_run):
    doc, _ = slow_nvme_run
    res = {r["name"]: r for r in doc["results"]}
    assert res["prefix_order"]["hit_tokens"] == res["none"]["hit_tokens"] > 0
    assert res["prefix_order"]["hit_tokens_nvme"] > 0          # the DRAM tier is small enough
    assert res["prefix_order"]["bytes_real_gb"]["prefetched"] > 0 == res["none"]["bytes_real_gb"]["prefetched"]
    assert res["recompute"]["hit_tokens"] == 0 and res["recompute"]["ttft_parts_mean_ms"]["scale_up"] == 0
    assert res["recompute"]["declined_tokens"] > 0


def test_cost_aware_declines_nvme_far_slower_than_recompute_and_beats_loading_everything(slow_nvme_run):
    doc, _ = slow_nvme_run
    res = {r["name"]: r for r in doc["results"]}
    ca, load_all = res["cost_aware"], res["prefix_order"]
    # NVMe at 0.5 GB/s: 8 MiB a page takes 16.8 ms against about 2-3 ms of recompute
    # it reads NVMe only until its first get has measured the tier (it starts optimistic), and to
    # measure it again (probes)
    assert ca["hit_tokens_nvme"] <= 128 * rm.TOKENS_PER_PAGE + ca["probe_tokens"]
    assert ca["hit_tokens_nvme"] < load_all["hit_tokens_nvme"] / 4
    assert ca["declined_tokens"] > 0 and ca["hit_tokens"] > 0   # its DRAM hits it still loads
    assert ca["ttft_ms"]["mean"] < load_all["ttft_ms"]["mean"]
    assert ca["prefetcher"]["nvme_gbps"] < 1.0                  # learned from what the gets were charged
    held = {t["target"]: t["holds"] for t in doc["targets"]}
    assert all(v for k, v in held.items() if "p50" in k or "p99" in k)


def test_a_bad_policy_name_is_a_usage_error(tmp_path, capsys):
    rc = replay.main([SAMPLE, "--max-requests", "5", "--prefetch-policy", "cost_aware,cost_aware",
                      "--output", str(tmp_path)])
    assert rc == 2 and "distinct policy names" in capsys.readouterr().err
