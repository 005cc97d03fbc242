"""The DRAM tier alone (no NVMe): round trips, each eviction policy's defining behaviour, slab
pages shared by two value sizes, batches larger than DRAM, removal and figures.

Every store here is an in-process ``TieredStore`` (``mode: in_process``, no ``tiers.nvme``) with
an 8 MiB arena cut into 1 MiB slabs: 32 pages of 256 KiB fit at once.
"""

from __future__ import annotations

import pytest

from conftest import MiB, page_kind_this_machine_provides, pattern
from mooncake_hicache.errors import ErrorCode

PAGE = 256 * 1024
CAPACITY = 8 * MiB
SLAB = 1 * MiB
SLOTS = CAPACITY // PAGE  # 32 pages of PAGE bytes fill the arena


@pytest.fixture
def dram_store(store_from_config):
    """dram_store(**dram_overrides) -> in-process Store with a DRAM tier only; closed at teardown."""

    def _open(**overrides):
        dram = {"capacity": CAPACITY, "slab_size": SLAB, "eviction": "lru", "hugepages": False}
        dram.update(overrides)
        return store_from_config({"mode": "in_process", "tiers": {"dram": dram}})

    return _open


def put(store, buf, keys, size=PAGE, depths=None):
    """Put pattern(key, size) for each key in one batch; returns the per-key results."""
    for i, k in enumerate(keys):
        buf.write(i * size, pattern(k, size))
    return store.batch_put_from(keys, [buf.addr + i * size for i in range(len(keys))], [size] * len(keys),
                                depths=depths)


def put_each(store, buf, keys, size=PAGE):
    for k in keys:
        assert put(store, buf, [k], size) == [0], k


def get(store, buf, keys, size=PAGE):
    """Get keys in one batch into buf; returns [(result, bytes read or None)]."""
    res = store.batch_get_into(keys, [buf.addr + i * size for i in range(len(keys))], [size] * len(keys))
    return [(r, buf.read(i * size, r) if r >= 0 else None) for i, r in enumerate(res)]


def present(store, keys):
    """batch_is_exist as a set of the present keys (touches no data, moves no page in LRU order)."""
    return {k for k, e in zip(keys, store.batch_is_exist(keys)) if e == 1}


def dram(store):
    return store.stats()["dram"]


# ---- round trips ---------------------------------------------------------------------------

def test_round_trip_returns_exact_bytes_from_dram(dram_store, scratch):
    store = dram_store()
    buf = scratch(store, 8 * PAGE)
    keys = [f"rt{i}" for i in range(8)]
    assert put(store, buf, keys) == [0] * 8
    buf.write(0, b"\0" * buf.size)
    for k, (r, data) in zip(keys, get(store, buf, keys)):
        assert r == PAGE and data == pattern(k, PAGE)
    assert store.get("rt3") == pattern("rt3", PAGE)
    assert store.get_size("rt5") == PAGE
    assert store.get("missing") == b""
    assert get(store, buf, ["missing"]) == [(ErrorCode.NOT_FOUND, None)]
    st = store.stats()
    assert st["tiering"]["dram_hits"] == 8 + 1  # batch of 8 and get (get_size only looks)
    assert "nvme" not in st


def test_unaligned_buffers_and_odd_lengths_round_trip(dram_store, scratch):
    store = dram_store()
    buf = scratch(store, 2 * MiB)
    sizes = {"odd-1": 1, "odd-4095": 4095, "odd-4097": 4097, "odd-100003": 100_003, "odd-slab": SLAB}
    offsets = {"odd-1": 1, "odd-4095": 7, "odd-4097": 4093, "odd-100003": 12_345, "odd-slab": 3}
    for k, n in sizes.items():
        buf.write(offsets[k], pattern(k, n))
        assert store.batch_put_from([k], [buf.addr + offsets[k]], [n]) == [0]
    for k, n in sizes.items():
        out = 777  # an odd destination, with room to spare: the result is the value's length
        buf.write(0, b"\xee" * buf.size)
        assert store.batch_get_into([k], [buf.addr + out], [n + 5]) == [n]
        assert buf.read(out, n) == pattern(k, n)
        assert buf.read(out + n, 5) == b"\xee" * 5, "wrote past the value"
    # A buffer one byte short is refused, not overrun.
    buf.write(0, b"\xee" * 200_000)
    assert store.batch_get_into(["odd-100003"], [buf.addr + 1], [100_002]) == [ErrorCode.BUFFER_TOO_SMALL]
    assert buf.read(0, 200_000) == b"\xee" * 200_000
    st = dram(store)
    assert st["entries"] == len(sizes)
    assert st["value_bytes"] == sum(sizes.values())


def test_scatter_gather_put_and_get_join_and_split_segments(dram_store, scratch):
    store = dram_store()
    buf = scratch(store, 2 * MiB)
    key = "sg-page"
    value = pattern(key, 1000 + 70_001 + 3 * 4096 + 7)
    # Put from three unaligned, unevenly sized segments scattered over the buffer.
    segs = [(3, 1000), (5000, 70_001), (300_000, 3 * 4096 + 7)]
    pos = 0
    for off, n in segs:
        buf.write(off, value[pos:pos + n])
        pos += n
    assert store.batch_put_from_multi_buffers([key], [[buf.addr + o for o, _ in segs]], [[n for _, n in segs]]) == [0]
    assert store.get_size(key) == len(value)
    # Get into a different split: four segments, the last with spare room.
    out = [(600_001, 17), (700_000, 65_536), (800_003, 9_999), (900_000, 100_000)]
    buf.write(600_000, b"\0" * 500_000)
    assert store.batch_get_into_multi_buffers([key], [[buf.addr + o for o, _ in out]], [[n for _, n in out]]) == [len(value)]
    got, left = b"", len(value)
    for o, n in out:
        got += buf.read(o, min(n, left))
        left -= min(n, left)
    assert got == value
    # Split too small in total: refused.
    assert store.batch_get_into_multi_buffers([key], [[buf.addr + 600_000, buf.addr + 700_000]], [[4096, 4096]]) == \
        [ErrorCode.BUFFER_TOO_SMALL]
    # The same bytes read back flat.
    assert store.get(key) == value


def test_the_same_key_twice_in_one_batch_keeps_one_entry(dram_store, scratch):
    store = dram_store()
    buf = scratch(store, 2 * PAGE)
    buf.write(0, pattern("dup", PAGE))
    buf.write(PAGE, pattern("dup", PAGE))
    assert store.batch_put_from(["dup", "dup"], [buf.addr, buf.addr + PAGE], [PAGE, PAGE]) == [0, 0]
    assert store.get("dup") == pattern("dup", PAGE)
    st = dram(store)
    assert st["entries"] == 1 and st["value_bytes"] == PAGE


def test_a_put_of_a_stored_key_with_a_new_size_replaces_it(dram_store, scratch):
    store = dram_store()
    buf = scratch(store, PAGE)
    assert put(store, buf, ["resized"], 64 * 1024) == [0]
    assert put(store, buf, ["resized"], 128 * 1024) == [0]
    assert store.get("resized") == pattern("resized", 128 * 1024)
    st = dram(store)
    assert st["entries"] == 1 and st["value_bytes"] == 128 * 1024


def test_a_value_larger_than_a_slab_is_refused_per_key(dram_store, scratch):
    store = dram_store()
    buf = scratch(store, 2 * SLAB + PAGE)
    buf.write(0, pattern("small", PAGE))
    buf.write(PAGE, pattern("huge", SLAB + 4096))
    res = store.batch_put_from(["small", "huge"], [buf.addr, buf.addr + PAGE], [PAGE, SLAB + 4096])
    assert res == [0, ErrorCode.VALUE_TOO_LARGE]
    assert store.batch_is_exist(["small", "huge"]) == [1, 0]


# ---- eviction policies ---------------------------------------------------------------------

def test_lru_evicts_the_least_recently_used_page_and_keeps_a_touched_one(dram_store, scratch):
    store = dram_store(eviction="lru")
    buf = scratch(store, PAGE)
    keys = [f"lru{i}" for i in range(SLOTS)]
    put_each(store, buf, keys)
    assert present(store, keys) == set(keys) and dram(store)["evictions"] == 0
    assert get(store, buf, ["lru0"])[0][0] == PAGE  # touch the oldest page
    put_each(store, buf, ["new0"])
    assert present(store, keys + ["new0"]) == set(keys + ["new0"]) - {"lru1"}  # oldest untouched goes
    put_each(store, buf, ["new1"])
    assert present(store, keys) == set(keys) - {"lru1", "lru2"}
    assert dram(store)["evictions"] == 2
    assert store.get("lru0") == pattern("lru0", PAGE)


def test_exists_checks_do_not_count_as_use_for_lru(dram_store, scratch):
    store = dram_store(eviction="lru")
    buf = scratch(store, PAGE)
    keys = [f"ex{i}" for i in range(SLOTS)]
    put_each(store, buf, keys)
    for _ in range(3):
        assert store.batch_is_exist(["ex0"]) == [1]
    put_each(store, buf, ["newcomer"])
    assert store.batch_is_exist(["ex0", "ex1"]) == [0, 1]
    st = store.stats()
    assert st["tiering"]["gets"] == 0 and st["dram"]["hits"] == 0


def _reuse_then_stream(store, buf):
    """Insert SLOTS pages, hit four of them twice, then stream 2*SLOTS once-only pages.
    Returns (re-used keys, originals still present, stream pages present)."""
    keys = [f"page{i}" for i in range(SLOTS)]
    put_each(store, buf, keys)
    hot = keys[3:7]
    for _ in range(2):
        for r, data in get(store, buf, hot):
            assert r == PAGE
    stream = [f"stream{i}" for i in range(2 * SLOTS)]
    put_each(store, buf, stream)
    return hot, present(store, keys), present(store, stream)


def test_s3fifo_keeps_reused_pages_through_a_one_hit_wonder_stream_where_lru_loses_them(dram_store, scratch):
    s3 = dram_store(eviction="s3fifo")
    hot, s3_kept, s3_stream = _reuse_then_stream(s3, scratch(s3, 4 * PAGE))
    lru = dram_store(eviction="lru")
    _, lru_kept, lru_stream = _reuse_then_stream(lru, scratch(lru, 4 * PAGE))

    # S3-FIFO: the re-used pages were promoted to the main queue; the stream only churned the
    # small queue, taking the never-reused originals with it.
    assert s3_kept == set(hot)
    for k in hot:
        assert s3.get(k) == pattern(k, PAGE)
    assert len(s3_stream) == SLOTS - len(hot)
    # LRU under the very same sequence: the stream pushed everything older out, re-used or not.
    assert lru_kept == set()
    assert len(lru_stream) == SLOTS
    assert dram(s3)["evictions"] == dram(lru)["evictions"] == 2 * SLOTS


def test_s3fifo_readmits_a_recently_evicted_page_to_its_main_queue(dram_store, scratch):
    store = dram_store(eviction="s3fifo")
    buf = scratch(store, PAGE)
    keys = [f"page{i}" for i in range(SLOTS)]
    put_each(store, buf, keys)
    put_each(store, buf, [f"early{i}" for i in range(4)])  # page0..page3 leave, remembered as ghosts
    assert present(store, keys[:4]) == set()
    put_each(store, buf, ["page0"])  # back soon after its eviction: straight into the main queue
    put_each(store, buf, [f"stream{i}" for i in range(2 * SLOTS)])  # never read, never repeated
    assert present(store, keys) == {"page0"}
    assert store.get("page0") == pattern("page0", PAGE)


def test_prefix_lru_evicts_the_deepest_of_equally_cold_pages_first(dram_store, scratch):
    store = dram_store(eviction="prefix_lru")
    half = SLOTS // 2  # the policy's cold window is 16 pages
    buf = scratch(store, half * PAGE)
    # One batch: a chain of 16 pages (depth 1..16) put at the same time, in scrambled order,
    # then 16 more recent pages of unknown depth (0) to fill the arena.
    chain = {f"chain-d{d}": d for d in range(1, half + 1)}
    ks = [f"chain-d{(i * 7) % half + 1}" for i in range(half)]
    assert put(store, buf, ks, depths=[chain[k] for k in ks]) == [0] * half
    fill = [f"fill{i}" for i in range(half)]
    assert put(store, buf, fill) == [0] * half
    evicted = []
    for n in range(4):
        before = present(store, ks + fill)
        put_each(store, buf, [f"other{n}"])
        (gone,) = before - present(store, ks + fill)
        evicted.append(gone)
    assert evicted == ["chain-d16", "chain-d15", "chain-d14", "chain-d13"]
    assert present(store, fill) == set(fill)


def test_prefix_lru_depth_decides_within_the_cold_window_but_not_beyond_it(dram_store, scratch):
    store = dram_store(eviction="prefix_lru")
    buf = scratch(store, PAGE)
    # Coldest first: a shallow page, then a deep one, then pages of medium depth; the hottest
    # page is the deepest of all but lies outside the cold window of 16.
    plan = [("shallow", 1), ("deep", 9)] + [(f"mid{i}", 5) for i in range(SLOTS - 3)] + [("hot-deepest", 50)]
    for k, d in plan:
        buf.write(0, pattern(k, PAGE))
        assert store.batch_put_from([k], [buf.addr], [PAGE], depths=[d]) == [0]
    keys = [k for k, _ in plan]
    put_each(store, buf, ["n0"])
    assert present(store, keys) == set(keys) - {"deep"}  # deeper beats colder inside the window
    put_each(store, buf, ["n1"])
    # Equal depths: the colder goes (mid0 before the other mids; "shallow" is shallower).
    assert present(store, keys) == set(keys) - {"deep", "mid0"}
    assert "hot-deepest" in present(store, keys)

    # Plain LRU under the same sequence evicts by coldness alone.
    lru = dram_store(eviction="lru")
    lbuf = scratch(lru, PAGE)
    for k, d in plan:
        lbuf.write(0, pattern(k, PAGE))
        assert lru.batch_put_from([k], [lbuf.addr], [PAGE], depths=[d]) == [0]
    put_each(lru, lbuf, ["n0", "n1"])
    assert present(lru, keys) == set(keys) - {"shallow", "deep"}


# ---- slab pages shared by two sizes --------------------------------------------------------

def test_two_value_sizes_share_the_arena_by_moving_slab_pages(dram_store, scratch):
    store = dram_store()
    big, small = SLAB, 64 * 1024
    buf = scratch(store, SLAB)
    bigs = [f"big{i}" for i in range(CAPACITY // big)]
    put_each(store, buf, bigs, big)  # one per slab page: the arena is full
    st = dram(store)
    assert st["size_classes"] == 1 and st["slab_pages_free"] == 0 and st["entries"] == len(bigs)
    smalls = [f"small{i}" for i in range(SLAB // small)]
    put_each(store, buf, smalls, small)  # needs a slab page: one big page's slab moves over
    st = dram(store)
    assert st["size_classes"] == 2
    assert st["dropped_for_rebalance"] == 1
    assert st["entries"] == len(bigs) - 1 + len(smalls)
    kept = present(store, bigs)
    assert len(kept) == len(bigs) - 1
    for k in kept:
        assert store.get(k) == pattern(k, big)
    for k in smalls:
        assert store.get(k) == pattern(k, small)
    assert st["value_bytes"] == (len(bigs) - 1) * big + len(smalls) * small


# ---- a batch larger than DRAM --------------------------------------------------------------

def test_a_batch_larger_than_dram_succeeds_per_key_and_keeps_its_last_pages(dram_store, scratch):
    store = dram_store()
    n = 2 * SLOTS + SLOTS // 2  # 2.5 times what DRAM holds
    buf = scratch(store, n * PAGE)
    keys = [f"flood{i}" for i in range(n)]
    # Within one batch a key can evict only pages the batch has already committed, so the
    # store commits in rounds; every key is stored (OK), the earlier ones are evicted again.
    assert put(store, buf, keys) == [0] * n
    st = dram(store)
    assert st["entries"] == SLOTS and st["evictions"] == n - SLOTS
    assert present(store, keys) == set(keys[-SLOTS:])
    buf.write(0, b"\0" * buf.size)
    results = get(store, buf, keys)
    for k, (r, data) in zip(keys[:-SLOTS], results):
        assert r == ErrorCode.NOT_FOUND, k
    for k, (r, data) in zip(keys[-SLOTS:], results[-SLOTS:]):
        assert r == PAGE and data == pattern(k, PAGE), k


def test_a_batch_of_mixed_sizes_larger_than_dram_stores_every_key_and_keeps_the_newest_of_each_size(
        dram_store, scratch):
    store = dram_store()
    small = 64 * 1024
    sizes = [PAGE if i % 2 else small for i in range(3 * SLOTS)]  # 15 MiB for an 8 MiB arena
    buf = scratch(store, sum(sizes))
    keys = [f"mix{i}" for i in range(len(sizes))]
    offs, o = [], 0
    for k, n in zip(keys, sizes):
        buf.write(o, pattern(k, n))
        offs.append(o)
        o += n
    assert store.batch_put_from(keys, [buf.addr + x for x in offs], sizes) == [0] * len(keys)
    st = dram(store)
    assert st["size_classes"] == 2 and st["slab_pages_free"] == 0
    have = present(store, keys)
    for n in (small, PAGE):
        of_size = [k for k, m in zip(keys, sizes) if m == n]
        kept = [k for k in of_size if k in have]
        assert kept and kept == of_size[-len(kept):], f"{n}: the newest pages of each size are kept"
    for k, n in zip(keys, sizes):
        if k in have:
            assert store.get(k) == pattern(k, n), k
    assert st["entries"] == len(have)
    assert st["value_bytes"] == sum(n for k, n in zip(keys, sizes) if k in have) == CAPACITY
    assert st["evictions"] + st["dropped_for_rebalance"] == len(keys) - len(have)


# ---- removal and figures -------------------------------------------------------------------

def test_remove_deletes_one_key_and_remove_all_deletes_every_key(dram_store, scratch):
    store = dram_store()
    buf = scratch(store, 8 * PAGE)
    keys = [f"rm{i}" for i in range(8)]
    assert put(store, buf, keys) == [0] * 8
    assert store.remove("rm2") == 0
    assert store.remove("rm2") == ErrorCode.NOT_FOUND
    assert store.remove("never-stored") == ErrorCode.NOT_FOUND
    assert store.batch_is_exist(keys) == [1, 1, 0, 1, 1, 1, 1, 1]
    assert get(store, buf, ["rm2"]) == [(ErrorCode.NOT_FOUND, None)]
    st = dram(store)
    assert st["entries"] == 7 and st["value_bytes"] == 7 * PAGE
    assert store.remove_all() == 0
    assert store.batch_is_exist(keys) == [0] * 8
    st = dram(store)
    assert st["entries"] == 0 and st["value_bytes"] == 0
    # The freed slots are reused: a full arena's worth fits again without evictions.
    put_each(store, buf, [f"again{i}" for i in range(SLOTS)])
    st = dram(store)
    assert st["entries"] == SLOTS and st["evictions"] == 0


def test_stats_report_entries_bytes_evictions_and_page_kind(dram_store, scratch):
    store = dram_store(hugepages=False)
    st = dram(store)
    assert st["page_kind"] == "4k"
    assert st["capacity"] == CAPACITY and st["slab_size"] == SLAB and st["eviction"] == "lru"
    assert st["slab_pages"] == CAPACITY // SLAB and st["slab_pages_free"] == CAPACITY // SLAB
    assert (st["entries"], st["value_bytes"], st["evictions"], st["size_classes"]) == (0, 0, 0, 0)
    buf = scratch(store, PAGE)
    n = 100_000  # not a multiple of 4 KiB: value_bytes counts the bytes stored, not the slots
    put_each(store, buf, [f"st{i}" for i in range(3)], n)
    st = dram(store)
    assert (st["entries"], st["value_bytes"], st["evictions"], st["size_classes"]) == (3, 3 * n, 0, 1)
    assert st["slab_pages_free"] == CAPACITY // SLAB - 1
    per_slab = SLAB // 102_400  # values round up to 100 KiB slots: 10 per 1 MiB slab
    put_each(store, buf, [f"st{i}" for i in range(3, (CAPACITY // SLAB) * per_slab + 5)], n)
    st = dram(store)
    assert st["entries"] == (CAPACITY // SLAB) * per_slab
    assert st["evictions"] == 5
    assert st["value_bytes"] == st["entries"] * n

    hp = dram(dram_store(hugepages=True))
    assert hp["page_kind"] == page_kind_this_machine_provides(CAPACITY)


def test_capacity_rounds_up_to_whole_2mib_pages(dram_store):
    st = dram(dram_store(capacity=5 * MiB))
    assert st["capacity"] == 6 * MiB and st["slab_pages"] == 6


def test_a_closed_store_refuses_calls(dram_store, scratch):
    store = dram_store()
    buf = scratch(store, PAGE)
    assert put(store, buf, ["c"]) == [0]
    store.close()
    from mooncake_hicache.errors import StoreError
    with pytest.raises(StoreError):
        store.get("c")
