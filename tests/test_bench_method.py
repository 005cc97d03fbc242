"""How the benchmarks take their figures (bench/_bench_common.py, nvme_bench.py, store_bench.py):
ours and the limit alternate in ABBA order and each ratio comes from one pair; the memcpy limit
copies into memory of the DRAM arena's kind; and each bench's smoke mode runs end to end,
verifying every page, with paired ratios in its JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import MiB, page_kind_this_machine_provides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
sys.path.insert(0, BENCH)

import _bench_common as bc  # noqa: E402


def recorder(log: list, name: str, gbps: float):
    def sample() -> dict:
        log.append(name)
        return {"gbps": gbps * (1 + 0.01 * len(log)), "seconds": 1.0}
    return sample


def test_ours_and_the_limit_alternate_abba_until_the_budget_and_an_even_pair_count():
    log: list = []
    out = bc.run_paired(recorder(log, "A", 2.0), recorder(log, "B", 4.0), ("gbps",), seconds=5, desc="t")
    # 3 pairs reach 6 timed seconds, but an ABBA needs an even count: 4 pairs
    assert log == ["A", "B", "B", "A", "A", "B", "B", "A"]
    assert out["pairs"] == 4 and out["seconds"] == 8.0
    r = out["gbps"]
    # each ratio divides the two samples of one pair (taken back to back), never across pairs
    ours = [2.0 * (1 + 0.01 * i) for i in (1, 4, 5, 8)]
    lim = [4.0 * (1 + 0.01 * i) for i in (2, 3, 6, 7)]
    assert r["ratios"] == [round(o / b, 4) for o, b in zip(ours, lim)]
    assert r["ratio_min"] <= r["ratio"] <= r["ratio_max"] < 0.51
    assert r["ours_gbps"] == pytest.approx(sorted(ours)[1] / 2 + sorted(ours)[2] / 2)


def test_a_figure_without_a_limit_repeats_ours_for_the_budget_and_has_no_ratio():
    log: list = []
    out = bc.run_paired(recorder(log, "A", 1.0), None, ("gbps",), seconds=3, desc="t")
    assert log == ["A"] * 3 and out["gbps"]["ratio"] is None and out["gbps"]["limit_gbps"] is None
    assert bc.fmt_ratio(out["gbps"]) == "N/A" and bc.fmt_spread(out["gbps"]).startswith("1.02 [1.01-1.03]")


def test_a_ratio_above_one_is_noted_as_noise_or_as_a_method_problem():
    noise = {"ratio": 1.02, "ratio_min": 0.97, "ratio_max": 1.1}
    flaw = {"ratio": 1.3, "ratio_min": 1.2, "ratio_max": 1.4}
    assert "noise" in bc.ratio_notes("x", noise, "fio read")[0]
    assert "every pair above 1" in bc.ratio_notes("x", flaw, "fio read")[0]
    assert bc.ratio_notes("x", {"ratio": 0.9, "ratio_min": 0.8, "ratio_max": 1.1}, "fio read") == []


def test_the_memcpy_limit_memory_is_of_the_kind_the_dram_arena_gets_here():
    with bc.ArenaBuffer(3 * MiB) as a:
        assert a.size == 4 * MiB  # whole 2 MiB pages, as the arena
        assert a.page_kind == page_kind_this_machine_provides(a.size)
        a.view[-1] = 7
        assert a.view[0] == 0 and a.view[-1] == 7
    with bc.ArenaBuffer(1, hugepages=False) as b:
        assert b.page_kind == "4k" and b.size == 2 * MiB


def run_bench(script: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, os.path.join(BENCH, script), *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["ok"], doc
    return doc


def test_nvme_bench_smoke_pairs_ours_with_fio(tmp_path):
    doc = run_bench("nvme_bench.py", "--sizes", "256K", "--qds", "4", "--total-mib", "8", "--seconds", "0",
                    "--restart-gib", "0", "--skip-naive", "--dir", str(tmp_path))
    row = doc["rows"][0]
    assert row["paired"]["pairs"] == 2 and row["measured"] == "ours"
    if doc["params"]["skip_fio"]:
        pytest.skip("fio is not installed: no limit to pair with")
    for side in ("write", "read"):
        assert len(row["paired"][side]["ratios"]) == 2 and row["paired"][side]["ratio"] > 0


def test_store_bench_smoke_pairs_every_ratio_and_verifies_every_page(tmp_path):
    doc = run_bench("store_bench.py", "--sizes", "256K", "--set-mib", "8", "--seconds", "0", "--exists-calls", "20",
                    "--dir", str(tmp_path))
    r = doc["results"][0]
    pts = r["points"]
    for key, limit in (("put_dram", "memcpy in"), ("get_dram", "memcpy out")):
        assert pts[key]["limit"] == limit and pts[key]["pairs"] == 2 and len(pts[key]["ratios"]) == 2
    if not doc["fio_extra"] and not r.get("fio_commands"):
        pytest.skip("fio is not installed: no limit to pair with")
    for key, limit in (("put_demote", "fio write"), ("get_nvme", "fio read"), ("get_nvme_dram_full", "fio read")):
        assert pts[key]["limit"] == limit and pts[key]["pairs"] == 2
    assert r["limit_page_kind"] == r["dram_page_kind"]
    assert "--read_iolog=" in r["fio_commands"]["replay"]  # the NVMe-read limits replay our reads
    ph = r["phases"]
    assert ph["get_nvme"]["nvme_hits"] == ph["get_nvme"]["pages"] and ph["get_dram"]["dram_hits"] == ph["get_dram"]["pages"]
    assert sum(p["verified_pages"] for p in ph.values()) > 0 and all(p["mismatches"] == 0 for p in ph.values())


def test_fio_replay_reads_exactly_the_given_places(tmp_path):
    """The limit of store_bench's NVMe-read points: fio replays a list of (file, offset, length)
    reads; fio 3.33 leaves the reads still in flight at the end out of its byte count, which the
    replay's tail of extra reads absorbs, so every byte of the list is counted."""
    if not bc.fio_path():
        pytest.skip("fio is not installed")
    path = tmp_path / "data"
    with open(path, "wb") as f:
        f.write(os.urandom(24 * MiB))
    reads = [(str(path), i * (MiB + 4096), MiB) for i in range(20)]  # 1 MiB values, 4 KiB apart
    r = bc.run_fio_replay(reads, str(tmp_path / "log"), MiB, 8)
    assert 20 * MiB <= r["io_bytes"] <= 20 * MiB + 16 * MiB
    assert r["bw_bytes"] > 0 and r["seconds"] > 0
    lines = (tmp_path / "log").read_text().splitlines()
    assert lines[0] == "fio version 2 iolog" and f"{path} read {MiB + 4096} {MiB}" in lines


def test_store_bench_mixed_pairs_reads_under_a_putter_with_reads_alone(tmp_path):
    """--mixed: per setting of the clean reserve (the default, then off), NVMe-hit reads with a
    putter running, paired ABBA with the same reads alone; with the reserve no read waits for a
    write; every page verified."""
    doc = run_bench("store_bench.py", "--mixed", "--sizes", "256K", "--set-mib", "8", "--seconds", "0",
                    "--dir", str(tmp_path))
    assert doc["bench"] == "store_mixed"
    with_reserve, without = doc["results"]
    assert with_reserve["clean_reserve"] > 0 and without["clean_reserve"] == 0
    for r in doc["results"]:
        p = r["points"]["read_with_putter"]
        assert p["limit"] == "get nvme alone" and p["pairs"] == 2 and len(p["ratios"]) == 2
        assert all(ph["mismatches"] == 0 and ph["verified_pages"] > 0 for ph in r["phases"].values())
    assert with_reserve["counters"]["reads_waited_for_write"] == 0
    assert without["counters"]["reads_waited_for_write"] > 0
