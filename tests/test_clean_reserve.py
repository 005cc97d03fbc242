"""The clean reserve (issue 15): a background demoter keeps a share of DRAM free or already on
NVMe, so a get of an NVMe page never waits for the write of the DRAM page it displaces; a page
that finds no clean slot is read straight into the caller's buffer instead (in-process, and by
the node client through GET_LOCATE). `tiering.reads_waited_for_write` counts the reads that did
wait for a write; with a reserve it stays 0 under a put storm."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from mooncake_hicache import ConfigError, Store
from mooncake_hicache import _native
from conftest import pattern, wait_demoter_idle
from store_modes import config_for

MiB = 1 << 20
PAGE = MiB - 4096  # fits a 1 MiB slot
SMALL = dict(dram="16MiB", slab="1MiB", region="8MiB", nvme="256MiB")


def put_pages(store, keys):
    for k in keys:
        assert store.put(k, pattern(k, PAGE)) == 0, k


def read_back(store, keys):
    for k in keys:
        assert store.get(k) == pattern(k, PAGE), k


def tiering(store):
    return store.stats()["tiering"]


@pytest.mark.parametrize("kind", ["tiered", "node"])
def test_without_a_reserve_a_get_waits_for_its_victims_write(stores, kind):
    """The control: DRAM full of pages never written to NVMe, no reserve: promoting an NVMe hit
    first writes the page it displaces, and the metric counts it."""
    store = stores.make(kind, clean_reserve=0, **SMALL)
    put_pages(store, [f"old{i}" for i in range(48)])  # DRAM holds the last 16, dirty
    read_back(store, ["old0", "old1"])
    assert tiering(store)["reads_waited_for_write"] >= 1


@pytest.mark.parametrize("kind", ["tiered", "node"])
def test_reads_never_wait_for_a_write_under_a_put_storm(stores, kind):
    # NVMe holds all 448 pages: no old page can be reclaimed before the reader reaches it, so a
    # miss could only be a lost page.
    store = stores.make(kind, clean_reserve=0.25, demote_batch="4MiB", **{**SMALL, "nvme": "1GiB"})
    old = [f"old{i}" for i in range(48)]
    put_pages(store, old)
    stop = threading.Event()
    errors: list[str] = []

    def putter():  # one writer at full speed, bounded in count
        for i in range(400):
            if stop.is_set():
                return
            k = f"new{i}"
            if store.put(k, pattern(k, PAGE)) != 0:
                errors.append(k)

    t = threading.Thread(target=putter)
    t.start()
    try:
        for _ in range(3):
            read_back(store, old[:32])  # NVMe hits (DRAM holds 16 pages)
    finally:
        stop.set()
        t.join(timeout=120)
    assert not errors
    st = tiering(store)
    assert st["nvme_hits"] >= 32
    assert st["demoter_batches"] > 0 and st["demoter_pages"] > 0
    assert st["reads_waited_for_write"] == 0
    assert st["clean_target_bytes"] == 4 * MiB


def wait_for(cond, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


STALL_MS = 2000  # each stalled NVMe write completion (the fault hook), far above a 1 MiB read


@pytest.mark.parametrize("reserve", [0.5, 0])
def test_a_get_does_not_queue_behind_a_stalled_background_write(stores, reserve):
    """The demoter's writes stall (the fault hook delays each write completion by 2 s, holding the
    engine's write lock); a get of NVMe pages meanwhile takes a clean slot or reads directly and
    returns at once. Without a reserve the same get must first write the page it displaces, and
    waits for the stalled writer (the control)."""
    store = stores.make("tiered", clean_reserve=reserve, demote_batch="2MiB", **SMALL)
    old = [f"old{i}" for i in range(32)]
    put_pages(store, old)
    if reserve:
        wait_demoter_idle(store)
    store._backend._inject_nvme_faults("stall", 2, ms=STALL_MS)
    writer = threading.Thread(target=put_pages, args=(store, ["n0", "n1", "n2", "n3"]))
    writer.start()  # takes clean slots (or dirty ones), so the demoter writes: stalled
    try:
        if reserve:
            wait_for(lambda: tiering(store)["demoter_writing"] > 0, "the demoter to write")
        else:
            time.sleep(0.3)
        t0 = time.monotonic()
        read_back(store, old[:2])
        took = time.monotonic() - t0
    finally:
        writer.join(timeout=60)
    if reserve:
        assert took < STALL_MS / 1000 / 2, f"a get took {took:.2f} s behind a stalled write"
        assert tiering(store)["reads_waited_for_write"] == 0
    else:
        assert took >= STALL_MS / 1000 / 2 and tiering(store)["reads_waited_for_write"] >= 1


def write_pages_through(stores, keys):
    """Pages on NVMe from an earlier life of the store."""
    store = stores.make("tiered", write_through=True, **SMALL)
    put_pages(store, keys)
    store.close()


@pytest.mark.parametrize("kind", ["tiered", "node"])
def test_with_no_clean_slot_an_nvme_hit_is_read_directly(stores, scratch, kind):
    """DRAM full of pages the demoter may not write (admission second_hit: never read), so no slot
    is clean: gets read the NVMe pages straight into the caller's buffers, right bytes, no
    promotion, no wait."""
    old = [f"old{i}" for i in range(8)]
    write_pages_through(stores, old)
    store = stores.make(kind, clean_reserve=0.5, admission="second_hit", **SMALL)
    put_pages(store, [f"new{i}" for i in range(16)])
    entries = store.stats()["dram"]["entries"]
    slot = MiB
    buf = scratch(store, 4 * slot)
    assert store.batch_get_into(old[:4], [buf.addr + i * slot for i in range(4)], [slot] * 4) == [PAGE] * 4
    for i, k in enumerate(old[:4]):
        assert buf.read(i * slot, PAGE) == pattern(k, PAGE)
    read_back(store, old[4:])
    st = store.stats()
    assert st["tiering"]["direct_reads"] >= 8
    assert st["tiering"]["promoted"] == 0 and st["dram"]["entries"] == entries
    assert st["tiering"]["reads_waited_for_write"] == 0


@pytest.mark.parametrize("kind", ["tiered", "node"])
def test_reads_alone_make_the_demoter_write_nothing(stores, kind):
    """A read that promotes takes a clean slot and leaves a clean page in it; one that finds no
    clean slot reads directly. Neither asks the demoter for more: with DRAM full of pages never
    written to NVMe, a read-only phase costs no NVMe write at all (before, each promotion that
    used up the clean cold end made the demoter write a dirty page: a read paid for a write)."""
    store = stores.make(kind, clean_reserve=0.25, demote_batch="4MiB", **SMALL)
    old = [f"old{i}" for i in range(48)]
    put_pages(store, old)  # 32 on NVMe, DRAM full of the last 16
    wait_demoter_idle(store)
    before = store.stats()
    for _ in range(3):
        read_back(store, old[:32])  # NVMe hits: each promoted into a clean slot or read directly
    time.sleep(0.3)  # a demoter woken by the reads would have written by now (it polls every 50 ms)
    after = store.stats()
    t0, t1 = before["tiering"], after["tiering"]
    assert t1["nvme_hits"] - t0["nvme_hits"] >= 64
    assert t1["direct_reads"] > t0["direct_reads"]
    assert t1["demoter_pages"] == t0["demoter_pages"]
    assert after["nvme"]["puts"] == before["nvme"]["puts"]
    assert t1["reads_waited_for_write"] == 0


def test_a_clean_page_leaves_dram_without_a_write(stores):
    """Pages the demoter wrote are evicted later without a second write: every NVMe write while
    new puts displace them is one of the demoter's (of the new pages), none is inside a put."""
    store = stores.make("tiered", clean_reserve=0.9, demote_batch="16MiB", **SMALL)
    first = [f"p{i}" for i in range(14)]
    put_pages(store, first)
    wait_demoter_idle(store)  # 2 slots free, at least 12 of the 14 pages clean
    before = store.stats()
    put_pages(store, [f"q{i}" for i in range(14)])  # takes the free and the clean slots
    wait_demoter_idle(store)  # its batches in flight are counted
    after = store.stats()
    nvme_writes = after["nvme"]["puts"] - before["nvme"]["puts"]
    assert after["tiering"]["demoted"] == before["tiering"]["demoted"]  # no put wrote a victim
    assert nvme_writes == after["tiering"]["demoter_pages"] - before["tiering"]["demoter_pages"]
    read_back(store, first)


@pytest.mark.parametrize("setting, value, words", [
    ("clean_reserve", 1.5, "from 0 (off) to 0.9"),
    ("clean_reserve", -0.1, "out of range"),
    ("clean_reserve", "lots", "a share such as 0.1"),
    ("demote_batch", "64KiB", "from 1.0 MiB to 1.0 GiB"),
    ("demote_batch", "4GiB", "from 1.0 MiB to 1.0 GiB"),
])
def test_bad_reserve_settings_are_refused_with_the_fix(tmp_path, setting, value, words):
    cfg = config_for("tiered", str(tmp_path), str(tmp_path), **{setting: value})
    with pytest.raises(ConfigError) as e:
        Store.from_config(cfg)
    assert f"tiers.dram.{setting}" in str(e.value) and words in str(e.value)


def test_a_share_may_be_written_as_a_percentage(stores):
    store = stores.make("tiered", clean_reserve="25%", **SMALL)
    assert tiering(store)["clean_target_bytes"] == 4 * MiB


def on_nvme(socket: str, keys) -> list[str]:
    """The keys the node reports on NVMe (it answers GET_LOCATE with a location only for those)."""
    c = _native.NodeClient(socket, 5000)
    try:
        return [k for k in keys if c._locate_and_hold(k) > 0]
    finally:
        c.close()


def reopen_after_kill(stores, settings):
    deadline = time.monotonic() + 30
    while True:
        try:
            return stores.make("node", **settings)
        except Exception:  # the killed node's file lock is released when the kernel tears it down
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_a_node_killed_during_background_demotion_loses_nothing_on_nvme(stores):
    """SIGKILL while the demoter writes: every page that was on NVMe before (acknowledged: written
    through, demoted, or written by the demoter; docs/architecture.md) is there after the restart,
    and every page that is there has its own bytes."""
    settings = dict(clean_reserve=0.5, demote_batch="8MiB", **SMALL)
    store = stores.make("node", **settings)
    first = [f"a{i}" for i in range(40)]
    put_pages(store, first)
    wait_demoter_idle(store)
    acknowledged = on_nvme(store.config.node.socket, first)
    assert len(acknowledged) >= 24  # all but (at most) the 16 DRAM holds
    pid = store.stats()["node"]["pid"]
    burst = [f"b{i}" for i in range(300)]
    stop = threading.Event()

    def storm():  # keeps the demoter writing; puts fail once the node is gone
        for k in burst:
            if stop.is_set():
                return
            store.put(k, pattern(k, PAGE))

    putter = threading.Thread(target=storm)
    putter.start()
    try:
        wait_for(lambda: tiering(store)["demoter_writing"] > 0, "a background demotion", timeout=60)
        os.kill(pid, signal.SIGKILL)  # while the demoter writes a batch
    finally:
        stop.set()
        putter.join(timeout=60)
    stores.node_pids.discard(pid)
    store.close()
    store = reopen_after_kill(stores, settings)
    read_back(store, acknowledged)
    for k in first + burst:  # anything else is either its own bytes or a miss
        got = store.get(k)
        assert got in (b"", pattern(k, PAGE)), k
