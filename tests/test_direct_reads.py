"""An NVMe page that cannot be staged in DRAM is read straight from NVMe into the caller's buffer,
in-process and through the node alike (the node hands the page's location and its data file to
the client, which reads it with O_DIRECT into its own memory: one copy, disk to buffer). Here the
pages are larger than a DRAM slot can ever be: written while the slab size was larger, then
read after it was lowered."""

from __future__ import annotations

import pytest

from mooncake_hicache import ErrorCode
from conftest import pattern

BIG = 3 * (1 << 20) + 12345  # larger than the 1 MiB slabs of the second life
KEYS = [f"big{i}" for i in range(4)]


def write_big_pages(stores):
    store = stores.make("tiered", dram="16MiB", slab="4MiB", region="8MiB", nvme="64MiB", write_through=True)
    for k in KEYS:
        assert store.put(k, pattern(k, BIG)) == 0
    store.close()


@pytest.mark.parametrize("kind", ["tiered", "node"])
def test_pages_that_cannot_be_staged_in_dram_are_read_from_nvme(stores, scratch, kind):
    write_big_pages(stores)
    store = stores.make(kind, dram="4MiB", slab="1MiB", region="8MiB", nvme="64MiB")
    dram_before = store.stats()["dram"]["entries"]
    assert store.get(KEYS[0]) == pattern(KEYS[0], BIG)
    slot = (BIG + 4095) // 4096 * 4096
    buf = scratch(store, 3 * slot + 4096)
    # aligned buffers, an unaligned one, and scatter-gather pieces
    assert store.batch_get_into(KEYS[1:3], [buf.addr, buf.addr + slot], [slot, slot]) == [BIG, BIG]
    assert buf.read(0, BIG) == pattern(KEYS[1], BIG) and buf.read(slot, BIG) == pattern(KEYS[2], BIG)
    assert store.batch_get_into([KEYS[3]], [buf.addr + 2 * slot + 7], [BIG]) == [BIG]
    assert buf.read(2 * slot + 7, BIG) == pattern(KEYS[3], BIG)
    half = BIG // 2
    got = store.batch_get_into_multi_buffers([KEYS[0]], [[buf.addr + slot + 3, buf.addr + 5]], [[half, BIG - half]])
    assert got == [BIG]
    assert buf.read(slot + 3, half) + buf.read(5, BIG - half) == pattern(KEYS[0], BIG)
    assert store.batch_get_into([KEYS[0]], [buf.addr], [BIG - 1]) == [ErrorCode.BUFFER_TOO_SMALL]
    assert store.batch_get_into(["absent"], [buf.addr], [slot]) == [ErrorCode.NOT_FOUND]
    st = store.stats()
    assert st["dram"]["entries"] == dram_before  # nothing was staged
    assert st["tiering"]["direct_reads"] >= 5
    if kind == "node":
        assert st["node"]["locations_held"] == 0  # every region pin was given back


def test_a_client_that_dies_holding_locations_leaves_no_region_pinned(stores, tmp_path):
    import subprocess
    import sys
    import textwrap
    write_big_pages(stores)
    store = stores.make("node", dram="4MiB", slab="1MiB", region="8MiB", nvme="64MiB")
    code = textwrap.dedent(f"""
        import os, signal
        from mooncake_hicache import _native
        c = _native.NodeClient({store.config.node.socket!r}, 5000)
        assert c._locate_and_hold({KEYS[0]!r}) > 0
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    subprocess.run([sys.executable, "-c", code], timeout=60)
    import time
    deadline = time.monotonic() + 10
    while store.stats()["node"]["locations_held"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.stats()["node"]["locations_held"] == 0
    assert store.get(KEYS[1]) == pattern(KEYS[1], BIG)


def test_a_corrupt_page_read_directly_by_the_client_is_a_miss(stores, scratch):
    """The client reads a located page through its own huge-page staging and checks it before
    copying: a value whose bytes changed on disk is a miss (NOT_FOUND), its buffer untouched;
    the other pages read right."""
    import os
    from mooncake_hicache import _native
    write_big_pages(stores)
    store = stores.make("node", dram="4MiB", slab="1MiB", region="8MiB", nvme="64MiB")
    config = stores.config("node", dram="4MiB", slab="1MiB", region="8MiB", nvme="64MiB")
    client = _native.NodeClient(config["node"]["socket"], 5000)
    try:
        [(length, offset)] = client._locations([KEYS[1]])
    finally:
        client.close()
    assert length == BIG
    fd = os.open(config["tiers"]["nvme"]["path"], os.O_RDWR)
    try:
        byte = os.pread(fd, 1, offset + 1000)
        os.pwrite(fd, bytes([byte[0] ^ 0xFF]), offset + 1000)
        os.fsync(fd)
    finally:
        os.close(fd)
    slot = (BIG + 4095) // 4096 * 4096
    buf = scratch(store, 3 * slot)
    buf.write(slot, b"\x5a" * 64)
    got = store.batch_get_into(KEYS[:3], [buf.addr, buf.addr + slot, buf.addr + 2 * slot], [slot] * 3)
    assert got == [BIG, ErrorCode.NOT_FOUND, BIG]
    assert buf.read(0, BIG) == pattern(KEYS[0], BIG) and buf.read(2 * slot, BIG) == pattern(KEYS[2], BIG)
    assert buf.read(slot, 64) == b"\x5a" * 64  # nothing of the corrupt value reached the caller
    assert store.stats()["tiering"]["direct_reads"] >= 2
