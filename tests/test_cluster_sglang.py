"""SGLang on a cluster: nothing new for SGLang users but the cluster: section. SGLang's plugin
loader and backend factory build our `mooncake` backend for a rank of host A and one of host B
(real node processes on 127.0.0.1, tests/cluster_helpers.py), each with its real host KV pool;
A's backup path (batch_set_v1, 128-page batches) writes, B's prefetch path (batch_exists +
batch_get_v1) finds and reads the same bytes from every node of the pool."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sglang")

import sglang_helpers as h  # noqa: E402

h.import_sglang()

from sglang.srt.mem_cache.hicache_storage import STORAGE_BATCH_SIZE  # noqa: E402
from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory  # noqa: E402
from sglang.srt.plugins import load_plugins  # noqa: E402

from cluster_helpers import Cluster  # noqa: E402

BATCH = STORAGE_BATCH_SIZE


def test_sglang_ranks_of_two_hosts_share_pages_through_the_pool(tmp_path):
    load_plugins()
    cl = Cluster(tmp_path, ["a", "b", "c"]).start()
    backends = []
    try:
        writer_pool = h.mha_host_pool("page_first", 2 * BATCH)
        reader_pool = h.mha_host_pool("page_first", 2 * BATCH)
        h.fill(writer_pool, seed=11)
        for node_id, pool in (("a", writer_pool), ("b", reader_pool)):
            cfg = h.storage_config(extra=cl.store_config(node_id))
            backends.append(StorageBackendFactory.create_backend("mooncake", cfg, pool))
        writer, reader = backends
        keys = h.hash_keys(BATCH, salt="cluster-sglang")
        assert reader.batch_exists(keys) == 0
        assert writer.batch_set_v1(keys, h.page_indices(writer_pool, range(BATCH))) == [True] * BATCH
        assert reader.batch_exists(keys) == BATCH
        h.zero_pages(reader_pool, range(BATCH, 2 * BATCH))
        assert reader.batch_get_v1(keys, h.page_indices(reader_pool, range(BATCH, 2 * BATCH))) == [True] * BATCH
        assert all(h.page_bytes(writer_pool, i) == h.page_bytes(reader_pool, BATCH + i) for i in range(BATCH))
        held = {n: cl[n].stats()["dram"]["entries"] for n in "abc"}
        assert all(held[n] > 0 for n in "abc"), held  # the pages are spread over the pool
    finally:
        for b in backends:
            b.close()
        cl.close()
