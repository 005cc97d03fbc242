"""The prefetch policy inside SGLang (0.5.23, CPU): SGLang's own ``HybridCacheController`` builds
our backend from the published server arguments (plugins loaded), its backup thread writes pages,
and its prefetch thread's existence query (``batch_exists``) goes through the policy, whose answer
is the hit SGLang sees; SGLang's prefetch settings reach the policy from the server arguments.

Each test runs in a forked process (``sglang_helpers.run_ranks``), as the controller tests do, so
the runtime config SGLang publishes and torch.distributed stay per process. The store is a small
NVMe-only in-process store (every page is on NVMe)."""

from __future__ import annotations

import importlib
import random
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sglang")

import sglang_helpers as h  # noqa: E402

h.import_sglang()

PS = h.PAGE_SIZE   # 4 tokens a page


def _tokens(salt: str, pages: int) -> list:
    rng = random.Random(salt)
    return [rng.randrange(1, 1000) for _ in range(pages * PS)]


def _controller(work: str, rank: int, store_extra: dict, sglang_extra: dict, stop_policy: str):
    """This process's gloo group, the server's config published (SGLang's extra config holding
    our store sections and SGLang's own prefetch keys) and SGLang's controller built from it."""
    from sglang.srt.plugins import load_plugins
    from sglang.srt.runtime_context import get_memory

    group = h.init_gloo(work, rank, 1)
    load_plugins()
    h.publish_server_args(h.model_dir(work, "mha"), extra={**sglang_extra, **store_extra})
    with get_memory().override(hicache_storage_prefetch_policy=stop_policy):
        return h.build_controller("mha", group)


def _back_up(cc, tokens) -> None:
    """SGLang's backup thread writes the pages of ``tokens`` from fresh host slots."""
    pool = cc.mem_pool_host.anchor_entry.host_pool
    slots = cc.mem_pool_host.alloc(len(tokens))
    h.write_slots(pool, slots, h.expected_kv(pool, len(tokens), 7))
    assert h.backup_through_controller(cc, slots, tokens) == len(tokens)


def _run(rank, world, work, store_extra, sglang_extra, stop_policy, pages, check):
    from sglang.srt.runtime_context import reset_context

    cc = _controller(work, rank, store_extra, sglang_extra, stop_policy)
    try:
        tokens = _tokens("prefetch-policy", pages)
        _back_up(cc, tokens)
        hit, _, loaded = h.prefetch_through_controller(cc, "req", tokens + _tokens("tail", 2))
        check(cc.storage_backend, hit, loaded)
    finally:
        cc.detach_storage_backend()
        reset_context()


def nvme(tmp_path, **more) -> dict:
    store = {"mode": "in_process", "tiers": {"nvme": {"path": str(tmp_path / "nvme.data"), "capacity": "64MiB",
                                                       "region_size": "4MiB", "queue_depth": 8}}}
    store.update(more)
    return store


def _default_policy_reports_every_hit(backend, hit, loaded):
    assert (hit, loaded) == (40 * PS, 40 * PS)
    st = backend.store.stats()["prefetch"]
    assert st["policy"] == "prefix_order" and st["queries"] == 1
    assert st["candidate_pages"] == st["reported_pages"] == 40 and st["declined_pages"] == 0


def test_sglangs_prefetch_thread_asks_the_default_policy_and_gets_every_hit(tmp_path):
    h.run_ranks(_run, 1, str(tmp_path), nvme(tmp_path), {}, "timeout", 40, _default_policy_reports_every_hit)


def _cost_aware_declines(backend, hit, loaded):
    assert (hit, loaded) == (0, 0)
    st = backend.store.stats()["prefetch"]
    assert (st["policy"], st["reported_pages"], st["declined_pages"], st["declined_tokens"]) == \
        ("cost_aware", 0, 40, 40 * PS)


def test_cost_aware_from_the_extra_config_declines_pages_slower_than_recompute(tmp_path):
    # NVMe at a starting 2 GB/s: an 8b page of 4 tokens (4 x 128 KiB) loads in 0.26 ms and
    # recomputes in about 0.13 ms, so every page is declined and SGLang finds no hit
    store = nvme(tmp_path, prefetch={"policy": "cost_aware", "estimates": {"nvme_gbps": 2}})
    h.run_ranks(_run, 1, str(tmp_path), store, {}, "timeout", 40, _cost_aware_declines)


def _recorder_saw_sglangs_settings(backend, hit, loaded):
    assert (hit, loaded) == (5 * PS, 5 * PS)   # the policy's answer is what SGLang gets
    seen = sys.modules["sgpolicies.recorder"].SEEN
    assert len(seen) == 1
    request = seen[0]
    assert (request.pages, request.batch_pages, request.page_tokens) == (10, 12, PS)
    assert list(request.tiers) == [2] * 10   # on NVMe: this store has no DRAM tier
    s = request.settings
    assert (s.threshold_tokens, s.timeout_base_s, s.timeout_per_ki_token_s, s.stop_policy) == \
        (512, 3.0, 0.5, "best_effort")


def test_sglangs_prefetch_settings_reach_the_policy_from_the_server_arguments(tmp_path, monkeypatch):
    pkg = tmp_path / "sgpolicies"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "recorder.py").write_text(textwrap.dedent("""
        from mooncake_hicache.policies import PrefetchPlan, PrefetchPolicy

        SEEN = []

        class Recorder(PrefetchPolicy):
            '''Reports half of the hits and records what it was asked.'''
            name = "recorder"
            def plan(self, request):
                SEEN.append(request)
                return PrefetchPlan(report=request.pages // 2)
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    store = nvme(tmp_path, prefetch={"policy": "sgpolicies.recorder:Recorder"})
    sglang_keys = {"prefetch_threshold": 512, "prefetch_timeout_base": 3, "prefetch_timeout_per_ki_token": 0.5}
    h.run_ranks(_run, 1, str(tmp_path), store, sglang_keys, "best_effort", 10, _recorder_saw_sglangs_settings)
