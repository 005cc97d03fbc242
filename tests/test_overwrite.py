"""Overwrites: Store.put makes the new value the one every later get sees, on every tier: while
it is in DRAM, after it left DRAM for NVMe (or was dropped from DRAM without being demoted),
after a restart, and after later values of other sizes. Nothing ever brings an older value back.
Content-addressed callers (SGLang's pages, whose keys are hashes of their tokens) may instead ask
for keep_existing=True: a key already stored keeps its value and the put reports 0 without
copying anything."""

from __future__ import annotations

import pytest

from mooncake_hicache import ErrorCode
from conftest import pattern
from store_modes import KINDS

PAGE = 256 * 1024  # DRAM holds 16 of them (4 MiB in 1 MiB slabs)


def value(tag: str, n: int = PAGE) -> bytes:
    return pattern(tag, n)


def push_out_of_dram(store, round_: int = 0) -> None:
    filler = value("filler")
    for i in range(24):
        assert store.put(f"filler{round_}.{i}", filler) == 0


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


def test_a_second_put_of_the_same_size_replaces_the_value(stores, kind):
    store = stores.make(kind)
    assert store.put("k", value("A")) == 0
    assert store.put("k", value("B")) == 0
    assert store.get("k") == value("B")


def test_the_new_value_stays_after_both_have_left_dram(stores, kind):
    store = stores.make(kind)
    assert store.put("k", value("A")) == 0
    push_out_of_dram(store, 0)  # A is on NVMe now
    assert store.put("k", value("B")) == 0
    assert store.get("k") == value("B")
    push_out_of_dram(store, 1)  # B leaves DRAM: it must be written, not skipped as "already on NVMe"
    assert store.get("k") == value("B")
    store = stores.reopen(store, kind)
    assert store.get("k") == value("B")


@pytest.mark.parametrize("write_through", [False, True])
def test_a_later_value_of_another_size_wins_over_both(stores, kind, write_through):
    settings = {"write_through": True} if write_through and kind != "nvme" else {}
    store = stores.make(kind, **settings)
    assert store.put("k", value("A")) == 0
    push_out_of_dram(store, 0)
    assert store.put("k", value("B")) == 0
    assert store.put("k", value("C", PAGE // 2)) == 0
    push_out_of_dram(store, 1)  # (C's size class keeps its slab: C may stay in DRAM only)
    assert store.get("k") == value("C", PAGE // 2)
    store = stores.reopen(store, kind, **settings)
    if kind == "nvme" or write_through:  # C reached NVMe
        assert store.get("k") == value("C", PAGE // 2)
    else:  # C may have been in DRAM only: a miss, never A or B
        assert store.get("k") in (b"", value("C", PAGE // 2))


@pytest.mark.parametrize("kind", ["tiered", "node"])
def test_a_replaced_page_does_not_come_back_when_the_new_one_is_dropped_or_lost(stores, kind):
    # admission never: DRAM victims are dropped, not demoted; write-through put A on NVMe.
    store = stores.make(kind, admission="never", write_through=True)
    assert store.put("k", value("A")) == 0
    store = stores.reopen(store, kind, admission="never")  # B will live in DRAM only
    assert store.put("k", value("B")) == 0
    assert store.get("k") == value("B")
    push_out_of_dram(store, 0)  # B is dropped
    assert store.get("k") in (b"", value("B")) and store.get("k") != value("A")
    assert store.put("k2", value("A2")) == 0
    store = stores.reopen(store, kind, admission="never", write_through=True)
    assert store.put("k2", value("B2")) == 0  # B2 written through, replacing A2
    store = stores.reopen(store, kind, admission="never")
    assert store.get("k") != value("A"), "the replaced value came back after a restart"
    assert store.get("k2") == value("B2")


@pytest.mark.parametrize("kind", ["tiered", "node"])
def test_a_value_that_only_reached_dram_never_revives_the_old_one_after_a_restart(stores, kind):
    store = stores.make(kind)
    assert store.put("k", value("A")) == 0
    push_out_of_dram(store, 0)  # A on NVMe
    assert store.put("k", value("B")) == 0  # B in DRAM only
    store = stores.reopen(store, kind)  # DRAM is gone: k is B (if B reached NVMe) or a miss
    assert store.get("k") in (b"", value("B"))


def test_keep_existing_keeps_the_stored_value_and_reports_success(stores, scratch, kind):
    store = stores.make(kind)
    buf = scratch(store, PAGE)
    assert store.put("k", value("A")) == 0
    buf.write(0, value("B"))
    assert store.batch_put_from(["k", "new"], [buf.addr] * 2, [PAGE] * 2, keep_existing=True) == [0, 0]
    assert store.get("k") == value("A") and store.get("new") == value("B")
    assert store.put("k", value("C", 1000), keep_existing=True) == 0  # another size: kept too
    assert store.get("k") == value("A")
    push_out_of_dram(store, 0)  # A only on NVMe: still kept, and not copied back into DRAM
    assert store.batch_put_from_multi_buffers(["k"], [[buf.addr]], [[PAGE]], keep_existing=True) == [0]
    assert store.get("k") == value("A")
    if kind != "nvme":
        assert store.stats()["tiering"]["skipped_existing"] >= 3


def test_keep_existing_false_is_the_default_put(stores, kind):
    store = stores.make(kind)
    assert store.put("k", b"v", keep_existing=False) == 0
    assert store.get_size("k") == 1 and ErrorCode.NOT_FOUND == store.get_size("nope")
