"""The prefetch policies' plans on hand-built cases, the recompute cost model and the transfer
estimator checked against numbers worked out by hand (in the comments), user policies by dotted
path (the example of docs/prefetch.md included), and the Prefetcher on a real tiered store.

Unless a test says otherwise: the 8b preset (Llama-3.1-8B shape: 8e9 parameters, 32 layers, q_dim
32 x 128 = 4096) at 494.5 TFLOP/s of prefill, 64-token pages of 8 MiB (8,388,608 bytes), and the
starting estimates DRAM 10 GB/s, NVMe 2 GB/s with no latency:

    load of one page:   DRAM 8,388,608 / 10e9 = 0.8389 ms     NVMe 8,388,608 / 2e9 = 4.1943 ms
    recompute of page j (tokens 64j .. 64j+63), with 4 * layers * q_dim = 4 * 32 * 4096 = 524,288:
        (2 * 8e9 * 64  +  524,288 * (64j * 64 + 64 * 63 / 2)) / 494.5e12
      = (1.024e12 + 524,288 * (4096 j + 2016)) / 494.5e12
        j = 0:    (1.024e12 + 1,056,964,608) / 494.5e12                = 2.0729 ms
        j = 100:  (1.024e12 + 524,288 * 411,616 = 215,805,329,408) / .. = 2.5072 ms
        j = 400:  (1.024e12 + 524,288 * 1,640,416) / 494.5e12           = 3.8100 ms
        j = 500:  (1.024e12 + 524,288 * 2,050,016) / 494.5e12           = 4.2443 ms
So DRAM pages always beat recomputing them, and NVMe pages at 2 GB/s only from about page 490 on.
"""

from __future__ import annotations

import importlib
import re
import sys
import textwrap
from pathlib import Path

import pytest

from mooncake_hicache import Store
from mooncake_hicache.config import load_config
from mooncake_hicache.errors import ConfigError
from mooncake_hicache.policies import (CostAwarePolicy, PolicyContext, PrefetchPlan, Prefetcher, PrefetchPolicy,
                                       PrefetchRequest, RecomputeModel, SGLangPrefetchSettings, Tier,
                                       TransferEstimator, load_policy)
from mooncake_hicache.policies.cost_aware import runs_of

D, N = int(Tier.DRAM), int(Tier.NVME)
PAGE_BYTES = 8 * 1024 * 1024
NO_DEADLINE = SGLangPrefetchSettings(stop_policy="best_effort")
DOCS = Path(__file__).resolve().parent.parent / "docs" / "prefetch.md"


def context(**prefetch) -> PolicyContext:
    """A policy context with the module doc's starting estimates (DRAM 10 GB/s, NVMe 2 GB/s)."""
    prefetch["estimates"] = {"dram_gbps": 10, "nvme_gbps": 2, **prefetch.get("estimates", {})}
    config = load_config({"prefetch": prefetch}, env={}).prefetch
    return PolicyContext(config, TransferEstimator(config.estimates), RecomputeModel.from_config(config.cost_model))


def request(tiers, *, batch=None, settings=NO_DEADLINE, **kw) -> PrefetchRequest:
    return PrefetchRequest(pages=len(tiers), tiers=list(tiers), batch_pages=batch or len(tiers),
                           page_tokens=64, page_bytes=PAGE_BYTES, settings=settings, **kw)


# ---- the arithmetic ----------------------------------------------------------------------------

def test_recompute_cost_of_a_page_grows_with_its_position_as_worked_out_by_hand():
    rec = RecomputeModel.from_config(load_config({}, env={}).prefetch.cost_model)
    assert rec.seconds(0, 64) == pytest.approx(2.0729e-3, rel=1e-4)
    assert rec.seconds(6400, 64) == pytest.approx(2.5072e-3, rel=1e-4)
    assert rec.seconds(32000, 64) == pytest.approx(4.2443e-3, rel=1e-4)
    # two pages at once cost the two pages one after the other
    assert rec.seconds(0, 128) == pytest.approx(rec.seconds(0, 64) + rec.seconds(64, 64), rel=1e-12)
    assert rec.seconds(0, 0) == 0.0
    # 70b preset at 100 TFLOP/s, first page: (2 * 70.6e9 * 64 + 4 * 80 * 8192 * 2016) / 1e14
    #   = (9.0368e12 + 5,284,823,040) / 1e14 = 90.42 ms
    big = RecomputeModel.from_config(load_config({"prefetch": {"cost_model": {"preset": "70b", "prefill_tflops": 100}}},
                                                 env={}).prefetch.cost_model)
    assert big.seconds(0, 64) == pytest.approx(90.42e-3, rel=1e-4)
    assert big.shape.kv_bytes_per_token == 80 * 8 * 128 * 2 * 2 == 327_680


def test_model_overrides_replace_the_presets_numbers():
    rec = RecomputeModel.from_config(load_config({"prefetch": {"cost_model": {
        "preset": "8b", "params_b": 1, "layers": 1, "q_dim": 1, "prefill_tflops": 1}}}, env={}).prefetch.cost_model)
    # (2 * 1e9 * 64 + 4 * 1 * 1 * 2016) / 1e12 = (1.28e11 + 8064) / 1e12
    assert rec.seconds(0, 64) == pytest.approx(0.128000008064, rel=1e-12)


def test_estimator_starts_from_the_configured_speeds_then_fits_completed_transfers():
    est = TransferEstimator(context(estimates={"smoothing": 0.5}).config.estimates)
    nvme = (N, None)
    assert est.cost(nvme) == (pytest.approx(5e-10), 0.0)          # 1 / 2 GB/s, no latency yet
    est.observe({nvme: 1}, 1e6, 1.2e-3)
    # one transfer: no way to tell latency from bandwidth: through the origin, 1.2e-3 / 1e6
    assert est.cost(nvme) == (pytest.approx(1.2e-9), 0.0)
    # transfers on the line seconds = 1e-4 + bytes * 1e-9 (1 GB/s and 100 us), whatever their weights
    est2 = TransferEstimator(est.config)
    est2.observe({nvme: 1}, 1e6, 1.1e-3)
    est2.observe({nvme: 3}, 3e6, 3.1e-3)
    spb, latency = est2.cost(nvme)
    assert spb == pytest.approx(1e-9, rel=1e-9) and latency == pytest.approx(1e-4, rel=1e-6)
    assert est2.snapshot()["nvme_gbps"] == pytest.approx(1.0) and est2.snapshot()["nvme_latency_us"] == pytest.approx(100.0)


def test_a_mixed_get_is_charged_to_its_slow_tier_after_taking_off_the_fast_tiers_share():
    est = TransferEstimator(context().config.estimates)
    dram, nvme = (D, None), (N, None)
    est.observe({dram: 1}, 1e6, 1e-4)                 # DRAM: 1e-10 s/B (10 GB/s)
    # 2 DRAM + 2 NVMe pages of 1e6 bytes in 5.2 ms: NVMe should take the most (2e6 * 5e-10 = 1 ms
    # against 2e6 * 1e-10 = 0.2 ms), so it gets 5.2 - 0.2 = 5.0 ms for 2e6 bytes = 2.5e-9 s/B
    est.observe({dram: 2, nvme: 2}, 4e6, 5.2e-3)
    assert est.cost(nvme)[0] == pytest.approx(2.5e-9)
    assert est.cost(dram)[0] == pytest.approx(1e-10)   # untouched


# ---- the built-in policies ---------------------------------------------------------------------

def test_prefix_order_reports_every_hit_and_promotes_them_all_in_order():
    policy = load_policy("prefix_order", context())
    plan = policy.plan(PrefetchRequest(pages=5, tiers=None, batch_pages=8))
    assert plan.report == 5 and list(plan.prefetch) == [0, 1, 2, 3, 4] and plan.batch_pages == 0
    assert not policy.wants_locations


def test_none_reports_every_hit_and_promotes_nothing():
    policy = load_policy("none", context())
    plan = policy.plan(PrefetchRequest(pages=5, tiers=None, batch_pages=8))
    assert plan.report == 5 and list(plan.prefetch) == [] and not policy.prefetches


def test_cost_aware_loads_dram_pages_and_declines_nvme_pages_slower_than_recompute():
    policy = load_policy("cost_aware", context())
    # DRAM 0.84 ms < recompute 2.07 ms: load; NVMe 4.19 ms > recompute ~2.1 ms: decline
    plan = policy.plan(request([D] * 10 + [N] * 10))
    assert plan.report == 10 and list(plan.prefetch) == []   # nothing to move: the reported are in DRAM


def test_cost_aware_loads_nvme_pages_when_the_tier_beats_recompute_and_promotes_them_in_order():
    policy = load_policy("cost_aware", context(estimates={"nvme_gbps": 8}, batch_pages=4))
    # NVMe at 8 GB/s: 8,388,608 / 8e9 = 1.0486 ms < 2.07 ms
    plan = policy.plan(request([D] * 10 + [N] * 10))
    assert plan.report == 20 and list(plan.prefetch) == list(range(10, 20)) and plan.batch_pages == 4


def test_cost_aware_loads_slow_nvme_pages_deep_in_a_long_prompt_where_recompute_costs_more():
    policy = load_policy("cost_aware", context())
    # at page 500 a page costs 4.2443 ms to recompute > 4.1943 ms to load from NVMe: load
    assert policy.plan(request([N] * 8, offset_pages=500)).report == 8
    # at page 400, 3.8100 ms < 4.1943 ms: decline
    assert policy.plan(request([N] * 8, offset_pages=400)).report == 0


def test_cost_aware_reports_only_what_lands_before_sglangs_deadline():
    policy = load_policy("cost_aware", context())
    settings = SGLangPrefetchSettings(timeout_base_s=0.010, timeout_per_ki_token_s=0.0, stop_policy="timeout")
    # 10 ms of budget at 0.8389 ms a DRAM page: 11 pages take 9.23 ms, 12 would take 10.07 ms
    assert policy.plan(request([D] * 20, settings=settings)).report == 11
    # 4 ms of it already spent on the request's earlier batches: 6 ms left, 7 pages (5.87 ms)
    assert policy.plan(request([D] * 20, settings=settings, loaded_before_s=0.004)).report == 7
    # SGLang cuts off nothing under best_effort
    assert policy.plan(request([D] * 20)).report == 20


def test_cost_aware_does_not_promote_a_hit_shorter_than_sglangs_threshold():
    policy = load_policy("cost_aware", context(estimates={"nvme_gbps": 8}))
    # 3 pages of 64 tokens = 192 < 256: SGLang drops the hit, so nothing is moved for it
    plan = policy.plan(request([N] * 3, batch=8))
    assert plan.report == 3 and list(plan.prefetch) == []
    # the same 3 pages after 2 earlier pages: 5 x 64 = 320 >= 256
    plan = policy.plan(request([N] * 3, batch=8, offset_pages=2))
    assert list(plan.prefetch) == [0, 1, 2]
    # a full batch may go on in the next one: promote
    assert list(policy.plan(request([N] * 3)).prefetch) == [0, 1, 2]


def test_cost_aware_measures_a_declined_tier_again_every_probe_every_plans():
    policy = load_policy("cost_aware", context(estimates={"probe_every": 2, "probe_pages": 1}))
    tiers = [D] * 4 + [N] * 4
    first, second, third = (policy.plan(request(tiers)) for _ in range(3))
    assert (first.report, first.probe_pages) == (4, 0)
    assert (second.report, second.probe_pages) == (5, 1)   # the 2nd declining plan: one NVMe page more
    assert (third.report, third.probe_pages) == (4, 0)
    assert list(second.prefetch) == [4]


def test_cost_aware_promotes_the_page_that_must_start_soonest_first():
    ctx = context(cost_model={"preset": "70b", "prefill_tflops": 10})   # recomputing costs ~0.9 s a page
    a, b = (N, "node-a"), (N, "node-b")
    ctx.estimator.observe({a: 1}, 1e6, 1e-3)    # node a: 1 ms per 1e6-byte page
    ctx.estimator.observe({b: 1}, 1e6, 1e-2)    # node b: 10 ms per page
    policy = CostAwarePolicy(ctx)
    req = PrefetchRequest(pages=3, tiers=[N, N, N], nodes=["node-a", "node-a", "node-b"], batch_pages=3,
                          page_bytes=1_000_000, settings=NO_DEADLINE)
    plan = policy.plan(req)
    # the get reaches page 0 at 0, page 1 at 1 ms, page 2 at 2 ms; each must start its own load
    # that much earlier: page 0 at -1 ms, page 1 at 0, page 2 at 2 - 10 = -8 ms
    assert plan.report == 3 and list(plan.prefetch) == [2, 0, 1]


def test_cost_aware_in_a_pool_promotes_the_pages_on_an_nvme_tier_only():
    # remote DRAM and remote NVMe start at the NVMe prior here (2 GB/s: 4.19 ms a page), so with
    # recompute at 10 TFLOP/s (the 8b first page: 2.0729 ms x 49.45 = 102.5 ms) every page is
    # reported; only the NVMe pages (local or a remote member's) are worth promoting
    RD, RN = int(Tier.REMOTE_DRAM), int(Tier.REMOTE_NVME)
    policy = CostAwarePolicy(context(cost_model={"preset": "8b", "prefill_tflops": 10}))
    plan = policy.plan(request([D, RD, RD, N, RN, RN]))
    assert plan.report == 6 and sorted(plan.prefetch) == [3, 4, 5]


def test_runs_of_groups_consecutive_pages_at_one_place():
    assert runs_of([D, D, N, N, N, D], None, 6) == [(0, 2, (D, None)), (2, 5, (N, None)), (5, 6, (D, None))]
    assert runs_of([N, N], ["a", "b"], 2) == [(0, 1, (N, "a")), (1, 2, (N, "b"))]
    assert runs_of(None, None, 3) == [(0, 3, (N, None))]


# ---- user policies -----------------------------------------------------------------------------

def user_package(tmp_path, monkeypatch, files: dict) -> None:
    """A package ``mypolicies`` with ``files`` under tmp_path, importable for this test only."""
    for name in [m for m in sys.modules if m.split(".")[0] == "mypolicies"]:
        monkeypatch.delitem(sys.modules, name)
    pkg = tmp_path / "mypolicies"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name, text in files.items():
        (pkg / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()


class EveryOtherPage(PrefetchPolicy):
    """Reports every hit and promotes the even pages (for the tests)."""

    name = "every_other"

    def plan(self, request):
        return PrefetchPlan(report=request.pages, prefetch=range(0, request.pages, 2), batch_pages=2)


def test_a_user_policy_is_loaded_by_its_dotted_path(tmp_path, monkeypatch):
    user_package(tmp_path, monkeypatch, {"short.py": textwrap.dedent("""
        from mooncake_hicache.policies import PrefetchPlan, PrefetchPolicy

        class FirstTwo(PrefetchPolicy):
            name = "first_two"
            def plan(self, request):
                return PrefetchPlan(report=min(2, request.pages))
        """)})
    policy = load_policy("mypolicies.short:FirstTwo", context())
    assert policy.name == "first_two" and policy.plan(request([N] * 5)).report == 2


@pytest.mark.parametrize("name, message", [
    ("no_such_package_xyz.mod:Policy", "cannot import module 'no_such_package_xyz.mod'"),
    ("test_prefetch_policies:Missing", "has no 'Missing'"),
    ("test_prefetch_policies:context", "is not a subclass of mooncake_hicache.policies.PrefetchPolicy"),
])
def test_a_user_policy_that_cannot_be_used_is_a_config_error_naming_the_field(name, message):
    with pytest.raises(ConfigError) as e:
        load_policy(name, context())
    assert e.value.field == "prefetch.policy" and message in str(e.value)


def test_the_example_policy_in_the_docs_loads_and_plans_as_the_docs_say(tmp_path, monkeypatch):
    text = DOCS.read_text()
    code = re.search(r"```python\n# mypolicies/dram_first\.py\n(.*?)```", text, re.S).group(1)
    user_package(tmp_path, monkeypatch, {"dram_first.py": code})
    policy = load_policy("mypolicies.dram_first:DramFirst", context())
    # the docs: report the leading DRAM pages, and NVMe pages only up to 4 of them
    plan = policy.plan(request([D, D, N, N, N, N, N, N]))
    assert plan.report == 6 and list(plan.prefetch) == [2, 3, 4, 5]


# ---- the Prefetcher on a real store ------------------------------------------------------------

PAGE = 256 * 1024


@pytest.fixture
def tiered_store(tmp_path, store_from_config, buffers):
    """An in-process DRAM (8 MiB: 32 pages) + NVMe store holding pages p0..p39: p0..p7 pushed to
    NVMe, p8..p39 in DRAM. Exactly those: no clean reserve (its puts take a clean victim, which
    may be one just behind the coldest page while the demoter catches up)."""

    def _open(**prefetch):
        store = store_from_config({
            "mode": "in_process", "prefetch": prefetch,
            "tiers": {"dram": {"capacity": "8MiB", "slab_size": "1MiB", "hugepages": False, "clean_reserve": 0},
                      "nvme": {"path": str(tmp_path / "nvme.data"), "capacity": "64MiB", "region_size": "4MiB"}}})
        buf = buffers(PAGE)
        store.register_buffer(buf.addr, buf.size)
        for i in range(40):
            assert store.batch_put_from([f"p{i}"], [buf.addr], [PAGE]) == [0]
        return store, buf

    return _open


def test_the_prefetcher_reports_the_policys_pages_counts_the_declined_and_moves_the_rest(tiered_store):
    store, _ = tiered_store(policy="cost_aware", estimates={"nvme_gbps": 8})
    keys = [f"p{i}" for i in range(8, 12)] + [f"p{i}" for i in range(0, 4)] + ["absent"]
    assert store.batch_locate(keys[:5]) == [D, D, D, D, N]
    # 4 DRAM + 4 NVMe pages (8 GB/s beats recompute), then a miss: all 8 reported, 4 promoted
    assert store.prefetcher.leading_pages(keys, page_tokens=64, page_bytes=PAGE_BYTES) == 8
    st = store.stats()["prefetch"]
    assert (st["policy"], st["queries"], st["candidate_pages"], st["reported_pages"]) == ("cost_aware", 1, 8, 8)
    assert (st["declined_pages"], st["prefetch_pages"], st["prefetch_queued"]) == (0, 4, 4)


def test_the_prefetcher_declines_slow_pages_and_learns_the_tier_from_the_gets(tiered_store):
    store, buf = tiered_store(policy="cost_aware", estimates={"nvme_gbps": 2})
    prefetcher = store.prefetcher
    keys = [f"p{i}" for i in range(8, 10)] + [f"p{i}" for i in range(0, 3)]
    assert prefetcher.leading_pages(keys, page_tokens=64, page_bytes=PAGE_BYTES) == 2
    st = store.stats()["prefetch"]
    assert (st["declined_pages"], st["declined_tokens"], st["prefetch_pages"]) == (3, 192, 0)
    assert st["nvme_transfers"] == 0 and st["nvme_gbps"] == pytest.approx(2.0)
    # a get of the two reported DRAM pages (whose place it remembers) teaches the DRAM estimate
    prefetcher.observe_get(keys[:2], 2 * PAGE_BYTES, 2 * PAGE_BYTES / 20e9)
    st = store.stats()["prefetch"]
    assert st["dram_transfers"] == 1 and st["dram_gbps"] == pytest.approx(20.0)
    # keys it never located are not attributed
    prefetcher.observe_get(["p30"], PAGE_BYTES, 1.0)
    assert store.stats()["prefetch"]["dram_transfers"] == 1
    # SGLang recomputes the declined pages and backs them up: they are written again (to DRAM),
    # once; pages present and not declined are not
    found = store.batch_is_exist(keys + ["new"])
    assert found == [1, 1, 1, 1, 1, 0]
    assert prefetcher.to_write(keys + ["new"], found) == [2, 3, 4, 5]
    assert prefetcher.to_write(keys + ["new"], found) == [5]


def test_prefix_order_through_the_prefetcher_asks_exists_and_promotes_what_it_reports(tiered_store):
    store, _ = tiered_store()
    calls = []
    real = store.prefetch
    store.prefetch = lambda keys, *a: calls.append((list(keys), a)) or real(keys, *a)
    keys = [f"p{i}" for i in range(0, 3)] + ["absent", "p4"]
    assert store.prefetcher.leading_pages(keys) == 3
    assert calls == [(["p0", "p1", "p2"], ())]   # today's call: all hits, the store's step
    assert store.prefetcher.prefetch_unplanned(["p0", "p1", "side0"]) == 0   # only 'side0' is new: not stored
    assert calls[-1] == (["side0"], ())
    assert "nvme_gbps" not in store.stats()["prefetch"]   # no locations, no estimates


def test_a_policy_that_raises_or_plans_nonsense_costs_no_hits(tiered_store):
    store, _ = tiered_store()

    class Broken(PrefetchPolicy):
        def plan(self, request):
            raise RuntimeError("bug in a user policy")

    class Nonsense(PrefetchPolicy):
        def plan(self, request):
            return PrefetchPlan(report=99, prefetch=[7, 1, 1, -3, 500])

    broken = Prefetcher(store, store.config.prefetch, policy=Broken(store.prefetcher.context))
    assert broken.leading_pages(["p10", "p11", "absent"]) == 2
    assert broken.stats()["plan_errors"] == 1
    odd = Prefetcher(store, store.config.prefetch, policy=Nonsense(store.prefetcher.context))
    assert odd.leading_pages(["p10", "p11", "p12", "absent"]) == 3
    assert odd.stats()["prefetch_pages"] == 1   # only page 1 is a reported page, once


def test_two_objects_per_page_count_a_page_present_only_with_both_and_at_its_slowest_tier(tiered_store):
    store, _ = tiered_store(policy="cost_aware", estimates={"nvme_gbps": 8})
    # page 0: two DRAM objects; page 1: DRAM + NVMe object (an NVMe page); page 2: one object missing
    keys = ["p10", "p11", "p12", "p0", "p13", "absent"]
    # (after 4 earlier pages, so the 2-page hit is past SGLang's 256-token threshold)
    assert store.prefetcher.leading_pages(keys, 2, offset_pages=4, page_tokens=64, page_bytes=PAGE_BYTES) == 2
    assert store.stats()["prefetch"]["prefetch_pages"] == 1   # page 1 (both its objects) is moved
    assert store.stats()["prefetch"]["prefetch_queued"] == 1   # of which only p0 is on NVMe


def test_batches_of_one_request_are_linked_so_the_deadline_counts_the_earlier_loads(tiered_store):
    store, _ = tiered_store(policy="cost_aware", estimates={"dram_gbps": 10})
    p = store.prefetcher
    p.settings = SGLangPrefetchSettings(timeout_base_s=0.003, timeout_per_ki_token_s=0.0)
    dram = [f"p{i}" for i in range(8, 40)]
    # 3 ms at 0.8389 ms a DRAM page: 3 pages of the first batch of 3 land in time (2.52 ms)...
    assert p.leading_pages(dram[:3], page_tokens=64, page_bytes=PAGE_BYTES, last_key="k3") == 3
    # ...and the batch that follows it has 0.48 ms left: nothing more lands in time
    assert p.leading_pages(dram[3:6], page_tokens=64, page_bytes=PAGE_BYTES, prev_key="k3", offset_pages=3) == 0
    # an unrelated batch starts its own budget
    assert p.leading_pages(dram[6:9], page_tokens=64, page_bytes=PAGE_BYTES, prev_key="other") == 3


@pytest.mark.parametrize("seed", range(40))
def test_the_pass_over_every_page_plans_what_the_look_at_run_ends_plans(seed, monkeypatch):
    """Requests of many short runs are planned by a pass over every page; both ways must agree."""
    import random

    import mooncake_hicache.policies.cost_aware as ca

    rnd = random.Random(seed)
    tiers = []
    while len(tiers) < rnd.randint(30, 300):
        tiers += [rnd.choice([D, N])] * rnd.randint(1, 6)
    ctx = context(estimates={"nvme_gbps": rnd.uniform(1, 8), "probe_pages": 0})
    if rnd.random() < 0.5:
        ctx.estimator.observe({(N, None): 1}, 1e6, rnd.uniform(1e-4, 1e-3))
    policy = CostAwarePolicy(ctx)
    settings = SGLangPrefetchSettings(timeout_base_s=rnd.uniform(0.01, 0.5), timeout_per_ki_token_s=0.0) \
        if rnd.random() < 0.5 else NO_DEADLINE
    req = request(tiers, settings=settings, offset_pages=rnd.randint(0, 800))
    monkeypatch.setattr(ca, "MANY_RUNS", 10**6)
    by_runs = policy.plan(req)
    monkeypatch.setattr(ca, "MANY_RUNS", 0)
    by_pages = policy.plan(req)
    assert by_pages.report == by_runs.report
    assert list(by_pages.prefetch) == list(by_runs.prefetch)


def test_a_closed_store_with_a_prefetcher_is_freed_at_once_not_by_a_later_collection(tmp_path):
    import gc
    import weakref

    gc.disable()   # only reference counting: a Store <-> Prefetcher cycle would keep it (and its arena)
    try:
        store = Store.from_config({"mode": "in_process", "tiers": {"nvme": {
            "path": str(tmp_path / "nvme.data"), "capacity": "64MiB", "region_size": "4MiB"}}})
        assert store.prefetcher.leading_pages(["absent"]) == 0
        ref = weakref.ref(store)
        store.close()
        del store
        assert ref() is None
    finally:
        gc.enable()


def test_the_prefetch_figures_are_in_the_stats_and_in_prometheus(tiered_store):
    from mooncake_hicache.metrics import to_prometheus

    store, _ = tiered_store(policy="cost_aware", estimates={"nvme_gbps": 2})
    store.prefetcher.leading_pages(["p8", "p9", "p0", "absent"], page_tokens=64, page_bytes=PAGE_BYTES)
    text = to_prometheus(store.stats())
    assert "mooncake_hicache_prefetch_declined_pages 1" in text
    assert "mooncake_hicache_prefetch_declined_tokens 64" in text
    assert 'mooncake_hicache_prefetch_policy_info{value="cost_aware"} 1' in text


def test_the_old_prefetch_on_exists_switch_maps_to_a_policy_and_a_set_policy_wins(caplog):
    from mooncake_hicache.sglang.options import parse_extra_config

    with caplog.at_level("INFO", logger="mooncake_hicache.sglang"):
        off = parse_extra_config({"prefetch_on_exists": False}, env={})
    assert off.store_config == {"prefetch": {"policy": "none"}}
    assert "read as prefetch.policy: none" in caplog.text
    assert load_config(off.store_config, env={}).prefetch.policy == "none"
    assert parse_extra_config({"prefetch_on_exists": True}, env={}).store_config is None   # the default policy
    caplog.clear()
    with caplog.at_level("WARNING", logger="mooncake_hicache.sglang"):
        both = parse_extra_config({"prefetch_on_exists": False, "prefetch": {"policy": "cost_aware"}}, env={})
    assert both.store_config["prefetch"]["policy"] == "cost_aware" and "is ignored" in caplog.text


def test_a_full_batch_is_reported_whole_when_the_requests_later_pages_are_worth_it():
    """Recomputing the 128-page bin that starts at page 128k (8192 tokens from token 8192k; 8b,
    494.5 TFLOP/s) costs (2 * 8e9 * 8192 + 524,288 * (8192k * 8192 + 8192 * 8191 / 2)) / 494.5e12
    = (1.3107e14 + 1.7591e13 + 3.5184e13 k) / 494.5e12 = 0.3006 + 0.0711 k s, and
    loading it from NVMe at 2 GB/s 128 * 4.194 ms = 0.5369 s: bin k loses 0.2363 - 0.0711 k s.
    The first batch alone loses 0.236 s (declined), but when recent requests' stored pages ran
    to page 2000, bins 1..15 follow with certainty: 15 * 0.2363 - 0.0711 * 120 = -4.99 s."""
    from mooncake_hicache.policies.run_lengths import RunLengths

    def plan_with(ends, recorded=40):
        ctx = context()
        lengths = RunLengths()
        for _ in range(recorded):
            lengths.record(ends)
        ctx = PolicyContext(ctx.config, ctx.estimator, ctx.recompute, lengths)
        policy = CostAwarePolicy(ctx)
        return policy.plan(request([N] * 128)), policy.stats()

    long_plan, stats = plan_with(2000)
    assert long_plan.report == 128 and stats == {"continued_batches": 1}
    assert plan_with(130)[0].report == 0        # the next bin alone loses 0.165 s: not worth going on
    assert plan_with(2000, recorded=10)[0].report == 0   # too few requests seen to weigh later pages
    # a batch that is not full ends the request's query anyway: nothing to go on for
    lengths_ctx = context()
    assert CostAwarePolicy(lengths_ctx).plan(request([N] * 100, batch=128)).report == 0


def test_run_lengths_give_the_chance_a_stored_prefix_reaches_each_later_bin():
    from mooncake_hicache.policies.run_lengths import RunLengths

    lengths = RunLengths(keep=4)
    for end in (100, 300, 300, 1000):
        lengths.record(end)
    # from page 128: ends in bins 2 (300, 300) and 7 (1000): bins 1 and 2 are reached by all 3,
    # bins 3..7 by 1 of 3
    bins = list(lengths.beyond(128))
    assert bins[0] == (128, 256, 1.0) and bins[1] == (256, 384, 1.0)
    assert bins[2] == (384, 512, pytest.approx(1 / 3)) and bins[-1] == (896, 1024, pytest.approx(1 / 3))
    lengths.record(5000)   # keeps the last 4: 100 is forgotten
    assert len(lengths) == 4 and list(lengths.beyond(0))[0] == (0, 128, 1.0)
    # a run cut short by a decline at page 256 (bin 2) counts as running through bin 2, as
    # Kaplan-Meier counts a censored run at risk where it was censored: from page 128, bin 2 is
    # reached by all three runs, and of the three at risk in bin 2 one ends there (300): bin 3 is
    # reached with chance 1 - 1/3
    cut = RunLengths()
    for end, ended in ((300, True), (1000, True), (256, False)):
        cut.record(end, ended)
    got = list(cut.beyond(128))
    assert got[1] == (256, 384, 1.0) and got[2] == (384, 512, pytest.approx(2 / 3))
