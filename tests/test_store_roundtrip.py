"""Round trips through the real NVMe engine: sizes, alignments, scatter-gather, both backends."""

from __future__ import annotations

import pytest

from mooncake_hicache import ErrorCode
from conftest import BACKENDS, MiB, pattern

SIZES = [0, 1, 100, 4095, 4096, 4097, 12345, 65536, 256 * 1024, MiB + 3, 3 * MiB]


@pytest.mark.parametrize("backend", BACKENDS)
def test_values_of_many_sizes_round_trip_through_aligned_buffers(open_store, buffers, backend):
    store = open_store(io_backend=backend)
    src, dst = buffers(sum(SIZES) + len(SIZES) * 4096), buffers(sum(SIZES) + len(SIZES) * 4096)
    keys, ptrs, offs = [], [], []
    off = 0
    for n in SIZES:
        key = f"size-{n}"
        src.write(off, pattern(key, n))
        keys.append(key)
        offs.append(off)
        off += (n + 4095) // 4096 * 4096 or 4096
    assert store.register_buffer(src.addr, src.size) == 0
    assert store.register_buffer(dst.addr, dst.size) == 0
    assert store.batch_put_from(keys, [src.addr + o for o in offs], SIZES) == [0] * len(SIZES)
    got = store.batch_get_into(keys, [dst.addr + o for o in offs], SIZES)
    assert got == SIZES
    for key, o, n in zip(keys, offs, SIZES):
        assert dst.read(o, n) == pattern(key, n), key
    assert store.stats()["nvme"]["io_backend"] == backend


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("misalign", [1, 7, 512, 4095])
def test_unaligned_buffers_round_trip_through_bounce_memory(open_store, buffers, backend, misalign):
    store = open_store(io_backend=backend)
    n = 300_001
    src, dst = buffers(n + 8192), buffers(n + 8192)
    store.register_buffer(src.addr, src.size)
    store.register_buffer(dst.addr, dst.size)
    src.write(misalign, pattern("odd", n))
    assert store.batch_put_from(["odd"], [src.addr + misalign], [n]) == [0]
    assert store.batch_get_into(["odd"], [dst.addr + 4096 - misalign], [n]) == [n]
    assert dst.read(4096 - misalign, n) == pattern("odd", n)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scatter_gather_value_is_one_record_readable_with_another_split(open_store, buffers, backend):
    # K and V halves per layer, as SGLang's layer_first host pool hands them over.
    store = open_store(io_backend=backend)
    parts = [16384, 16384, 5000, 3192, 4096, 1, 8191, 65536]
    total = sum(parts)
    src, dst = buffers(2 * total + 65536), buffers(2 * total + 65536)
    store.register_buffer(src.addr, src.size)
    store.register_buffer(dst.addr, dst.size)
    value = pattern("sg", total)
    ptrs, off, pos = [], 0, 0
    for n in parts:  # scatter the parts around the buffer, some aligned, some not
        src.write(off, value[pos:pos + n])
        ptrs.append(src.addr + off)
        pos += n
        off += n + (4096 if n % 2 == 0 else 333)
    assert store.batch_put_from_multi_buffers(["sg"], [ptrs], [parts]) == [0]
    assert store.stats()["nvme"]["entries"] == 1
    # Read back as a single buffer ...
    assert store.batch_get_into(["sg"], [dst.addr], [total]) == [total]
    assert dst.read(0, total) == value
    # ... and as a different split.
    split = [1000, total - 1000]
    assert store.batch_get_into_multi_buffers(["sg"], [[dst.addr + 8192, dst.addr + 8192 + 1000 + 4096]], [split]) == [total]
    assert dst.read(8192, 1000) + dst.read(8192 + 1000 + 4096, total - 1000) == value


def test_put_and_get_bytes_without_registration(open_store):
    store = open_store()
    assert store.put("hello", b"world") == 0
    assert store.get("hello") == b"world"
    assert store.get("absent") == b""
    assert store.put("empty", b"") == 0
    assert store.is_exist("empty") == 1 and store.get("empty") == b""
    assert store.get_size("hello") == 5


def test_batch_is_exist_reports_present_and_absent_keys(open_store):
    store = open_store()
    store.put("a", b"1")
    store.put("c", b"3")
    assert store.batch_is_exist(["a", "b", "c"]) == [1, 0, 1]


def test_missing_key_has_its_own_code(open_store, buffers):
    store = open_store()
    b = buffers(4096)
    store.register_buffer(b.addr, b.size)
    assert store.batch_get_into(["nope"], [b.addr], [4096]) == [ErrorCode.NOT_FOUND]
    assert store.stats()["nvme"]["misses"] == 1


def test_value_larger_than_the_buffer_is_refused_not_truncated(open_store, buffers):
    store = open_store()
    b = buffers(16384)
    store.register_buffer(b.addr, b.size)
    store.put("big", pattern("big", 10000))
    assert store.batch_get_into(["big"], [b.addr], [8192]) == [ErrorCode.BUFFER_TOO_SMALL]
    assert store.batch_get_into(["big"], [b.addr], [16384]) == [10000]


def test_overwrite_returns_the_newest_value_and_a_batch_duplicate_keeps_the_last(open_store, buffers):
    store = open_store()
    b = buffers(3 * 8192)
    store.register_buffer(b.addr, b.size)
    b.write(0, b"A" * 8192)
    b.write(8192, b"B" * 8192)
    b.write(16384, b"C" * 8192)
    assert store.batch_put_from(["k"], [b.addr], [8192]) == [0]
    assert store.batch_put_from(["k", "k"], [b.addr + 8192, b.addr + 16384], [8192, 8192]) == [0, 0]
    assert store.get("k") == b"C" * 8192
    assert store.stats()["nvme"]["entries"] == 1


def test_remove_and_remove_all(open_store):
    store = open_store()
    for i in range(10):
        store.put(f"k{i}", pattern(f"k{i}", 5000))
    assert store.remove("k3") == 0
    assert store.remove("k3") == ErrorCode.NOT_FOUND
    assert store.is_exist("k3") == 0 and store.is_exist("k4") == 1
    assert store.remove_all() == 0
    assert store.batch_is_exist([f"k{i}" for i in range(10)]) == [0] * 10
    assert store.put("after", b"x") == 0 and store.get("after") == b"x"


def test_stats_report_index_bytes_per_entry(open_store):
    store = open_store()
    for i in range(200):
        store.put(f"k{i}", b"v")
    st = store.stats()["nvme"]
    assert st["entries"] == 200
    assert 40 <= st["index_bytes_per_entry"] <= 120
