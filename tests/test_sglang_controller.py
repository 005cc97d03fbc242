"""Our backend driven by SGLang's own HiCache controller (sglang 0.5.23, CPU).

Each test builds SGLang's real ``HybridCacheController`` (what ``UnifiedRadixCache`` uses) from a
real, resolved ``ServerArgs``: host pool and allocator as SGLang's pool assembler makes them, the
storage backend created by SGLang's ``StorageBackendFactory`` after ``load_plugins()``. Data moves
only through SGLang's threads: ``write_storage`` -> backup thread -> ``batch_set_v1``;
``prefetch`` -> prefetch thread (``batch_exists`` + the cross-rank MIN all-reduce) ->
``prefetch_buffer`` -> prefetch-IO thread (``batch_get_v1``) -> sync thread. The test plays only
the scheduler's part between the queues (allocating host slots for a hit, as ``UnifiedRadixCache``
does). Every (page, layer, K/V, head) slice that comes back is compared with what was written,
through each layout's logical view. The store is a mooncake-hicache node (DRAM + NVMe) in its own
process, shared by every rank; each test process is forked (SGLang stays imported), so the
runtime config SGLang publishes and torch.distributed stay per process.
"""

from __future__ import annotations

import random
import shutil
import tempfile

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sglang")

import sglang_helpers as h  # noqa: E402

h.import_sglang()

from sglang.srt.mem_cache.hicache_storage import PoolHitPolicy, PoolName, PoolTransfer  # noqa: E402

from mooncake_hicache.sglang import MooncakeHiCacheStorage  # noqa: E402

PS = h.PAGE_SIZE
PAGES = 130  # more than one 128-page storage batch
DYNAMIC = {"backend_name": "mooncake", "module_path": "mooncake_hicache.sglang",
           "class_name": "MooncakeHiCacheStorage", "interface_v1": 1}

# (selection path, --hicache-mem-layout, --hicache-io-backend) -> the layout SGLang runs with.
CONFIGS = {
    ("mooncake", "page_first", "kernel"): "page_first",
    ("mooncake", "page_first_direct", "direct"): "page_first_direct",
    ("mooncake", "layer_first", "kernel"): "page_first",         # SGLang rewrites layer_first for 'mooncake'
    ("mooncake", "layer_first", "direct"): "page_first_direct",
    ("dynamic", "layer_first", "direct"): "layer_first",
    ("dynamic", "layer_first", "kernel"): "layer_first",
    ("dynamic", "page_first", "kernel"): "page_first",
    ("dynamic", "page_first_direct", "direct"): "page_first_direct",
}
RUN = [("mooncake", "page_first", "kernel"), ("mooncake", "page_first_direct", "direct"),
       ("dynamic", "layer_first", "direct")]


@pytest.fixture(scope="module")
def node():
    d = tempfile.mkdtemp(prefix="mchct", dir="/tmp")
    try:
        cfg, proc = h.start_node(d)
        try:
            yield cfg
        finally:
            h.stop_node(proc)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def work(tmp_path_factory):
    """A short-lived directory for model configs and the gloo file store."""
    return str(tmp_path_factory.mktemp("ctl"))


def _start(kind, work, node, path, layout, io, *, tp_size=1, rank=0, served=None, model=None):
    """Publish the server's config for this rank, load plugins, build the controller."""
    from sglang.srt.plugins import load_plugins
    from sglang.srt.runtime_context import get_memory

    load_plugins()
    extra = dict(node, **(DYNAMIC if path == "dynamic" else {}))
    h.publish_server_args(model or h.model_dir(work, kind), backend=path, layout=layout, io_backend=io,
                          extra=extra, tp_size=tp_size, rank=rank, served_model_name=served)
    assert get_memory().hicache_mem_layout == CONFIGS[(path, layout, io)]
    return h.build_controller(kind, _WORLD[0])


_WORLD = [None]  # this process's gloo group (set by _rank_process)


def _rank_process(rank, world, store_dir, body, *args):
    _WORLD[0] = h.init_gloo(store_dir, rank, world)
    body(rank, world, *args)


def _stop(cc):
    from sglang.srt.runtime_context import reset_context

    cc.detach_storage_backend()
    reset_context()


def _tokens(salt: str, pages: int):
    rng = random.Random(salt)
    return [rng.randrange(1, 1000) for _ in range(pages * PS)]


def _write(cc, tokens, seed):
    """Fill fresh host slots with ``seed``'s KV and back them up through SGLang's backup thread."""
    pool = cc.mem_pool_host.anchor_entry.host_pool
    slots = cc.mem_pool_host.alloc(len(tokens))
    data = h.expected_kv(pool, len(tokens), seed)
    h.write_slots(pool, slots, data)
    return h.backup_through_controller(cc, slots, tokens), data


def _read_and_check(cc, rid, tokens, data, want_pages):
    """Prefetch ``tokens`` through SGLang's threads; the hit and the loaded tokens must be
    ``want_pages`` pages and every slice of them must equal ``data``."""
    pool = cc.mem_pool_host.anchor_entry.host_pool
    hit, slots, loaded = h.prefetch_through_controller(cc, rid, tokens)
    assert (hit, loaded) == (want_pages * PS, want_pages * PS), (hit, loaded)
    wrong = h.first_wrong_slice(pool, slots, data[:loaded])
    assert wrong is None, f"(page, layer, kv, head) {wrong} differs after the round trip"


# ---- one rank ------------------------------------------------------------------------------------

def _one_rank_all_layouts(rank, world, kind, work, node):
    for i, (path, layout, io) in enumerate(RUN):
        cc = _start(kind, work, node, path, layout, io)
        backend = cc.storage_backend
        assert isinstance(backend, MooncakeHiCacheStorage)
        assert cc.page_get_func == cc._page_get_zero_copy and cc.page_set_func == cc._page_set_zero_copy
        tokens = _tokens(f"{kind}-{path}-{layout}", PAGES)
        written, data = _write(cc, tokens, seed=100 + i)
        assert written == PAGES * PS
        # Three more pages than stored: the hit is exactly the stored prefix.
        _read_and_check(cc, f"r{i}", tokens + _tokens("tail", 3), data, PAGES)
        assert h.prefetch_through_controller(cc, f"miss{i}", _tokens("never-stored", 2))[0] == 0
        _stop(cc)


@pytest.mark.parametrize("kind", ["mha", "mla"])
def test_sglang_controller_threads_store_and_restore_every_slice_in_every_layout(kind, work, node):
    h.run_ranks(_rank_process, 1, work, _one_rank_all_layouts, kind, work, node)


# ---- two TP ranks at once ------------------------------------------------------------------------

def _two_ranks(rank, world, kind, work, node):
    import torch.distributed as dist

    for i, (path, layout, io) in enumerate(RUN):
        cc = _start(kind, work, node, path, layout, io, tp_size=world, rank=rank)
        tokens = _tokens(f"tp2-{kind}-{path}-{layout}", PAGES)
        if kind == "mla":
            # Rank-replicated KV: SGLang's backup thread writes on the storage-writer rank only.
            written, data = _write(cc, tokens, seed=200 + i)
            assert written == (PAGES * PS if rank == 0 else 0)
            want = PAGES
        else:
            # Each rank its own heads; rank 1 backs up fewer pages, and SGLang's MIN all-reduce
            # in the prefetch thread makes both ranks load only what both have.
            short = PAGES - 7
            written, data = _write(cc, tokens if rank == 0 else tokens[:short * PS], seed=300 + 10 * i + rank)
            assert written == (PAGES if rank == 0 else short) * PS
            want = short
        dist.barrier()  # every rank's writes are in before anyone reads
        _read_and_check(cc, f"tp2-{i}", tokens, data, want)
        dist.barrier()
        _stop(cc)


@pytest.mark.parametrize("kind", ["mha", "mla"])
def test_two_tp_ranks_share_one_node_through_sglang_controllers(kind, work, node):
    h.run_ranks(_rank_process, 2, work, _two_ranks, kind, work, node)


# ---- layouts across servers ----------------------------------------------------------------------

def _cross_layouts(rank, world, kind, work, node):
    tokens = _tokens(f"cross-{kind}", 40)
    cc = _start(kind, work, node, "dynamic", "layer_first", "direct")
    written, data = _write(cc, tokens, seed=400)
    assert written == len(tokens)
    _stop(cc)
    # A server on the name 'mooncake' asked for layer_first with direct IO runs page_first_direct:
    # the same layer-major page bytes, so it reads every page the layer_first server wrote.
    cc = _start(kind, work, node, "mooncake", "layer_first", "direct")
    _read_and_check(cc, "cross-direct", tokens, data, 40)
    _stop(cc)
    # With the kernel IO backend it runs page_first (token-major bytes): its own namespace, a miss.
    cc = _start(kind, work, node, "mooncake", "layer_first", "kernel")
    assert h.prefetch_through_controller(cc, "cross-kernel", tokens)[0] == 0
    _stop(cc)


@pytest.mark.parametrize("kind", ["mha", "mla"])
def test_layer_first_and_page_first_direct_servers_read_each_others_pages_page_first_does_not(kind, work, node):
    h.run_ranks(_rank_process, 1, work, _cross_layouts, kind, work, node)


@pytest.mark.parametrize("path,layout,io", sorted(CONFIGS))
def test_sglang_resolves_the_layout_each_selection_path_runs_with(path, layout, io, tmp_path):
    from sglang.srt.runtime_context import get_memory, reset_context

    try:
        h.publish_server_args(h.model_dir(tmp_path, "mha"), backend=path, layout=layout, io_backend=io)
        assert get_memory().hicache_mem_layout == CONFIGS[(path, layout, io)]
    finally:
        reset_context()


# ---- MHA draft pools of an MLA model on a non-writer rank ---------------------------------------

def _draft_entry(cc_kind_pages=512):
    """An MHA draft model's KV pool as a side entry sharing the KV pool's slots (EAGLE-style)."""
    from sglang.srt.mem_cache.hybrid_cache.hybrid_pool_assembler import build_pool_entry

    device = h._device_pool("mha", cc_kind_pages * PS // 2, PS)
    host = h._host_pool("mha", device, cc_kind_pages * PS)
    return build_pool_entry(name=PoolName.DRAFT, host_pool=host, device_pool=device, layer_mapping={0: 0},
                            transfer_layer_id_max=1)


def _draft_start(work, node, path, rank):
    from sglang.srt.plugins import load_plugins

    load_plugins()
    extra = dict(node, **(DYNAMIC if path == "dynamic" else {}))
    h.publish_server_args(h.model_dir(work, "mla"), backend=path, layout="page_first", extra=extra,
                          tp_size=2, rank=rank)
    return h.build_controller("mla", _WORLD[0], side_entries=[_draft_entry()])


def _draft_sidecar():
    return [PoolTransfer(name=PoolName.DRAFT, indices_from_pool=PoolName.KV, hit_policy=PoolHitPolicy.ALL_PAGES)]


def _draft_rank_1(rank, world, work, node):
    outcomes = {}
    for path in ("mooncake", "dynamic"):
        tokens = _tokens(f"draft-{path}", 12)
        # Rank 0 (the storage writer) backs up the replicated MLA pages and its draft shard.
        cc = _draft_start(work, node, path, rank=0)
        assert h.backup_through_controller(cc, cc.mem_pool_host.alloc(len(tokens)), tokens,
                                           extra_pools=_draft_sidecar()) == len(tokens)
        _stop(cc)
        # Rank 1 writes no MLA page; SGLang's should_backup decides whether it writes its draft shard.
        cc = _draft_start(work, node, path, rank=1)
        draft = cc.mem_pool_host.entry_map[PoolName.DRAFT].host_pool
        slots = cc.mem_pool_host.alloc(len(tokens))
        data = h.expected_kv(draft, len(tokens), seed=500)
        h.write_slots(draft, slots, data)
        written = h.backup_through_controller(cc, slots, tokens, extra_pools=_draft_sidecar())
        hit, got_slots, loaded = h.prefetch_through_controller(cc, f"draft-{path}", tokens,
                                                               extra_pools=_draft_sidecar())
        assert got_slots is not None and h.first_wrong_slice(draft, got_slots, data[:loaded]) is None
        outcomes[path] = (written, hit, loaded)
        _stop(cc)
    n = 12 * PS
    assert outcomes == {"mooncake": (n, n, n), "dynamic": (n, n, n)}, outcomes


def test_mla_models_mha_draft_pool_is_backed_up_on_non_writer_ranks_under_both_selection_paths(work, node):
    h.run_ranks(_rank_process, 1, work, _draft_rank_1, work, node)
