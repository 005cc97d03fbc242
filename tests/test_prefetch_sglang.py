"""The prefetch policy inside SGLang (0.5.23, CPU): a real ``HiCacheController`` builds our backend
through SGLang's factory (the ``mooncake`` name our plugin registers), its backup thread writes
pages, and its prefetch thread's existence query (``batch_exists``) goes through the policy; SGLang's
prefetch settings reach the policy from the server arguments, read with SGLang's own parser.

The controller runs on CPU with a one-process gloo group, SGLang's server arguments published with
``override_server_args`` and the parallel ranks stated with ``get_parallel().override``. The store
is a small NVMe-only in-process store under tmp_path (every page is on NVMe)."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
import threading

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sglang")

import sglang_helpers as h  # noqa: E402

h.import_sglang()

import torch.distributed as dist  # noqa: E402
from sglang.srt.managers.cache_controller import HiCacheController  # noqa: E402
from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator  # noqa: E402
from sglang.srt.mem_cache.hybrid_cache.hybrid_cache_controller import HybridCacheController  # noqa: E402
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool  # noqa: E402
from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost  # noqa: E402
from sglang.srt.mem_cache.utils import get_storage_hash_str  # noqa: E402
from sglang.srt.runtime_context import get_context, get_parallel  # noqa: E402

from mooncake_hicache.sglang import MooncakeHiCacheStorage, plugin  # noqa: E402

PS = h.PAGE_SIZE   # 4 tokens a page
PAGES = 40
LAYERS = 2


def _host_pool():
    device = MHATokenToKVPool(64 * PS, PS, torch.bfloat16, 2, 16, LAYERS, "cpu", False, start_layer=0, end_layer=LAYERS)
    alloc = TokenToKVPoolAllocator(64 * PS, torch.bfloat16, "cpu", device, need_sort=False)
    info = device.get_device_pool_infos()[0].buffer_info
    host = MHATokenToKVPoolHost(info, 2.0, 0, PS, "page_first", pin_memory=False, device="cpu",
                                device_capacity_tokens=device.size, start_layer=0, end_layer=LAYERS,
                                host_token_capacity=(PAGES + 1) * PS)
    return alloc, host


@pytest.fixture
def controller(tmp_path):
    """controller(store_extra, sglang_extra=None, stop_policy="timeout") -> a real HiCacheController
    with our backend attached and SGLang's storage threads running, as an SGLang server builds it:
    the extra config JSON on the server arguments, parsed (and stripped of SGLang's own keys) by
    SGLang before the rest goes to the backend."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    plugin.register()
    made, overrides = [], []

    def make(store_extra: dict, sglang_extra: dict = None, stop_policy: str = "timeout"):
        raw = json.dumps({**(sglang_extra or {}), **store_extra})
        override = get_context().override_server_args(hicache_storage_backend_extra_config=raw,
                                                      hicache_storage_prefetch_policy=stop_policy)
        override.install()
        overrides.append(override)
        extra, threshold, _, _, _ = HybridCacheController.parse_storage_backend_extra_config(raw)
        alloc, host = _host_pool()
        h.fill(host, 7)
        ctrl = HiCacheController(alloc, host, PS, dist.group.WORLD, threading.Event(), storage_backend="mooncake",
                                 prefetch_threshold=threshold, model_name="org/test-model",
                                 storage_backend_extra_config=extra)
        made.append(ctrl)
        return ctrl

    with get_parallel().override(tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_dcp_rank=0):
        try:
            yield make
        finally:
            for ctrl in made:
                ctrl.detach_storage_backend()
            for override in reversed(overrides):
                override.restore()
            dist.destroy_process_group()


def nvme(tmp_path, **more) -> dict:
    store = {"mode": "in_process", "tiers": {"nvme": {"path": str(tmp_path / "nvme.data"), "capacity": "64MiB",
                                                       "region_size": "4MiB", "queue_depth": 8}}}
    store.update(more)
    return store


def back_up(ctrl, pages: int) -> list:
    """SGLang's backup thread writes `pages` pages of one request; returns its token ids."""
    tokens = list(range(1000, 1000 + pages * PS))
    hashes = get_storage_hash_str(tokens, None, page_size=PS)
    ctrl.write_storage(h.page_indices(ctrl.mem_pool_host, range(pages)), tokens, hash_value=hashes)
    done = ctrl.ack_backup_queue.get(timeout=30)
    assert done.completed_tokens == pages * PS
    return tokens


def hit_tokens(ctrl, tokens) -> int:
    """What SGLang's prefetch thread finds for a request of `tokens` (its storage_hit_count)."""
    op = ctrl.prefetch("req", tokens)
    got = ctrl.prefetch_hit_queue.get(timeout=30)
    assert got is op
    return op.storage_hit_count


def test_sglangs_prefetch_thread_asks_the_default_policy_and_gets_every_hit(controller, tmp_path):
    ctrl = controller(nvme(tmp_path))
    assert isinstance(ctrl.storage_backend, MooncakeHiCacheStorage)
    tokens = back_up(ctrl, PAGES)
    assert hit_tokens(ctrl, tokens + [1, 2, 3, 4]) == PAGES * PS
    st = ctrl.storage_backend.store.stats()["prefetch"]
    assert st["policy"] == "prefix_order" and st["queries"] == 1
    assert st["candidate_pages"] == st["reported_pages"] == PAGES and st["declined_pages"] == 0


def test_cost_aware_from_the_extra_config_declines_pages_slower_than_recompute(controller, tmp_path):
    # NVMe at a starting 2 GB/s: an 8b page of 4 tokens (4 x 128 KiB) loads in 0.26 ms and
    # recomputes in about 0.13 ms, so every page is declined and SGLang finds no hit
    ctrl = controller(nvme(tmp_path, prefetch={"policy": "cost_aware", "estimates": {"nvme_gbps": 2}}))
    tokens = back_up(ctrl, PAGES)
    assert hit_tokens(ctrl, tokens) == 0
    st = ctrl.storage_backend.store.stats()["prefetch"]
    assert (st["policy"], st["reported_pages"], st["declined_pages"], st["declined_tokens"]) == \
        ("cost_aware", 0, PAGES, PAGES * PS)


def test_sglangs_prefetch_settings_reach_the_policy_from_the_server_arguments(controller, tmp_path, monkeypatch):
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
    ctrl = controller(nvme(tmp_path, prefetch={"policy": "sgpolicies.recorder:Recorder"}),
                      sglang_extra={"prefetch_threshold": 512, "prefetch_timeout_base": 3,
                                    "prefetch_timeout_per_ki_token": 0.5},
                      stop_policy="best_effort")
    tokens = back_up(ctrl, 10)
    assert hit_tokens(ctrl, tokens) == 5 * PS   # the policy's answer is what SGLang gets
    seen = sys.modules["sgpolicies.recorder"].SEEN
    assert len(seen) == 1
    request = seen[0]
    assert (request.pages, request.batch_pages, request.page_tokens) == (10, 10, PS)
    assert list(request.tiers) == [2] * 10   # on NVMe: this store has no DRAM tier
    s = request.settings
    assert (s.threshold_tokens, s.timeout_base_s, s.timeout_per_ki_token_s, s.stop_policy) == (512, 3.0, 0.5, "best_effort")
