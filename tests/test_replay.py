"""The trace-replay harness (bench/replay.py): a tiny replay runs, writes its JSON and plots, and
its hit accounting is self-consistent; page keys chain over block ids; the ceiling is exact."""

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
from replay_trace import Trace  # noqa: E402


def write_trace(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def test_page_keys_chain_over_blocks(tmp_path):
    t = Trace(write_trace(tmp_path / "t.jsonl", [
        {"timestamp": 0, "input_length": 1024, "output_length": 1, "hash_ids": [1, 2]},
        {"timestamp": 1, "input_length": 1100, "output_length": 1, "hash_ids": [1, 2, 3]},
        {"timestamp": 2, "input_length": 1024, "output_length": 1, "hash_ids": [9, 2]},   # block 2 under another parent
        {"timestamp": 3, "input_length": 600, "output_length": 1, "hash_ids": [1, 5]},
    ]))
    k = [t.page_keys(r) for r in t.requests]
    assert [len(x) for x in k] == [16, 17, 16, 9]          # full 64-token pages only
    assert k[1][:16] == k[0]                                 # shared prefix -> same keys
    assert k[2][8:] != k[0][8:] and k[2][0] != k[0][0]       # same block id, other prefix -> other keys
    assert k[3][:8] == k[0][:8] and k[3][8] != k[0][8]
    assert all(len(x) == 64 and int(x, 16) >= 0 for x in k[1])
    assert len(set(k[1])) == 17
    # infinite cache: leading pages already stored by an earlier request
    assert t.ceiling_pages() == [0, 16, 0, 8]


def test_bad_trace_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0, "input_length": 5000, "hash_ids": [1]}\n')
    with pytest.raises(ValueError, match="cannot cover"):
        Trace(str(bad))
    assert replay.main([str(bad), "--output", str(tmp_path / "o")]) == 2


def test_ttft_model_prefers_the_faster_path():
    m = rm.MODELS["8b"]
    none = rm.ttft_s(m, 8192, {}, {})
    fast = rm.ttft_s(m, 8192, {"dram": 8192 - 64}, {"dram": 50.0})
    slow = rm.ttft_s(m, 8192, {"nvme": 8192 - 64}, {"nvme": 0.001})
    assert fast < none
    assert slow == pytest.approx(none)   # loading slower than recompute -> recompute


@pytest.mark.skipif(not os.path.exists(SAMPLE), reason="bench/traces sample missing")
def test_tiny_replay_accounting(tmp_path):
    out = tmp_path / "out"
    configs = ["lru-dram", "ours-dram/lru", "ours-dram+nvme/lru"]
    rc = replay.main([SAMPLE, "--max-requests", "30", "--scale", "64", "--dram", "128MiB", "--nvme", "512MiB",
                      "--configs", ",".join(configs), "--output", str(out), "--workdir", str(tmp_path),
                      "--tier-gbps", "dram=10,nvme=2"])
    assert rc == 0
    doc = json.loads((out / "replay.json").read_text())
    for png in ("hit_rate_over_time.png", "hit_rate_total.png", "ttft_cdf.png"):
        assert (out / png).stat().st_size > 1000
    assert "| config |" in (out / "results.md").read_text()
    assert doc["sizes"]["page_bytes"] == 12288 and doc["trace"]["requests"] == 30
    res = {r["name"]: r for r in doc["results"]}
    assert list(res) == configs
    page = doc["sizes"]["page_bytes"]
    for r in res.values():
        h = r["hit_tokens"]
        assert h["total"] == sum(v for k, v in h.items() if k != "total")
        assert 0 <= h["total"] <= r["ceiling_tokens"] <= r["input_tokens"]
        assert r["input_tokens"] == doc["trace"]["input_tokens"]
        assert sum(r["timeline"]["tokens"]) == r["input_tokens"]
        assert r["verify_errors"] == 0 and r["put_failures"] == 0
        # every page served was read from some tier: bytes read cover the hits
        assert sum(r["bytes"]["read"].values()) >= h["total"] // rm.TOKENS_PER_PAGE * page
        assert r["ttft"]["p50_ms"] <= r["ttft"]["p99_ms"]
        assert r["latency"]["put"]["calls"] > 0
    # a tier stack holding more pages serves at least as much; the ceiling is the same for all
    assert len({r["ceiling_tokens"] for r in res.values()}) == 1
    assert res["ours-dram+nvme/lru"]["hit_tokens"]["total"] >= res["ours-dram/lru"]["hit_tokens"]["total"]
    # DRAM small enough that this replay evicts
    assert res["lru-dram"]["hit_tokens"]["total"] < res["lru-dram"]["ceiling_tokens"]
    assert res["ours-dram+nvme/lru"]["hit_tokens"].get("nvme", 0) > 0
    # our DRAM tier with LRU holds exactly what a reference LRU of the same page capacity holds
    assert res["ours-dram/lru"]["hit_tokens"]["total"] == res["lru-dram"]["hit_tokens"]["total"]

    # what-if TTFT from the stored per-request hits, without replaying
    assert (out / "per_request.npz").exists()
    rc = replay.main([str(out / "replay.json"), "--report", "--tier-gbps", "nvme=1000", "--output", str(tmp_path / "w"), "--no-plots"])
    assert rc == 0
    w = {r["name"]: r for r in json.loads((tmp_path / "w" / "replay.json").read_text())["results"]}
    assert w["ours-dram+nvme/lru"]["ttft"]["tier_gbps"]["nvme"] == 1000
    assert w["ours-dram+nvme/lru"]["ttft"]["mean_ms"] <= res["ours-dram+nvme/lru"]["ttft"]["mean_ms"]
    assert w["lru-dram"]["ttft"] == res["lru-dram"]["ttft"]


class _DroppingBackend:
    """Wraps a replay backend: every put stores all but the last page of its batch, as a backend
    that refuses or loses a write would."""

    def __init__(self, inner):
        self.inner, self.tiers = inner, inner.tiers

    def put(self, keys, slots, depths):
        return self.inner.put(keys[:-1], slots[:-1], depths[:-1]) if len(keys) > 1 else 0

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.skipif(not os.path.exists(SAMPLE), reason="bench/traces sample missing")
def test_replay_fails_and_names_the_config_when_puts_do_not_store_every_page(tmp_path, monkeypatch, capsys):
    real = replay.make_backend
    monkeypatch.setattr(replay, "make_backend", lambda *a, **k: _DroppingBackend(real(*a, **k)))
    rc = replay.main([SAMPLE, "--max-requests", "10", "--scale", "64", "--dram", "128MiB", "--configs", "lru-dram",
                      "--output", str(tmp_path / "o"), "--workdir", str(tmp_path), "--tier-gbps", "dram=10",
                      "--no-plots"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "replay: FAILED" in err and "lru-dram:" in err and "pages not stored by put" in err
    doc = json.loads((tmp_path / "o" / "replay.json").read_text())
    assert doc["results"][0]["put_failures"] > 0


def test_hicache_file_gets_our_total_page_capacity_and_a_host_tier_of_our_dram_pages():
    sizes = replay.plan(rm.MODELS["0.5b"], 64, 128 << 20, 512 << 20)
    assert sizes["nvme_pages_max"] >= sizes["nvme_pages"]   # whole regions hold at least the real tier's pages
    assert sizes["file_max_pages"] == sizes["dram_pages"] + sizes["nvme_pages_max"]
    assert sizes["file_max_bytes"] == sizes["file_max_pages"] * sizes["page_bytes"]
    # it evicts one NVMe region's worth of pages at a time, as our tier reclaims a region
    evicted = sizes["file_max_pages"] * (1 - sizes["file_eviction_ratio"])
    assert evicted == pytest.approx(sizes["nvme_pages_per_region"], abs=1)


@pytest.mark.skipif(not os.path.exists(SAMPLE), reason="bench/traces sample missing")
def test_hicache_file_baseline_serves_from_its_host_tier_and_its_files(tmp_path):
    pytest.importorskip("sglang")
    out = tmp_path / "out"
    rc = replay.main([SAMPLE, "--max-requests", "30", "--scale", "64", "--dram", "8MiB", "--nvme", "512MiB",
                      "--configs", "lru-dram,hicache-file", "--output", str(out), "--workdir", str(tmp_path),
                      "--tier-gbps", "dram=10,file=1", "--no-plots"])
    assert rc == 0
    res = {r["name"]: r for r in json.loads((out / "replay.json").read_text())["results"]}
    f = res["hicache-file"]
    assert f["tiers"] == ["dram", "file"] and f["verify_errors"] == 0 and f["put_failures"] == 0
    assert f["hit_tokens"]["dram"] > 0 and f["hit_tokens"]["file"] > 0
    assert f["hit_tokens"]["total"] >= res["lru-dram"]["hit_tokens"]["total"]
    assert "modeled TTFT" in (out / "results.md").read_text()
