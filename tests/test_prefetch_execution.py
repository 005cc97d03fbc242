"""What the tiers do for the prefetch policies: ``Store.batch_locate`` says where each page is
(DRAM, NVMe, absent), in-process and through the node; ``Store.prefetch`` promotes pages in the
order it is given and in steps of ``batch_pages`` that land together; with
``prefetch.concurrency`` workers every queued page still lands with its own bytes.

Real ``TieredStore`` instances (in-process and behind a node process) with an 8 MiB DRAM arena of
256 KiB pages in front of a 64 MiB NVMe file under tmp_path."""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import pytest

from conftest import Buffer, MiB, pattern
from mooncake_hicache import Store
from mooncake_hicache.errors import ErrorCode
from mooncake_hicache.tiers import Tier

PAGE = 256 * 1024
SLOTS = 32  # an 8 MiB arena of 256 KiB pages


def tiers_config(tmp_path, **prefetch) -> dict:
    cfg = {"mode": "in_process",
           # No clean reserve: a put then evicts strictly the least recently used page (with one,
           # it may take a clean page a little further in), so `overflow` knows which pages left.
           "tiers": {"dram": {"capacity": 8 * MiB, "slab_size": 1 * MiB, "hugepages": False, "clean_reserve": 0},
                     "nvme": {"path": str(tmp_path / "nvme.data"), "capacity": "64MiB", "region_size": "4MiB",
                              "queue_depth": 8}}}
    if prefetch:
        cfg["prefetch"] = prefetch
    return cfg


def put_each(store: Store, buf: Buffer, keys) -> None:
    """One put per key, in order, so the first keys are the first evicted to NVMe."""
    for k in keys:
        buf.write(0, pattern(k, PAGE))
        assert store.batch_put_from([k], [buf.addr], [PAGE]) == [0], k


def overflow(store: Store, buf: Buffer, extra: int):
    """SLOTS + extra pages: returns (the `extra` pages pushed to NVMe, the pages still in DRAM)."""
    keys = [f"page{i}" for i in range(SLOTS + extra)]
    put_each(store, buf, keys)
    return keys[:extra], keys[extra:]


def watch_promotions(store: Store, order, timeout: float = 20.0) -> list:
    """Poll batch_locate until every page of `order` is in DRAM; returns every distinct set of
    promoted positions seen on the way, as sorted lists."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        loc = store.batch_locate(order)
        done = [i for i, t in enumerate(loc) if t == Tier.DRAM]
        if not seen or seen[-1] != done:
            seen.append(done)
        if len(done) == len(order):
            return seen
    raise AssertionError(f"prefetch did not finish in {timeout} s: {seen[-1] if seen else None}")


@pytest.fixture
def page_buf(buffers):
    return buffers(PAGE)


def test_locate_says_dram_nvme_or_absent_and_is_exist_stays_one_or_zero(tmp_path, store_from_config, page_buf):
    store = store_from_config(tiers_config(tmp_path))
    store.register_buffer(page_buf.addr, page_buf.size)
    on_nvme, in_dram = overflow(store, page_buf, 4)
    keys = [on_nvme[0], in_dram[-1], "absent", ""]
    assert store.batch_locate(keys) == [Tier.NVME, Tier.DRAM, Tier.ABSENT, ErrorCode.INVALID_PARAMS]
    assert store.batch_is_exist(keys) == [1, 1, 0, ErrorCode.INVALID_PARAMS]
    # locate touches no data: the NVMe page is still only on NVMe, and reading it promotes it
    assert store.batch_locate(on_nvme[:1]) == [Tier.NVME]
    assert store.batch_get_into(on_nvme[:1], [page_buf.addr], [PAGE]) == [PAGE]
    assert store.batch_locate(on_nvme[:1]) == [Tier.DRAM]


def test_an_nvme_only_store_locates_its_pages_on_nvme(open_store, buffers):
    store = open_store()
    buf = buffers(PAGE)
    store.register_buffer(buf.addr, buf.size)
    put_each(store, buf, ["a"])
    assert store.batch_locate(["a", "b"]) == [Tier.NVME, Tier.ABSENT]
    assert store.batch_is_exist(["a", "b"]) == [1, 0]


def test_prefetch_promotes_in_the_order_given_and_a_step_lands_together(tmp_path, store_from_config, page_buf):
    store = store_from_config(tiers_config(tmp_path))
    store.register_buffer(page_buf.addr, page_buf.size)
    on_nvme, _ = overflow(store, page_buf, 12)
    order = list(reversed(on_nvme))  # deliberately not the order the pages were written in
    assert store.prefetch(order, batch_pages=4) == 12
    for done in watch_promotions(store, order):
        # one worker, steps of 4 that publish together: always a whole number of steps, from the front
        assert done == list(range(len(done))), f"promoted out of order: {done}"
        assert len(done) % 4 == 0, f"a step of 4 landed partly: {done}"
    assert store.stats()["tiering"]["prefetch_done"] == 12


def test_with_several_promotion_workers_every_queued_page_lands_with_its_own_bytes(tmp_path, store_from_config, page_buf):
    store = store_from_config(tiers_config(tmp_path, concurrency=3))
    store.register_buffer(page_buf.addr, page_buf.size)
    on_nvme, _ = overflow(store, page_buf, 12)
    for i in range(0, 12, 2):  # six queued lists, three workers
        assert store.prefetch(on_nvme[i:i + 2], batch_pages=1) == 2
    watch_promotions(store, on_nvme)
    for k in on_nvme:
        assert store.batch_get_into([k], [page_buf.addr], [PAGE]) == [PAGE]
        assert page_buf.read(0, PAGE) == pattern(k, PAGE)


def test_the_node_reports_tiers_and_honours_the_step_over_its_protocol(tmp_path):
    sock_dir = tempfile.mkdtemp(prefix="mchpf", dir="/tmp")
    cfg = tiers_config(tmp_path)
    cfg.update(mode="node", node={"socket": os.path.join(sock_dir, "n.sock"), "timeout_ms": 5000},
               metrics={"port": 0})
    buf = Buffer(PAGE)
    pid = None
    try:
        with Store.from_config(cfg) as store:
            pid = store.stats()["node"]["pid"]
            store.register_buffer(buf.addr, buf.size)
            on_nvme, in_dram = overflow(store, buf, 9)
            assert store.batch_locate([on_nvme[0], in_dram[0], "absent"]) == [Tier.NVME, Tier.DRAM, Tier.ABSENT]
            assert store.batch_is_exist([on_nvme[0], in_dram[0], "absent"]) == [1, 1, 0]
            order = on_nvme[3:] + on_nvme[:3]
            assert store.prefetch(order, batch_pages=3) == 9
            for done in watch_promotions(store, order):
                assert done == list(range(len(done))) and len(done) % 3 == 0, done
    finally:
        buf.close()
        if pid:
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass
        shutil.rmtree(sock_dir, ignore_errors=True)
