"""MooncakeHiCacheStorage against the real SGLang package (0.5.23) on CPU: SGLang's plugin loader
and backend factory, its real host KV pools in every generic layout, the calls its cache
controller makes (batch_exists, batch_set_v1/batch_get_v1 in 128-page batches), the tensor calls,
the v2 calls of hybrid models, its failure injector, and two processes as two TP ranks of an MLA
model. The store under the backend is a small NVMe-only in-process store on a file in tmp_path,
except in the last tests, which run a per-host node (DRAM + NVMe) in a child process."""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import shutil
import tempfile
import threading
import time
import traceback

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sglang")

import sglang_helpers as h  # noqa: E402

h.import_sglang()

from sglang.srt.mem_cache.hicache_storage import (  # noqa: E402
    STORAGE_BATCH_SIZE,
    HiCacheFile,
    HiCacheStorageExtraInfo,
    HiCacheStorageFailureInjector,
    PoolHitPolicy,
    PoolName,
    PoolTransfer,
)
from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory  # noqa: E402

from mooncake_hicache import StoreError  # noqa: E402
from mooncake_hicache.sglang import MooncakeHiCacheStorage  # noqa: E402
from mooncake_hicache.sglang import hooks, plugin  # noqa: E402
from mooncake_hicache.sglang.options import parse_extra_config  # noqa: E402

KINDS = ["mha", "mla"]
LAYOUTS = ["layer_first", "page_first", "page_first_direct"]
BATCH = STORAGE_BATCH_SIZE  # 128: the most pages SGLang puts in one call
PAGES = 2 * BATCH


@pytest.fixture
def nvme(tmp_path):
    """extra_config inline overrides for a small NVMe-only store on tmp_path/<name>.data."""

    def _extra(name: str = "nvme", **more) -> dict:
        extra = {"tiers": {"nvme": {"path": str(tmp_path / f"{name}.data"), "capacity": "256MiB",
                                    "region_size": "4MiB", "queue_depth": 16}}}
        extra.update(more)
        return extra

    return _extra


@pytest.fixture
def backends():
    """make(cfg, pool=None) -> MooncakeHiCacheStorage; every one is closed at teardown."""
    made = []

    def _make(cfg, pool=None):
        b = MooncakeHiCacheStorage(cfg, pool)
        made.append(b)
        return b

    yield _make
    for b in made:
        b.close()


def _set_all(backend, pool, keys, first_page=0):
    """Write ``keys`` from pages first_page.. in 128-page batches, as SGLang's backup thread does."""
    for i in range(0, len(keys), BATCH):
        batch = keys[i:i + BATCH]
        ok = backend.batch_set_v1(batch, h.page_indices(pool, range(first_page + i, first_page + i + len(batch))))
        assert ok == [True] * len(batch)


def _get_all(backend, pool, keys, first_page):
    """Read ``keys`` into pages first_page.. (zeroed first) in 128-page batches."""
    h.zero_pages(pool, range(first_page, first_page + len(keys)))
    results = []
    for i in range(0, len(keys), BATCH):
        batch = keys[i:i + BATCH]
        results += backend.batch_get_v1(batch, h.page_indices(pool, range(first_page + i, first_page + i + len(batch))))
    return results


def _same_pages(pool, src_first, dst_first, n, other_pool=None):
    other_pool = other_pool or pool
    return all(h.page_bytes(pool, src_first + i) == h.page_bytes(other_pool, dst_first + i) for i in range(n))


# ---- selection ---------------------------------------------------------------------------------

def test_load_plugins_makes_the_factory_build_our_backend_for_mooncake(nvme):
    from sglang.srt.plugins import load_plugins

    load_plugins()
    entry = StorageBackendFactory._registry["mooncake"]
    assert (entry["module_path"], entry["class_name"]) == ("mooncake_hicache.sglang", "MooncakeHiCacheStorage")
    pool = h.mha_host_pool("page_first", 8)
    backend = StorageBackendFactory.create_backend("mooncake", h.storage_config(extra=nvme()), pool)
    try:
        assert type(backend) is MooncakeHiCacheStorage
        assert backend.mem_pool_host is pool
    finally:
        backend.close()


def test_plugin_opt_out_env_leaves_mooncake_to_sglangs_builtin_store(monkeypatch, caplog):
    saved = dict(StorageBackendFactory._registry["mooncake"])
    builtin = ("sglang.srt.mem_cache.storage.mooncake_store.mooncake_store", "MooncakeStore")
    try:
        StorageBackendFactory.register_backend("mooncake", *builtin)
        monkeypatch.setenv(plugin.DISABLE_ENV, "1")
        monkeypatch.setenv(hooks.REUSE_TE_ENV, "1")  # SGLang's store shares the TransferEngine
        assert plugin.register() is False
        entry = StorageBackendFactory._registry["mooncake"]
        assert (entry["module_path"], entry["class_name"]) == builtin
        assert os.environ[hooks.REUSE_TE_ENV] == "1"  # untouched for SGLang's own store
        monkeypatch.setenv(plugin.DISABLE_ENV, "0")
        with caplog.at_level(logging.WARNING, logger="mooncake_hicache.sglang"):
            assert plugin.register() is True
        assert StorageBackendFactory._registry["mooncake"]["module_path"] == "mooncake_hicache.sglang"
        assert os.environ[hooks.REUSE_TE_ENV] == "false"  # ours needs no TransferEngine
        assert f"{hooks.REUSE_TE_ENV}=1 ignored" in caplog.text  # the user's own value: said, not silent
    finally:
        StorageBackendFactory._registry["mooncake"] = saved


def test_dynamic_backend_path_builds_with_kwargs_and_takes_the_pool_later(nvme):
    extra = nvme(backend_name="mooncake", module_path="mooncake_hicache.sglang",
                 class_name="MooncakeHiCacheStorage", interface_v1=1)
    pool = h.mha_host_pool("page_first_direct", 2 * 8)
    h.fill(pool, 3)
    backend = StorageBackendFactory.create_backend("dynamic", h.storage_config(extra=extra), pool)
    try:
        assert type(backend) is MooncakeHiCacheStorage
        keys = h.hash_keys(8)
        # Before the controller registers the host pool: misses, no exception.
        assert backend.batch_exists(keys) == 0
        assert backend.batch_set_v1(keys, h.page_indices(pool, range(8))) == [False] * 8
        backend.register_mem_pool_host(pool)  # what HiCacheController.attach_storage_backend does
        backend.register_mem_pool_host(pool)  # ... also after the built-in path's constructor: harmless
        _set_all(backend, pool, keys)
        assert backend.batch_exists(keys) == 8
        assert _get_all(backend, pool, keys, 8) == [True] * 8
        assert _same_pages(pool, 0, 8, 8)
    finally:
        backend.close()


# ---- the zero-copy hot path ----------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", KINDS)
def test_pages_written_in_128_page_batches_read_back_into_other_host_slots(kind, layout, nvme, backends):
    pool = h.host_pool(kind, layout, 2 * PAGES)
    h.fill(pool, seed=7)
    backend = backends(h.storage_config(mla=kind == "mla", layout=layout, extra=nvme()), pool)
    keys = h.hash_keys(PAGES, salt=kind + layout)

    for i in range(0, PAGES, BATCH):
        assert backend.batch_exists(keys[i:i + BATCH]) == 0
    _set_all(backend, pool, keys)
    for i in range(0, PAGES, BATCH):
        assert backend.batch_exists(keys[i:i + BATCH], HiCacheStorageExtraInfo(prefix_keys=keys[:i])) == BATCH

    assert _get_all(backend, pool, keys, PAGES) == [True] * PAGES
    assert _same_pages(pool, 0, PAGES, PAGES)


@pytest.mark.parametrize("kind", KINDS)
def test_exists_counts_only_the_leading_stored_pages(kind, nvme, backends):
    pool = h.host_pool(kind, "page_first", 16)
    backend = backends(h.storage_config(mla=kind == "mla", extra=nvme()), pool)
    keys = h.hash_keys(10)
    _set_all(backend, pool, keys[:6])
    assert backend.batch_exists(keys) == 6
    assert backend.batch_exists(keys[:3] + ["f" * 64] + keys[4:6]) == 3
    assert backend.batch_exists([]) == 0
    assert backend.batch_get_v1(keys[5:8], h.page_indices(pool, range(10, 13))) == [True, False, False]


def test_pages_already_stored_are_not_written_again(nvme, backends):
    pool = h.mha_host_pool("page_first", 32)
    backend = backends(h.storage_config(extra=nvme()), pool)
    written = []
    real_put = backend.store.batch_put_from_multi_buffers

    def spy(keys, *args, **kwargs):
        written.extend(keys)
        return real_put(keys, *args, **kwargs)

    backend.store.batch_put_from_multi_buffers = spy
    keys = h.hash_keys(12)
    _set_all(backend, pool, keys[:8])
    assert len(written) == 8
    _set_all(backend, pool, keys)  # 8 already there, 4 new
    assert len(written) == 12 and len(set(written)) == 12


def test_exists_asks_the_store_to_promote_the_hits_and_writes_carry_chain_depths(nvme, backends):
    pool = h.mha_host_pool("page_first", 16)
    backend = backends(h.storage_config(extra=nvme()), pool)
    prefetched, depths = [], []
    real_put = backend.store.batch_put_from_multi_buffers
    backend.store.prefetch = lambda keys: prefetched.append(list(keys)) or 0

    def spy(keys, *args, **kwargs):
        depths.append(kwargs.get("depths"))
        return real_put(keys, *args, **kwargs)

    backend.store.batch_put_from_multi_buffers = spy
    keys = h.hash_keys(6)
    assert backend.batch_set_v1(keys[2:5], h.page_indices(pool, range(3)), HiCacheStorageExtraInfo(prefix_keys=keys[:2])) == [True] * 3
    assert depths == [[2, 3, 4]]  # each page's place in its prefix chain (for chain-aware eviction)
    assert backend.batch_set_v1(keys[:2], h.page_indices(pool, range(2))) == [True, True]
    assert depths[-1] is None  # unknown without SGLang's prefix keys
    assert backend.batch_exists(keys) == 5
    assert prefetched == [backend._kv_view.object_keys(keys[:5])]

    quiet_pool = h.mha_host_pool("page_first", 4)
    quiet = backends(h.storage_config(extra=nvme("quiet", prefetch_on_exists=False)), quiet_pool)
    quiet.store.prefetch = lambda keys: pytest.fail("prefetch_on_exists: false must not prefetch")
    _set_all(quiet, quiet_pool, keys[:2])
    assert quiet.batch_exists(keys) == 2


def test_a_stored_value_is_one_record_per_page_with_sglangs_flat_page_bytes(nvme, backends):
    pool = h.mha_host_pool("layer_first", 8)
    h.fill(pool, 5)
    backend = backends(h.storage_config(extra=nvme()), pool)
    keys = h.hash_keys(3)
    _set_all(backend, pool, keys)
    stats = backend.store_stats()
    assert stats["nvme"]["entries"] == 3
    # The record under the page's key is exactly SGLang's own flat page (K of every layer, then V).
    skey = backend._tensor_key(keys[1])
    assert backend.store.get(skey) == h.page_bytes(pool, 1)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", KINDS)
def test_tensor_calls_and_zero_copy_calls_read_each_others_pages(kind, layout, nvme, backends):
    pool = h.host_pool(kind, layout, 24)
    h.fill(pool, 11)
    backend = backends(h.storage_config(mla=kind == "mla", layout=layout, extra=nvme()), pool)
    ps = pool.page_size
    keys = h.hash_keys(8)
    # SGLang's generic path: batch_set(keys, [get_data_page(i)]) ...
    assert backend.batch_set(keys[:4], [pool.get_data_page(p * ps) for p in range(4)]) is True
    assert all(backend.exists(k) for k in keys[:4]) and not backend.exists(keys[4])
    # ... read by the zero-copy path.
    assert _get_all(backend, pool, keys[:4], 8) == [True] * 4
    assert _same_pages(pool, 0, 8, 4)
    # The zero-copy path's pages read by batch_get into dummy flat pages.
    _set_all(backend, pool, keys[4:], first_page=4)
    got = backend.batch_get(keys[4:], [pool.get_dummy_flat_data_page() for _ in range(4)])
    assert all(t is not None for t in got)
    assert [bytes(t.view(torch.uint8).numpy()) for t in got] == [h.page_bytes(pool, 4 + i) for i in range(4)]
    # get into a host page (registered memory: zero copy) and a plain tensor; a miss is None.
    target = torch.empty_like(pool.get_dummy_flat_data_page())
    assert backend.get(keys[0], target) is target and bytes(target.view(torch.uint8).numpy()) == h.page_bytes(pool, 0)
    assert backend.get("0" * 64, pool.get_dummy_flat_data_page()) is None


def test_layer_first_and_page_first_direct_pools_share_pages_and_page_first_does_not(nvme, backends):
    layer_first = h.mha_host_pool("layer_first", 16)
    h.fill(layer_first, 13)
    keys = h.hash_keys(6)
    writer = backends(h.storage_config(layout="layer_first", extra=nvme()), layer_first)
    _set_all(writer, layer_first, keys)
    writer.close()

    direct = h.mha_host_pool("page_first_direct", 16)
    reader = backends(h.storage_config(layout="page_first_direct", extra=nvme()), direct)
    assert reader.batch_exists(keys) == 6
    assert _get_all(reader, direct, keys, 8) == [True] * 6
    assert _same_pages(layer_first, 0, 8, 6, other_pool=direct)
    reader.close()

    token_major = h.mha_host_pool("page_first", 16)
    other = backends(h.storage_config(extra=nvme()), token_major)
    assert other.batch_exists(keys) == 0  # other byte order: a miss, never wrong bytes


# ---- key scope and MLA ---------------------------------------------------------------------------

def test_keys_are_scoped_by_model_tp_rank_and_pp_rank_and_survive_a_restart(nvme, backends):
    pool = h.mha_host_pool("page_first", 16)
    h.fill(pool, 17)
    keys = h.hash_keys(5)
    first = backends(h.storage_config(tp_rank=0, tp_size=2, extra=nvme()), pool)
    _set_all(first, pool, keys)
    first.close()

    for cfg in (h.storage_config(tp_rank=1, tp_size=2, extra=nvme()),
                h.storage_config(tp_rank=0, tp_size=1, extra=nvme()),
                h.storage_config(tp_rank=0, tp_size=2, model="org/other-model", extra=nvme()),
                h.storage_config(tp_rank=0, tp_size=2, pp_rank=1, pp_size=2, extra=nvme()),
                h.storage_config(tp_rank=0, tp_size=2, extra=nvme(extra_backend_tag="tenant-b"))):
        other = backends(cfg, pool)
        assert other.batch_exists(keys) == 0
        other.close()

    again = backends(h.storage_config(tp_rank=0, tp_size=2, extra=nvme()), pool)
    assert again.batch_exists(keys) == 5
    assert _get_all(again, pool, keys, 8) == [True] * 5 and _same_pages(pool, 0, 8, 5)


def test_mla_reader_rank_does_not_write_and_reads_the_writers_pages(nvme, backends):
    pool0 = h.mla_host_pool("page_first", 16)
    h.fill(pool0, 19)
    keys = h.hash_keys(6)
    rank1 = backends(h.storage_config(mla=True, tp_rank=1, tp_size=2, extra=nvme()), h.mla_host_pool("page_first", 16))
    assert rank1.batch_set_v1(keys, h.page_indices(rank1.mem_pool_host, range(6))) == [True] * 6
    assert rank1.batch_exists(keys) == 0  # reported done, nothing written: rank 0 writes
    rank1.close()

    rank0 = backends(h.storage_config(mla=True, tp_rank=0, tp_size=2, extra=nvme()), pool0)
    _set_all(rank0, pool0, keys)
    rank0.close()

    pool1 = h.mla_host_pool("page_first", 16)
    rank1 = backends(h.storage_config(mla=True, tp_rank=1, tp_size=2, extra=nvme()), pool1)
    assert rank1.batch_exists(keys) == 6
    assert _get_all(rank1, pool1, keys, 0) == [True] * 6
    assert _same_pages(pool0, 0, 0, 6, other_pool=pool1)


def _mla_rank_process(rank: int, extra: dict, npages: int) -> None:
    """One TP rank of a 2-rank MLA model, in its own process (forked: SGLang is imported)."""
    code = 1
    try:
        torch.set_num_threads(1)
        pool = h.mla_host_pool("page_first_direct", 2 * npages)
        keys = h.hash_keys(npages, salt="mla-two-procs")
        backend = MooncakeHiCacheStorage(h.storage_config(mla=True, tp_rank=rank, tp_size=2, extra=extra), pool)
        if rank == 0:
            h.fill(pool, 23)
            _set_all(backend, pool, keys)
            ok = backend.batch_exists(keys[:BATCH]) == BATCH
        else:
            expected = h.mla_host_pool("page_first_direct", 2 * npages)
            h.fill(expected, 23)  # what rank 0 held
            ok = backend.batch_exists(keys[:BATCH]) == BATCH and backend.batch_exists(keys[BATCH:]) == npages - BATCH
            ok = ok and _get_all(backend, pool, keys, npages) == [True] * npages
            ok = ok and _same_pages(expected, 0, npages, npages, other_pool=pool)
        backend.close()
        code = 0 if ok else 2
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def test_two_processes_as_two_tp_ranks_of_an_mla_model(nvme):
    # Today's store is in-process and locks its NVMe file, so rank 0 runs to completion (and
    # closes) before rank 1 opens the same file. With the per-host node the two ranks will run
    # at once against the node; the check stays the same.
    ctx = multiprocessing.get_context("fork")
    extra = nvme("mla-shared")
    for rank in (0, 1):
        proc = ctx.Process(target=_mla_rank_process, args=(rank, extra, PAGES))
        proc.start()
        proc.join(60)
        if proc.is_alive():
            proc.kill()
            pytest.fail(f"rank {rank} did not finish in 60 s")
        assert proc.exitcode == 0, f"rank {rank} failed (exit code {proc.exitcode})"


# ---- robustness ----------------------------------------------------------------------------------

def test_sglang_failure_injector_env_vars_do_not_break_the_backend(monkeypatch, nvme):
    monkeypatch.setenv("SGLANG_TEST_HICACHE_BACKEND_RANDOM_FAILURE", "0.3")
    monkeypatch.setenv("SGLANG_TEST_HICACHE_BACKEND_RANDOM_DELAY", "0.0005")
    monkeypatch.setattr(plugin, "_disabled", lambda: False)
    monkeypatch.delenv(hooks.REUSE_TE_ENV, raising=False)  # restored after the test
    plugin.register()
    pool = h.mha_host_pool("page_first", 2 * BATCH)
    h.fill(pool, 29)
    backend = StorageBackendFactory.create_backend("mooncake", h.storage_config(extra=nvme()), pool)
    assert isinstance(backend, HiCacheStorageFailureInjector)
    assert isinstance(backend._backend, MooncakeHiCacheStorage)
    HiCacheStorageFailureInjector._thread_local.random = random.Random(1234)  # this thread's draws
    try:
        backend.register_mem_pool_host(pool)
        keys = h.hash_keys(BATCH)
        src = h.page_indices(pool, range(BATCH))
        for _ in range(30):  # an injected failure is a whole-call False: retry as SGLang would later
            if all(backend.batch_set_v1(keys, src)):
                break
        exists = [backend.batch_exists(keys) for _ in range(10)]
        assert set(exists) <= {0, BATCH} and BATCH in exists
        loaded = False
        for _ in range(30):
            h.zero_pages(pool, range(BATCH, 2 * BATCH))
            got = backend.batch_get_v1(keys, h.page_indices(pool, range(BATCH, 2 * BATCH)))
            assert got in ([True] * BATCH, [False] * BATCH)
            if all(got):
                loaded = _same_pages(pool, 0, BATCH, BATCH)
                break
        assert loaded
        assert backend.get_stats() is not None
    finally:
        backend.close()


def test_calls_report_misses_instead_of_raising_when_the_store_fails(nvme, backends, caplog):
    pool = h.mla_host_pool("layer_first", 16)
    backend = backends(h.storage_config(mla=True, extra=nvme()), pool)
    keys = h.hash_keys(4)
    idx = h.page_indices(pool, range(4))
    _set_all(backend, pool, keys)

    def broken(*args, **kwargs):
        raise RuntimeError("node went away")

    for name in ("batch_is_exist", "batch_get_into_multi_buffers", "batch_put_from_multi_buffers", "get", "put"):
        setattr(backend.store, name, broken)
    with caplog.at_level(logging.WARNING, logger="mooncake_hicache.sglang"):
        assert backend.batch_exists(keys) == 0
        assert backend.batch_get_v1(keys, idx) == [False] * 4
        assert backend.batch_set_v1(h.hash_keys(4, "new"), idx) == [False] * 4
        assert backend.exists(keys[0]) is False
        assert backend.get(keys[0], pool.get_dummy_flat_data_page()) is None
        assert backend.set("k", pool.get_dummy_flat_data_page()) is False
        result = backend.batch_exists_v2(keys, [])
        assert result.kv_hit_pages == 0
        assert backend.batch_get_v2([PoolTransfer(name=PoolName.KV, host_indices=idx, keys=keys)]) == {PoolName.KV: [False] * 4}
    assert "node went away" in caplog.text

    # Wrong index counts are refused, not half-done.
    del backend.store.batch_is_exist, backend.store.batch_get_into_multi_buffers, backend.store.batch_put_from_multi_buffers
    assert backend.batch_get_v1(keys, idx[:-1]) == [False] * 4

    backend.close()  # after close: misses, silently
    assert backend.batch_exists(keys) == 0
    assert backend.batch_get_v1(keys, idx) == [False] * 4
    assert backend.batch_set_v1(keys, idx) == [False] * 4
    backend.close()


def test_four_sglang_threads_at_once_get_their_own_bytes(nvme, backends):
    threads_n, per = 4, 32
    pool = h.mha_host_pool("page_first", 2 * threads_n * per)
    h.fill(pool, 31)
    backend = backends(h.storage_config(extra=nvme()), pool)
    errors = []

    def work(t):
        try:
            keys = h.hash_keys(per, salt=f"thread{t}")
            src, dst = t * per, threads_n * per + t * per
            for _ in range(3):
                ok = backend.batch_set_v1(keys, h.page_indices(pool, range(src, src + per)))
                assert ok == [True] * per
                assert backend.batch_exists(keys) == per
                assert backend.batch_get_v1(keys, h.page_indices(pool, range(dst, dst + per))) == [True] * per
            assert _same_pages(pool, src, dst, per)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


# ---- configuration, stats, clear -----------------------------------------------------------------

def test_extra_config_reads_the_yaml_file_merges_inline_overrides_and_ignores_sglang_keys(tmp_path, backends, caplog):
    yaml_path = tmp_path / "hicache.yaml"
    yaml_path.write_text(f"tiers:\n  nvme:\n    path: {tmp_path / 'from-yaml.data'}\n    capacity: 128MiB\n"
                         f"    region_size: 4MiB\n    queue_depth: 8\nlogging:\n  level: INFO\n")
    extra = {
        "config": str(yaml_path),
        "tiers": {"nvme": {"capacity": "64MiB"}},  # merged over the YAML's nvme section
        "prefetch_threshold": 64, "prefetch_timeout_base": 2, "prefetch_timeout_per_ki_token": 0.5,
        "interface_v1": 1, "backend_name": "mooncake", "module_path": "x", "class_name": "y",
        "hicache_storage_pass_prefix_keys": True,
        "master_server_address": "127.0.0.1:50051",  # meant for SGLang's own Mooncake store
    }
    with caplog.at_level(logging.WARNING, logger="mooncake_hicache.sglang"):
        backend = backends(h.storage_config(extra=extra), h.mha_host_pool("page_first", 8))
    nv = backend.store.config.tiers.nvme
    assert (nv.path, nv.capacity, nv.queue_depth) == (str(tmp_path / "from-yaml.data"), 64 << 20, 8)
    assert "master_server_address" in caplog.text
    for key in ("prefetch_threshold", "interface_v1", "backend_name"):
        assert key not in caplog.text


def test_nvme_path_rank_placeholders_give_each_in_process_rank_its_own_file(tmp_path, nvme, backends):
    extra = {"tiers": {"nvme": {"path": str(tmp_path / "rank{tp_rank}-pp{pp_rank}.data")}}}
    options = parse_extra_config(extra, {"tp_rank": 3, "pp_rank": 1})
    assert options.store_config["tiers"]["nvme"]["path"] == str(tmp_path / "rank3-pp1.data")
    assert parse_extra_config({}, {"tp_rank": 3}).store_config is None  # no config: store defaults

    per_rank = nvme("rank{tp_rank}")
    pool = h.mha_host_pool("page_first", 4)
    for rank in (0, 1):  # two in-process ranks at once, each on its own file
        backends(h.storage_config(tp_rank=rank, tp_size=2, extra=per_rank), pool)
    assert sorted(p.name for p in tmp_path.glob("rank*.data")) == ["rank0.data", "rank1.data"]

    shared = nvme("shared")
    backends(h.storage_config(tp_rank=0, tp_size=2, extra=shared), pool)
    with pytest.raises(StoreError, match=r"\{tp_rank\}"):  # the message says how to fix it
        backends(h.storage_config(tp_rank=1, tp_size=2, extra=shared), pool)


def test_get_stats_returns_sglang_storage_metrics_once(nvme, backends):
    from sglang.srt.observability.metrics_collector import StorageMetrics

    pool = h.mla_host_pool("page_first", 32)
    backend = backends(h.storage_config(mla=True, metrics=True, extra=nvme()), pool)
    keys = h.hash_keys(10)
    _set_all(backend, pool, keys)
    _get_all(backend, pool, keys, 16)
    metrics = backend.get_stats()
    assert isinstance(metrics, StorageMetrics)
    assert metrics.backup_pgs == [10] and metrics.prefetch_pgs == [10]
    assert len(metrics.backup_bandwidth) == 1 and metrics.prefetch_bandwidth[0] > 0
    again = backend.get_stats()
    assert again.backup_pgs == [] and again.prefetch_pgs == []


def test_clear_removes_exactly_its_own_pages_and_says_how_many(node, backends, caplog):
    # Two servers (tenants a and b, two models) on one node: clearing a removes a's pages on
    # every tier, reports how many, and leaves b's readable.
    pool = h.mha_host_pool("page_first", 16)
    extra, _ = node
    a = backends(h.storage_config(extra=dict(extra, extra_backend_tag="a")), pool)
    b = backends(h.storage_config(model="other/model", extra=dict(extra, extra_backend_tag="b")), pool)
    keys = h.hash_keys(5)
    _set_all(a, pool, keys)
    _set_all(b, pool, keys)
    assert a.key_prefixes() == [a._kv_view.names[0].prefix + "_"] and a.key_prefixes()[0].startswith("a/")
    with caplog.at_level(logging.INFO, logger="mooncake_hicache.sglang"):
        assert a.clear() is True
    assert "removed 5 objects" in caplog.text and a.key_prefixes()[0] in caplog.text
    assert a.batch_exists(keys) == 0 and b.batch_exists(keys) == 5
    assert _get_all(b, pool, keys, 8) == [True] * 5 and _same_pages(pool, 0, 8, 5)
    assert a.clear() is True  # nothing left: removes 0, still a success


# ---- v2: hybrid pools ----------------------------------------------------------------------------

def test_v2_side_pools_store_pages_and_apply_sglangs_hit_policies_like_its_file_backend(tmp_path, nvme, backends, monkeypatch):
    monkeypatch.delenv("SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR", raising=False)
    kv = h.mha_host_pool("page_first", 32)
    swa = h.mha_host_pool("page_first", 32, layers=1)   # a sliding-window side pool (TRAILING_PAGES)
    indexer = h.mla_host_pool("page_first", 32, layers=1)  # a DSA-indexer-like side pool (ALL_PAGES)
    for pool, seed in ((kv, 1), (swa, 2), (indexer, 3)):
        h.fill(pool, seed)
    keys = h.hash_keys(12)
    kv_pages, swa_pages, indexer_pages = range(10), [2, 3, 6, 7, 8], range(7)

    ours = backends(h.storage_config(extra=nvme()), kv)
    theirs = HiCacheFile(h.storage_config(extra={"file_storage_path": str(tmp_path / "file-backend")}))
    theirs.register_mem_pool_host(kv)
    for b in (ours, theirs):
        b.register_mem_host_pool_v2(swa, PoolName.SWA)
        b.register_mem_host_pool_v2(indexer, PoolName.INDEXER)
    _set_all(ours, kv, [keys[p] for p in kv_pages])
    assert theirs.batch_set([keys[p] for p in kv_pages], [kv.get_data_page(p * kv.page_size) for p in kv_pages])

    def side(name, pool, pages):
        return PoolTransfer(name=name, host_indices=h.page_indices(pool, pages), keys=[keys[p] for p in pages])

    for b in (ours, theirs):
        written = b.batch_set_v2([side(PoolName.SWA, swa, swa_pages), side(PoolName.INDEXER, indexer, indexer_pages)])
        assert written == {PoolName.SWA: [True] * len(swa_pages), PoolName.INDEXER: [True] * len(indexer_pages)}

    query = [PoolTransfer(name=PoolName.SWA, keys=keys[:2], hit_policy=PoolHitPolicy.TRAILING_PAGES),
             PoolTransfer(name=PoolName.INDEXER, keys=keys, hit_policy=PoolHitPolicy.ALL_PAGES)]
    got, want = ours.batch_exists_v2(keys, query), theirs.batch_exists_v2(keys, query)
    assert (got.kv_hit_pages, got.extra_pool_hit_pages, got.restorable_prefix_pages) == \
        (want.kv_hit_pages, want.extra_pool_hit_pages, want.restorable_prefix_pages)
    assert (got.kv_hit_pages, got.restorable_prefix_pages) == (4, [4])
    assert got.extra_pool_hit_pages == {PoolName.KV: 10, PoolName.SWA: 9, PoolName.INDEXER: 7}

    # Read the side pages back into other slots of their pools; a missing page is a False.
    h.zero_pages(swa, range(20, 24))
    read = ours.batch_get_v2([PoolTransfer(name=PoolName.SWA, host_indices=h.page_indices(swa, range(20, 24)),
                                           keys=[keys[p] for p in (6, 7, 8, 9)])])
    assert read == {PoolName.SWA: [True, True, True, False]}
    assert all(h.page_bytes(swa, p) == h.page_bytes(swa, 20 + i) for i, p in enumerate((6, 7, 8)))
    # An unregistered pool is a failure for its transfer only.
    assert ours.batch_get_v2([PoolTransfer(name=PoolName.MAMBA, host_indices=h.page_indices(swa, [0]), keys=keys[:1])]) == \
        {PoolName.MAMBA: [False]}


# ---- through the per-host node -------------------------------------------------------------------

@pytest.fixture
def node():
    """A mooncake-hicache node (small DRAM + NVMe) in a child process; yields (extra_config, proc)."""
    d = tempfile.mkdtemp(prefix="mchsg", dir="/tmp")
    try:
        cfg, proc = h.start_node(d)
        try:
            yield cfg, proc
        finally:
            h.stop_node(proc)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _mla_rank_on_node(rank: int, extra: dict, npages: int) -> None:
    code = 1
    try:
        torch.set_num_threads(1)
        pool = h.mla_host_pool("page_first", 2 * npages)
        keys = h.hash_keys(npages, salt="mla-node")
        backend = MooncakeHiCacheStorage(h.storage_config(mla=True, tp_rank=rank, tp_size=2, extra=extra), pool)
        h.fill(pool, 37)  # both ranks hold the same replicated MLA pages
        if rank == 0:
            _set_all(backend, pool, keys)
            ok = True
        else:
            deadline = time.monotonic() + 30  # rank 0 is writing at the same time
            while backend.batch_exists(keys[BATCH:]) < npages - BATCH and time.monotonic() < deadline:
                time.sleep(0.01)
            ok = backend.batch_exists(keys[:BATCH]) == BATCH
            ok = ok and _get_all(backend, pool, keys, npages) == [True] * npages
            ok = ok and _same_pages(pool, 0, npages, npages)
        backend.close()
        code = 0 if ok else 2
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def test_two_tp_ranks_of_an_mla_model_share_pages_through_the_node_at_once(node):
    extra, _ = node
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_mla_rank_on_node, args=(rank, extra, PAGES)) for rank in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    for rank, p in enumerate(procs):
        if p.is_alive():
            p.kill()
        assert p.exitcode == 0, f"rank {rank} failed (exit code {p.exitcode})"


def test_a_node_killed_mid_prefetch_gives_misses_and_sglangs_threads_keep_running(node):
    extra, proc = node
    pool = h.mha_host_pool("page_first", 4 * BATCH)
    h.fill(pool, 41)
    backend = MooncakeHiCacheStorage(h.storage_config(extra=extra), pool)
    keys = h.hash_keys(BATCH)
    _set_all(backend, pool, keys)
    stop, killed = threading.Event(), threading.Event()
    errors, after_kill = [], {"exists": [], "get": [], "set": []}

    def loop(name, call):
        try:
            while not stop.is_set():
                was_killed = killed.is_set()
                result = call()
                if was_killed:
                    after_kill[name].append(result)
        except BaseException as e:  # a raised exception would have killed SGLang's thread
            errors.append((name, e))

    def prefetch_io():  # reads land in their own slots and must be right whenever reported loaded
        got = backend.batch_get_v1(keys, h.page_indices(pool, range(BATCH, 2 * BATCH)))
        if all(got):
            assert _same_pages(pool, 0, BATCH, BATCH)
        return all(got)

    fresh = iter(range(10**6))
    threads = [threading.Thread(target=loop, args=a) for a in (
        ("exists", lambda: backend.batch_exists(keys)),
        ("get", prefetch_io),
        ("set", lambda: all(backend.batch_set_v1(h.hash_keys(8, f"new{next(fresh)}"),
                                                 h.page_indices(pool, range(2 * BATCH, 2 * BATCH + 8))))))]
    for t in threads:
        t.start()
    time.sleep(0.3)
    proc.kill()
    proc.wait(10)
    killed.set()
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(30)
    backend.close()
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert after_kill["exists"] and after_kill["exists"][-1] == 0
    assert after_kill["get"] and after_kill["get"][-1] is False
    assert after_kill["set"] and after_kill["set"][-1] is False


# ---- key identity: the model fingerprint ---------------------------------------------------------

def test_two_checkpoints_served_under_one_name_do_not_read_each_others_pages(tmp_path, nvme):
    from sglang.srt.runtime_context import reset_context

    keys = h.hash_keys(4)
    extra = nvme()

    def stored_pages(model_path, pool, write=False):
        """A server's backend for ``model_path`` served as 'same': how many of ``keys`` it finds."""
        if model_path:
            h.publish_server_args(model_path, served_model_name="same")
        try:
            backend = MooncakeHiCacheStorage(h.storage_config(model="same", extra=extra), pool)
            try:
                if write:
                    _set_all(backend, pool, keys)
                return backend.batch_exists(keys)
            finally:
                backend.close()
        finally:
            reset_context()

    a, b = h.model_dir(tmp_path, "mha", "-a"), h.model_dir(tmp_path, "mha", "-b")  # same shapes
    pool = h.mha_host_pool("page_first", 8)
    h.fill(pool, 3)
    assert stored_pages(a, pool, write=True) == 4
    assert stored_pages(b, pool) == 0  # another checkpoint under the same name: a miss
    assert stored_pages(a, pool) == 4  # the same checkpoint after a restart: a hit
    assert stored_pages(a, h.mha_host_pool("page_first", 8, dtype=torch.float16)) == 0  # other dtype
    assert stored_pages(a, h.mha_host_pool("page_first", 8, head_dim=32)) == 0  # other head geometry
    assert stored_pages(a, h.mha_host_pool("page_first", 4, page_size=8)) == 0  # other page size
    assert stored_pages(None, pool) == 0  # outside a server no model path is known: its own keys


# ---- errors never reach SGLang's threads -------------------------------------------------------

def test_v2_error_paths_return_sglangs_own_result_types(nvme, backends):
    import dataclasses

    from sglang.srt.mem_cache.hicache_storage import PoolTransferResult, count_pool_hits

    kv, side = h.mha_host_pool("page_first", 8), h.mha_host_pool("page_first", 8, layers=1)
    backend = backends(h.storage_config(extra=nvme()), kv)
    backend.register_mem_host_pool_v2(side, PoolName.SWA)
    keys = h.hash_keys(3)
    _set_all(backend, kv, keys)
    unregistered = [PoolTransfer(name=PoolName.MAMBA, keys=keys)]
    for result in (backend.batch_exists_v2(keys, unregistered),   # a pool that was never registered
                   backend.batch_exists_v2(keys, [None])):        # a malformed transfer list
        assert type(result) is PoolTransferResult
        assert dataclasses.asdict(result) == {"kv_hit_pages": 0, "extra_pool_hit_pages": {},
                                              "restorable_prefix_pages": []}
        result.update_kv_hit_pages(0)  # what the controller does with it next
    for call in (backend.batch_get_v2, backend.batch_set_v2):
        assert call(None) == {}
        assert call([None]) == {}
        got = call([PoolTransfer(name=PoolName.SWA, keys=keys)])  # no host_indices
        assert got == {PoolName.SWA: [False] * 3} and count_pool_hits(got) == {PoolName.SWA: 0}
    backend.close()
    assert dataclasses.asdict(backend.batch_exists_v2(keys, [])) == {
        "kv_hit_pages": 0, "extra_pool_hit_pages": {}, "restorable_prefix_pages": []}


# ---- prefix_lru needs SGLang's prefix keys -------------------------------------------------------

@pytest.mark.parametrize("eviction", ["prefix_lru", "lru"])
def test_prefix_lru_without_prefix_keys_is_said_once_in_the_log(eviction, tmp_path, backends, caplog):
    extra = {"mode": "in_process",
             "tiers": {"dram": {"capacity": "16MiB", "slab_size": "1MiB", "hugepages": False, "eviction": eviction},
                       "nvme": {"path": str(tmp_path / "n.data"), "capacity": "64MiB", "region_size": "4MiB"}}}
    pool = h.mha_host_pool("page_first", 16)
    backend = backends(h.storage_config(extra=extra), pool)
    keys = h.hash_keys(9)
    with caplog.at_level(logging.WARNING, logger="mooncake_hicache.sglang"):
        assert backend.batch_set_v1(keys[:3], h.page_indices(pool, range(3)),
                                    HiCacheStorageExtraInfo(prefix_keys=[])) == [True] * 3
        assert "hicache_storage_pass_prefix_keys" not in caplog.text  # depths arrive: nothing to say
        for i in (3, 6):
            assert backend.batch_set_v1(keys[i:i + 3], h.page_indices(pool, range(i, i + 3))) == [True] * 3
    said = caplog.text.count('"hicache_storage_pass_prefix_keys": true')
    assert said == (1 if eviction == "prefix_lru" else 0)


# ---- describe_l3_object_layout -------------------------------------------------------------------

def test_l3_object_layout_describes_the_keys_mla_pages_are_stored_under(nvme, backends):
    from sglang.srt.mem_cache.hicache_storage import merge_l3_layouts

    pool = h.mla_host_pool("page_first_direct", 8)
    backend = backends(h.storage_config(mla=True, extra=nvme(extra_backend_tag="t")), pool)
    keys = h.hash_keys(2)
    _set_all(backend, pool, keys)
    layout = backend.describe_l3_object_layout(sidecar_pool_specs=(), swa_trailing_pages=None, page_size=h.PAGE_SIZE)
    assert layout["enabled"] is True and layout["backend"] == "mooncake-hicache" and layout["page_size"] == h.PAGE_SIZE
    inner = layout["hicache_object_layout"]
    assert inner["key_prefix"].startswith("t/org-test-model@") and inner["key_prefix"].endswith("/mla")
    [kv] = inner["pools"]
    assert kv["pool"] == "kv" and kv["hit_policy"] == "all_pages"
    # A router builds SGLang's object keys as {key_prefix}_{hash}{suffix}: exactly our keys.
    built = [f"{inner['key_prefix']}_{k}{s}" for k in keys for s in kv["suffixes"]]
    assert backend.store.batch_is_exist(built) == [1, 1]
    assert merge_l3_layouts([layout]) == layout  # SGLang's merge accepts it as one stage

    mha = backends(h.storage_config(extra=nvme("mha")), h.mha_host_pool("page_first", 8))
    off = mha.describe_l3_object_layout(page_size=h.PAGE_SIZE)
    assert off["enabled"] is False and "rank-replicated" in off["reason"]
    backend.register_mem_host_pool_v2(h.mha_host_pool("page_first", 8), PoolName.DRAFT)  # rank-specific keys
    assert backend.describe_l3_object_layout(page_size=h.PAGE_SIZE)["enabled"] is False
