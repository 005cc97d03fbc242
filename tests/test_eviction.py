"""Region-FIFO eviction when the disk is full, with reinsertion of pages read since written."""

from __future__ import annotations

from conftest import MiB, pattern

PAGE = 256 * 1024


def put_pages(store, buf, keys):
    for k in keys:
        buf.write(0, pattern(k, PAGE))
        assert store.batch_put_from([k], [buf.addr], [PAGE]) == [0]


def test_full_disk_evicts_the_oldest_pages_and_keeps_the_newest(open_store, buffers):
    # 8 regions of 1 MiB hold 3 pages of 256 KiB each (plus headers and summary).
    store = open_store(capacity="8MiB", region_size="1MiB")
    buf = buffers(PAGE)
    store.register_buffer(buf.addr, buf.size)
    keys = [f"p{i}" for i in range(60)]
    put_pages(store, buf, keys)
    st = store.stats()["nvme"]
    assert st["evicted_regions"] > 0 and st["evicted_pages"] > 0
    present = store.batch_is_exist(keys)
    # The newest pages are all there; the oldest are gone; presence is a suffix of the write order.
    assert present[-15:] == [1] * 15
    assert present[0] == 0
    first = present.index(1)
    assert present[first:] == [1] * (len(keys) - first)
    for k in keys[first:]:
        assert store.get(k) == pattern(k, PAGE)


def test_pages_read_since_written_survive_reclaim_by_reinsertion(open_store, buffers):
    store = open_store(capacity="8MiB", region_size="1MiB", reinsertion=True)
    buf = buffers(PAGE)
    store.register_buffer(buf.addr, buf.size)
    hot = "hot-page"
    put_pages(store, buf, [hot])
    for i in range(60):
        put_pages(store, buf, [f"cold{i}"])
        assert store.get(hot) == pattern(hot, PAGE)  # a hit marks it for reinsertion
    assert store.stats()["nvme"]["reinserted_pages"] > 0
    assert store.is_exist(hot) == 1
    assert store.is_exist("cold0") == 0


def test_without_reinsertion_a_hot_page_is_evicted_like_any_other(open_store, buffers):
    store = open_store(capacity="8MiB", region_size="1MiB", reinsertion=False)
    buf = buffers(PAGE)
    store.register_buffer(buf.addr, buf.size)
    put_pages(store, buf, ["hot-page"])
    store.get("hot-page")
    put_pages(store, buf, [f"cold{i}" for i in range(60)])
    assert store.is_exist("hot-page") == 0
    assert store.stats()["nvme"]["reinserted_pages"] == 0


def test_a_hot_page_read_only_once_is_reinserted_once_then_evicted(open_store, buffers):
    store = open_store(capacity="8MiB", region_size="1MiB")
    buf = buffers(PAGE)
    store.register_buffer(buf.addr, buf.size)
    put_pages(store, buf, ["once"])
    store.get("once")
    put_pages(store, buf, [f"cold{i}" for i in range(80)])
    # The hit bit is cleared by reinsertion, so without new hits the page ages out.
    assert store.is_exist("once") == 0
    assert store.stats()["nvme"]["reinserted_pages"] >= 1
