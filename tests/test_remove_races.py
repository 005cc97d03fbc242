"""A removed key never comes back: not when remove() races the page's demotion DRAM -> NVMe, not
when it races the page's promotion NVMe -> DRAM, and remove_all() not when prefetches are queued
or promotions are in flight. Through the public Store API, in-process and through the node,
with DRAM far smaller than the working set so pages move between the tiers all the time. Each
race is made likely by starting both sides at a barrier, in a bounded loop."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import pattern

PAGE = 128 * 1024
SLOTS = 16          # 2 MiB of DRAM in 1 MiB slabs: 16 pages of 128 KiB
ROUNDS, SECONDS = 400, 25.0


def make(stores, kind):
    return stores.make(kind, dram="2MiB", slab="1MiB", nvme="64MiB", region="4MiB")


def race(*fns):
    """Runs each fn on its own thread, all released together; returns their results."""
    gate = threading.Barrier(len(fns))
    out = [None] * len(fns)

    def run(i, fn):
        gate.wait()
        out[i] = fn()
    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


@pytest.mark.parametrize("kind", ["tiered", "node"])
def test_remove_racing_the_pages_demotion(stores, scratch, kind):
    """Each round two writers put 8 new pages each, evicting (and demoting to NVMe) the 16 pages
    of the previous round, while a third thread removes those 16: one writer's demotion often
    waits for the other's to finish writing, which is when the removal slips in."""
    store = make(stores, kind)
    buf = scratch(store, PAGE)
    half = SLOTS // 2

    def put(keys):
        return lambda: store.batch_put_from(keys, [buf.addr] * len(keys), [PAGE] * len(keys))

    def remove_each(keys):
        return lambda: [store.remove(k) for k in keys]
    old = [f"d0.{j}" for j in range(SLOTS)]
    assert put(old)() == [0] * SLOTS
    back, end = [], time.monotonic() + SECONDS
    for r in range(1, ROUNDS // 8):
        if time.monotonic() > end:
            break
        new = [f"d{r}.{j}" for j in range(SLOTS)]
        res = race(put(new[:half]), put(new[half:]), remove_each(old))
        assert res[0] == [0] * half and res[1] == [0] * half
        back += [(k, rc) for k, rc, e in zip(old, res[2], store.batch_is_exist(old)) if e]
        old = new
    assert not back, f"{len(back)} removed keys came back (with remove's result): {back[:5]}"


@pytest.mark.parametrize("kind", ["tiered", "node"])
def test_remove_racing_the_pages_promotion(stores, scratch, kind):
    store = make(stores, kind)
    buf = scratch(store, PAGE)
    put = lambda k: store.batch_put_from([k], [buf.addr], [PAGE])[0]  # noqa: E731
    back, end, n = [], time.monotonic() + SECONDS, 0
    for r in range(ROUNDS // 4):
        if time.monotonic() > end:
            break
        key = f"p{r}"
        assert put(key) == 0
        for j in range(SLOTS):  # push it out to NVMe
            assert put(f"fill{n}") == 0
            n += 1
        got, removed = race(lambda: store.get(key), lambda: store.remove(key))
        assert got in (b"", pattern(key, PAGE)) or len(got) == PAGE
        if store.is_exist(key):
            back.append((key, removed))
    assert not back, f"{len(back)} removed keys came back: {back[:5]}"


@pytest.mark.parametrize("kind", ["tiered", "node"])
def test_remove_all_racing_queued_prefetches_and_promotions(stores, scratch, kind):
    store = make(stores, kind)
    buf = scratch(store, PAGE)
    keys = [f"a{i}" for i in range(48)]  # 3x DRAM: most are on NVMe only
    end, back = time.monotonic() + SECONDS, []
    for r in range(20):
        if time.monotonic() > end:
            break
        assert store.batch_put_from(keys, [buf.addr] * len(keys), [PAGE] * len(keys)) == [0] * len(keys)
        queued, rc = race(lambda: store.prefetch(keys), lambda: store.remove_all())
        assert rc == 0
        deadline = time.monotonic() + 2  # let every queued promotion run
        while time.monotonic() < deadline:
            st = store.stats()["tiering"]
            time.sleep(0.05)
            if st == store.stats()["tiering"]:
                break
        present = [k for k, e in zip(keys, store.batch_is_exist(keys)) if e]
        if present:
            back.append((r, queued, len(present)))
    assert not back, f"pages came back after remove_all (round, queued, present): {back}"
    assert store.stats()["dram"]["entries"] == 0
