"""Damaged data files: flipped value bytes, broken record headers and summaries, zeroed or cut
off region trailers, bad superblocks. A corrupt page must read as a miss, never as other bytes;
the rest of the store must keep working; a file the engine cannot trust must be refused, not
overwritten.

The damage is done with plain os.pwrite on a buffered descriptor (then fsync), the way a bad
disk or a stray writer would; the engine reads with O_DIRECT and sees it. Records are located by
parsing the on-disk format of csrc/nvme/record_format.h."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import struct
import subprocess
import sys
import textwrap

import pytest

from conftest import BACKENDS, MiB, nvme_config, pattern
from mooncake_hicache import ErrorCode, Store, StoreError

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
BLOCK = 4096
DATA_OFFSET = MiB
REGION = 4 * MiB
CAPACITY = "16MiB"  # four regions

HEADER = struct.Struct("<IHHIIQQQQQQQ")  # RecordHeader, 72 bytes
TRAILER = struct.Struct("<QIIQQQQQ")     # RegionTrailer
RECORD_MAGIC = 0x5243484D
TRAILER_MAGIC = 0x4C49415254484D43
SUMMARY_ENTRY = 48
assert HEADER.size == 72


@dataclasses.dataclass
class Record:
    key: str
    region: int
    header_off: int  # file offset of the header block
    value_len: int
    seq: int

    @property
    def value_off(self) -> int:
        return self.header_off + BLOCK


@dataclasses.dataclass
class Trailer:
    offset: int  # file offset of the trailer block
    magic: int
    state: int
    region_seq: int
    entry_count: int
    summary_offset: int  # in the region

    @property
    def valid(self) -> bool:
        return self.magic == TRAILER_MAGIC


def region_base(r: int) -> int:
    return DATA_OFFSET + r * REGION


def read_trailer(path, r: int) -> Trailer:
    off = region_base(r) + REGION - BLOCK
    with open(path, "rb") as f:
        f.seek(off)
        raw = f.read(TRAILER.size).ljust(TRAILER.size, b"\0")
    magic, state, _version, region_seq, count, summary_off, _sum_cs, _cs = TRAILER.unpack(raw)
    return Trailer(off, magic, state, region_seq, count, summary_off)


def live_records(path) -> dict[str, Record]:
    """key -> newest record of a region incarnation that has a valid trailer."""
    with open(path, "rb") as f:
        data = f.read()
    out: dict[str, Record] = {}
    for r in range((len(data) - DATA_OFFSET) // REGION):
        t = read_trailer(path, r)
        if not t.valid:
            continue
        base = region_base(r)
        for off in range(base, base + REGION - BLOCK, BLOCK):
            magic, _ver, _flags, key_len, _res, value_len, region_seq, seq = HEADER.unpack_from(data, off)[:8]
            if magic != RECORD_MAGIC or region_seq != t.region_seq or not 0 < key_len <= 2048:
                continue
            key = data[off + HEADER.size: off + HEADER.size + key_len].decode()
            if key not in out or out[key].seq < seq:
                out[key] = Record(key, r, off, value_len, seq)
    return out


def flip(path, offset: int, n: int = 1) -> None:
    """Invert n bytes at offset, through the page cache, and make it durable."""
    fd = os.open(path, os.O_RDWR)
    try:
        old = os.pread(fd, n, offset)
        assert len(old) == n
        os.pwrite(fd, bytes(b ^ 0xFF for b in old), offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def overwrite(path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def file_digest(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def open_at(path, backend="auto") -> Store:
    return Store.from_config(nvme_config(path, capacity=CAPACITY, io_backend=backend))


def put_pages(store, pages: dict[str, int]) -> None:
    for k, n in pages.items():
        assert store.put(k, pattern(k, n)) == 0, k


def pages_of(prefix: str, count: int, size: int = 200_000) -> dict[str, int]:
    return {f"{prefix}{i}": size + 13 * i for i in range(count)}


def assert_exact(store, pages: dict[str, int]) -> None:
    for k, n in pages.items():
        assert store.get(k) == pattern(k, n), k


def get_into(store, buffers, keys, size):
    """batch_get_into with a buffer pre-filled with a sentinel; returns (codes, buffer, slot)."""
    slot = (size + BLOCK - 1) // BLOCK * BLOCK
    buf = buffers(slot * len(keys))
    buf.write(0, b"\xAA" * buf.size)
    store.register_buffer(buf.addr, buf.size)
    codes = store.batch_get_into(keys, [buf.addr + i * slot for i in range(len(keys))], [slot] * len(keys))
    return codes, buf, slot


# ---- corrupt values ------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_value_on_disk_is_a_miss_after_restart(tmp_path, buffers, backend):
    path = tmp_path / "nvme.data"
    pages = pages_of("v", 10)
    with open_at(path, backend) as store:
        put_pages(store, pages)
    victim = "v3"
    rec = live_records(path)[victim]
    assert rec.region == 0 and rec.value_len == pages[victim]
    flip(path, rec.value_off + 1000)
    flip(path, rec.value_off + rec.value_len - 1)  # the very last value byte

    with open_at(path, backend) as store:
        assert store.is_exist(victim) == 1  # a sealed region's pages are not re-read at restart
        keys = ["v2", victim, "v4"]
        codes, buf, slot = get_into(store, buffers, keys, max(pages.values()))
        assert codes == [pages["v2"], ErrorCode.NOT_FOUND, pages["v4"]]
        assert buf.read(0, pages["v2"]) == pattern("v2", pages["v2"])
        assert buf.read(2 * slot, pages["v4"]) == pattern("v4", pages["v4"])
        st = store.stats()["nvme"]
        assert st["checksum_failures"] >= 1
        # The corrupt record is forgotten: the key is now absent, and stays a miss.
        assert store.is_exist(victim) == 0
        assert store.get(victim) == b""
        assert store.get_size(victim) == ErrorCode.NOT_FOUND
        assert store.stats()["nvme"]["entries"] == len(pages) - 1
        assert_exact(store, {k: n for k, n in pages.items() if k != victim})
        # Writing the key again heals it.
        assert store.put(victim, pattern("healed", 5000)) == 0
        assert store.get(victim) == pattern("healed", 5000)


@pytest.mark.parametrize("backend", BACKENDS)
def test_corruption_under_an_open_store_is_a_miss_never_wrong_bytes(tmp_path, buffers, backend):
    path = tmp_path / "nvme.data"
    store = open_at(path, backend)
    try:
        pages = pages_of("w", 8, size=150_001)
        put_pages(store, pages)
        recs = live_records(path)  # the region is still open: records are found by region_seq
        assert read_trailer(path, 0).state == 1
        # one corrupt byte in the middle of w1, a whole corrupt block in w5
        flip(path, recs["w1"].value_off + 77_777)
        flip(path, recs["w5"].value_off + 8192, BLOCK)

        keys = list(pages)
        codes, buf, slot = get_into(store, buffers, keys, max(pages.values()))
        for i, (k, code) in enumerate(zip(keys, codes)):
            if k in ("w1", "w5"):
                assert code == ErrorCode.NOT_FOUND, k
            else:
                assert code == pages[k], k
                assert buf.read(i * slot, pages[k]) == pattern(k, pages[k]), k
        assert store.stats()["nvme"]["checksum_failures"] >= 2
        assert store.batch_is_exist(["w1", "w5", "w0"]) == [0, 0, 1]
        assert store.get("w1") == b""

        # The scatter-gather read path checks the same checksum.
        assert store.put("sg", pattern("sg", 3 * BLOCK + 100)) == 0
        flip(path, live_records(path)["sg"].value_off + 2 * BLOCK + 5)
        sg = buffers(4 * BLOCK)
        store.register_buffer(sg.addr, sg.size)
        ptrs, sizes = [sg.addr, sg.addr + 2 * BLOCK + 1], [2 * BLOCK + 1, BLOCK + 99]
        assert store.batch_get_into_multi_buffers(["sg"], [ptrs], [sizes]) == [ErrorCode.NOT_FOUND]
        assert store.is_exist("sg") == 0
    finally:
        store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bytes_in_the_padding_after_a_value_are_not_part_of_it(tmp_path, backend):
    path = tmp_path / "nvme.data"
    with open_at(path, backend) as store:
        put_pages(store, {"pad": 5000})
    rec = live_records(path)["pad"]
    flip(path, rec.value_off + 5000, 2 * BLOCK - 5000)  # everything after the value in its last block
    with open_at(path, backend) as store:
        assert store.get("pad") == pattern("pad", 5000)
        assert store.stats()["nvme"]["checksum_failures"] == 0


# ---- corrupt headers and summaries (regions that must be scanned) ----------------------------

def corrupt_summary(path, r: int) -> None:
    t = read_trailer(path, r)
    assert t.valid and t.state == 2 and t.entry_count > 0
    flip(path, region_base(r) + t.summary_offset + 17)


@pytest.mark.parametrize("backend", BACKENDS)
def test_region_with_a_corrupt_summary_is_scanned_and_keeps_all_its_pages(tmp_path, backend):
    path = tmp_path / "nvme.data"
    pages = pages_of("s", 12)
    with open_at(path, backend) as store:
        put_pages(store, pages)
    corrupt_summary(path, 0)
    with open_at(path, backend) as store:
        st = store.stats()["nvme"]
        assert st["recovered_regions_scanned"] == 1
        assert st["entries"] == len(pages)
        assert_exact(store, pages)
    with open_at(path, backend) as store:  # recovery re-sealed it with a good summary
        assert store.stats()["nvme"]["recovered_regions_scanned"] == 0
        assert_exact(store, pages)


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_record_header_in_a_scanned_region_loses_only_that_record(tmp_path, backend):
    path = tmp_path / "nvme.data"
    pages = pages_of("h", 12)
    with open_at(path, backend) as store:
        put_pages(store, pages)
    recs = live_records(path)
    flip(path, recs["h5"].header_off + HEADER.size + 1)  # a byte of the key: header checksum fails
    flip(path, recs["h0"].header_off + 16)              # value_len of the very first record
    corrupt_summary(path, 0)                            # so that the region must be scanned
    with open_at(path, backend) as store:
        st = store.stats()["nvme"]
        assert st["recovered_regions_scanned"] == 1
        assert store.batch_is_exist(["h0", "h5"]) == [0, 0]
        assert store.get("h0") == b"" and store.get("h5") == b""
        rest = {k: n for k, n in pages.items() if k not in ("h0", "h5")}
        assert store.stats()["nvme"]["entries"] == len(rest)
        assert_exact(store, rest)


CRASHER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[1])
    from conftest import nvme_config, pattern
    from mooncake_hicache import Store
    path, backend, capacity = sys.argv[2:5]
    store = Store.from_config(nvme_config(path, capacity=capacity, io_backend=backend))
    for spec in sys.argv[5:]:
        key, size = spec.split("=")
        assert store.put(key, pattern(key, int(size))) == 0
    os._exit(0)  # no close(): the open region is left for the next start to scan
""")


def crash_after_puts(path, backend, pages: dict[str, int]) -> None:
    r = subprocess.run([sys.executable, "-c", CRASHER, TESTS_DIR, str(path), backend, CAPACITY,
                        *(f"{k}={n}" for k, n in pages.items())], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_torn_record_in_an_open_region_is_dropped_by_the_scan(tmp_path, backend):
    path = tmp_path / "nvme.data"
    pages = pages_of("t", 10, size=100_000)
    crash_after_puts(path, backend, pages)
    assert read_trailer(path, 0).state == 1  # open
    recs = live_records(path)
    flip(path, recs["t4"].value_off + 50_000)            # a torn value
    flip(path, recs["t7"].header_off + 40)               # a torn header (digest field)
    with open_at(path, backend) as store:
        st = store.stats()["nvme"]
        assert st["recovered_regions_scanned"] == 1
        # dropped by the scan itself, before any read: no checksum failure needed to find out
        assert store.batch_is_exist(["t4", "t7"]) == [0, 0]
        assert st["entries"] == len(pages) - 2
        assert_exact(store, {k: n for k, n in pages.items() if k not in ("t4", "t7")})


# ---- trailers ----------------------------------------------------------------------------------

def fill_three_regions(path, backend) -> tuple[dict[str, int], dict[str, Record]]:
    """~30 pages of ~300 KiB: regions 0 and 1 sealed by filling up, region 2 by close()."""
    pages = pages_of("z", 30, size=300_000)
    with open_at(path, backend) as store:
        put_pages(store, pages)
    recs = live_records(path)
    assert {rec.region for rec in recs.values()} == {0, 1, 2}
    assert all(read_trailer(path, r).state == 2 for r in (0, 1, 2))
    return pages, recs


@pytest.mark.parametrize("backend", BACKENDS)
def test_zeroed_trailer_makes_that_regions_pages_misses_not_garbage(tmp_path, buffers, backend):
    path = tmp_path / "nvme.data"
    pages, recs = fill_three_regions(path, backend)
    overwrite(path, read_trailer(path, 1).offset, bytes(BLOCK))
    lost = {k: n for k, n in pages.items() if recs[k].region == 1}
    kept = {k: n for k, n in pages.items() if recs[k].region != 1}
    assert lost and kept

    with open_at(path, backend) as store:
        st = store.stats()["nvme"]
        assert st["entries"] == len(kept)
        assert store.batch_is_exist(list(lost)) == [0] * len(lost)
        codes, _, _ = get_into(store, buffers, list(lost), max(lost.values()))
        assert codes == [ErrorCode.NOT_FOUND] * len(lost)
        assert_exact(store, kept)
        # The region is free again and takes new pages.
        fresh = pages_of("fresh", 6, size=250_000)
        put_pages(store, fresh)
        assert {live_records(path)[k].region for k in fresh} == {1}
    with open_at(path, backend) as store:
        assert store.batch_is_exist(list(lost)) == [0] * len(lost)
        assert_exact(store, {**kept, **fresh})
        assert store.stats()["nvme"]["entries"] == len(kept) + len(fresh)


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_data_file_loses_only_the_regions_cut_off(tmp_path, backend):
    path = tmp_path / "nvme.data"
    pages, recs = fill_three_regions(path, backend)
    os.truncate(path, region_base(2) + REGION // 2)  # region 2 loses its trailer and half its records
    lost = {k: n for k, n in pages.items() if recs[k].region == 2}
    kept = {k: n for k, n in pages.items() if recs[k].region != 2}
    with open_at(path, backend) as store:
        assert store.batch_is_exist(list(lost)) == [0] * len(lost)
        assert_exact(store, kept)
        fresh = pages_of("fresh", 20, size=300_000)  # refills regions 2 and 3, past the old end of file
        put_pages(store, fresh)
        assert_exact(store, fresh)
    with open_at(path, backend) as store:
        assert_exact(store, {**kept, **fresh})
        assert store.batch_is_exist(list(lost)) == [0] * len(lost)


@pytest.mark.parametrize("backend", BACKENDS)
def test_page_rewritten_after_its_region_trailer_was_lost_keeps_its_new_value_after_a_crash(tmp_path, backend):
    """The newest region's trailer is zeroed, so its pages are gone; a later life writes one of
    those keys again and crashes. The restart scans the reused region: it must return the new
    value (or nothing), not the value from before the damage."""
    path = tmp_path / "nvme.data"
    pages, recs = fill_three_regions(path, backend)
    overwrite(path, read_trailer(path, 2).offset, bytes(BLOCK))
    in_region_2 = sorted((rec.header_off, k) for k, rec in recs.items() if rec.region == 2)
    lost = {k: pages[k] for _, k in in_region_2}
    key = in_region_2[-1][1]  # the last record written before the damage

    with open_at(path, backend) as store:
        assert store.batch_is_exist(list(lost)) == [0] * len(lost)
    crash_after_puts(path, backend, {key: 4321})
    with open_at(path, backend) as store:
        got = store.get(key)
        assert len(got) == 4321, f"got {len(got)} bytes: the {lost[key]}-byte value from before the damage came back"
        assert got == pattern(key, 4321)


@pytest.mark.parametrize("damage", ["zeroed", "garbled"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_removal_survives_losing_the_trailer_of_the_region_that_holds_its_tombstone(tmp_path, backend, damage):
    """Pages of regions 0 and 1 are removed; their tombstones go to region 2, whose trailer is then
    lost. The removed pages must stay removed: at this restart, and at later ones, after region 2
    has been reused and its old blocks overwritten."""
    path = tmp_path / "nvme.data"
    pages = pages_of("z", 28, size=300_000)  # regions 0 and 1 fill up (13 each) and are sealed
    with open_at(path, backend) as store:
        put_pages(store, pages)
        recs = live_records(path)
        removed = sorted(k for k in pages if recs[k].region in (0, 1))[::3]
        for k in removed:
            assert store.remove(k) == 0
    kept = {k: n for k, n in pages.items() if k not in removed}
    tombstone_region = max(r for r in range(4) if read_trailer(path, r).valid)
    assert tombstone_region not in {recs[k].region for k in removed}
    trailer = read_trailer(path, tombstone_region).offset
    overwrite(path, trailer, bytes(BLOCK) if damage == "zeroed" else bytes(random.Random(7).randbytes(BLOCK)))

    with open_at(path, backend) as store:
        assert store.batch_is_exist(removed) == [0] * len(removed), "removed pages came back"
        assert_exact(store, {k: n for k, n in kept.items() if recs[k].region != tombstone_region})
        put_pages(store, pages_of("fresh", 30, size=300_000))  # reuses and overwrites region 2
    for _ in range(2):
        with open_at(path, backend) as store:
            assert store.batch_is_exist(removed) == [0] * len(removed), "removed pages came back later"


# ---- superblock ----------------------------------------------------------------------------------

def test_corrupt_superblock_is_refused_and_the_file_left_untouched(tmp_path):
    path = tmp_path / "nvme.data"
    pages = pages_of("sb", 4)
    with open_at(path) as store:
        put_pages(store, pages)
    flip(path, 40)  # created_unix: covered by the superblock checksum
    before = file_digest(path)
    with pytest.raises(StoreError) as info:
        open_at(path)
    assert str(path) in str(info.value)
    assert "corrupt superblock" in str(info.value)
    assert file_digest(path) == before
    flip(path, 40)  # undo: the pages were never touched
    with open_at(path) as store:
        assert_exact(store, pages)


def test_file_of_random_bytes_is_refused_and_not_overwritten(tmp_path):
    path = tmp_path / "nvme.data"
    path.write_bytes(random.Random(1234).randbytes(2 * MiB))
    before = file_digest(path)
    with pytest.raises(StoreError) as info:
        open_at(path)
    assert "not a mooncake-hicache data file" in str(info.value)
    assert str(path) in str(info.value)
    assert file_digest(path) == before


def test_superblock_of_another_format_version_is_refused(tmp_path):
    path = tmp_path / "nvme.data"
    with open_at(path) as store:
        put_pages(store, {"ver": 1000})
    overwrite(path, 8, struct.pack("<I", 99))
    before = file_digest(path)
    with pytest.raises(StoreError) as info:
        open_at(path)
    msg = str(info.value)
    assert "format version" in msg and "99" in msg and str(path) in msg
    assert file_digest(path) == before
