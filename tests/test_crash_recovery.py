"""Restarts of the NVMe tier: after SIGKILL in the middle of a write burst, after a graceful
close, and across several lives of one data file (tombstones, overwrites, remove_all).

The crashing side always runs in a child process (``sys.executable -c``) so that nothing of the
engine's in-memory state survives into the process that reopens the file."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import BACKENDS, MiB, Buffer, nvme_config, pattern
from mooncake_hicache import ErrorCode, Store

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
KiB = 1 << 10

# ---- the pages a crashing writer produces: deterministic keys, mixed sizes -------------------

CRASH_CAPACITY = "128MiB"   # 32 regions of 4 MiB
PAGES_PER_BATCH = 12
MAX_BATCHES = 16            # what the writer would write if never killed (< 70% of capacity)
KILL_AT_BATCH = 6           # the parent kills once the writer starts this batch
MIN_PAGE, MAX_PAGE = 64 * KiB, 600 * KiB
SLOT = MAX_PAGE + 8 * KiB   # buffer space per page of a batch


def page_key(batch: int, i: int) -> str:
    return f"crash-b{batch:03d}-p{i:02d}"


def page_size(batch: int, i: int) -> int:
    """64 KiB .. 600 KiB, most sizes not a multiple of 4 KiB."""
    return MIN_PAGE + (batch * 7919 + i * 104729) % (MAX_PAGE - MIN_PAGE + 1)


def page_offset(i: int) -> int:
    """Where page i of a batch sits in the writer's buffer: every fourth one misaligned."""
    return i * SLOT + (513 if i % 4 == 3 else 0)


def test_the_writer_workload_cannot_fill_the_store():
    """Sanity of the crash test's numbers: everything the writer could ever write fits, with
    room to spare for per-region waste, so no page it wrote can have been evicted."""
    record_bytes = sum(4096 + (page_size(b, i) + 4095) // 4096 * 4096
                       for b in range(MAX_BATCHES) for i in range(PAGES_PER_BATCH))
    assert record_bytes < 0.7 * 128 * MiB
    # and the kill point comes after several regions' worth of data
    written_before_kill = sum(page_size(b, i) for b in range(KILL_AT_BATCH) for i in range(PAGES_PER_BATCH))
    assert written_before_kill > 4 * 4 * MiB


# A writer that puts batches in a loop. Before each batch it appends "<batch>" to the progress
# file (flushed, not synced); after each batch returns it appends one JSON line with the result
# codes to the acknowledgement log and fsyncs it. After MAX_BATCHES it idles until killed.
WRITER = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, sys.argv[1])
    from conftest import Buffer, nvme_config, pattern
    from mooncake_hicache import Store
    from test_crash_recovery import (MAX_BATCHES, PAGES_PER_BATCH, SLOT, page_key, page_offset,
                                     page_size, CRASH_CAPACITY)
    path, backend, log_path, progress_path = sys.argv[2:6]
    store = Store.from_config(nvme_config(path, capacity=CRASH_CAPACITY, io_backend=backend))
    buf = Buffer(PAGES_PER_BATCH * SLOT)
    store.register_buffer(buf.addr, buf.size)
    log = open(log_path, "a")
    progress = open(progress_path, "a")
    for b in range(MAX_BATCHES):
        keys = [page_key(b, i) for i in range(PAGES_PER_BATCH)]
        sizes = [page_size(b, i) for i in range(PAGES_PER_BATCH)]
        for i, (k, n) in enumerate(zip(keys, sizes)):
            buf.write(page_offset(i), pattern(k, n))
        progress.write(f"{b}\\n")
        progress.flush()
        rc = store.batch_put_from(keys, [buf.addr + page_offset(i) for i in range(PAGES_PER_BATCH)], sizes)
        evicted = store.stats()["nvme"]["evicted_regions"]
        log.write(json.dumps({"batch": b, "keys": keys, "sizes": sizes, "rc": rc, "evicted_regions": evicted}) + "\\n")
        log.flush()
        os.fsync(log.fileno())
    progress.write("done\\n")
    progress.flush()
    while True:
        time.sleep(1)
""")


def read_complete_lines(path) -> list[str]:
    """Lines that end in a newline (a SIGKILL may leave a partial last line)."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    return text.split("\n")[:-1]


def wait_until(predicate, proc, timeout=60.0, what="progress"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"child exited with {proc.returncode} before {what}:\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"no {what} within {timeout} s:\n{err}")
        time.sleep(0.001)


def wait_for_file_lock_release(path, timeout=10.0) -> None:
    """Wait until nobody holds the data file's flock. With io_uring, the kernel tears a killed
    process's rings down asynchronously, and their in-flight requests keep the open file (and so
    its lock) alive for a few milliseconds after the process has been reaped."""
    fd = os.open(path, os.O_RDONLY)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                assert time.monotonic() < deadline, "the killed writer's file lock was never released"
                time.sleep(0.002)
    finally:
        os.close(fd)


TRAILER = struct.Struct("<QIIQQQQQ")  # magic, state, version, region_seq, entries, summary off/checksum, checksum
TRAILER_MAGIC = 0x4C49415254484D43
TRAILER_OPEN = 1


def open_region_trailers(path, region_size=4 * MiB) -> int:
    """How many regions of the data file carry an 'open' trailer (a restart must scan them)."""
    count = 0
    with open(path, "rb") as f:
        region_count = (os.fstat(f.fileno()).st_size - MiB) // region_size
        for r in range(region_count):
            f.seek(MiB + (r + 1) * region_size - 4096)
            magic, state = TRAILER.unpack(f.read(TRAILER.size))[:2]
            count += magic == TRAILER_MAGIC and state == TRAILER_OPEN
    return count


@pytest.mark.parametrize("when", ["mid_burst", "idle"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_keeps_every_acknowledged_page_and_never_returns_wrong_bytes(tmp_path, backend, when):
    """mid_burst: SIGKILL as soon as the writer starts batch KILL_AT_BATCH, i.e. while a dozen
    writes are being submitted or are in flight. idle: SIGKILL after the last batch returned,
    with the store never closed."""
    path = tmp_path / "nvme.data"
    log_path, progress_path = tmp_path / "acked.jsonl", tmp_path / "progress.txt"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, TESTS_DIR, str(path), backend,
                             str(log_path), str(progress_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = str(KILL_AT_BATCH) if when == "mid_burst" else "done"
    try:
        wait_until(lambda: marker in read_complete_lines(progress_path), proc, what=f"progress {marker!r}")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    wait_for_file_lock_release(path)

    acked = [json.loads(line) for line in read_complete_lines(log_path)]
    # Every batch before the marker was logged before the writer announced the next one.
    expect_batches = KILL_AT_BATCH if when == "mid_burst" else MAX_BATCHES
    assert [a["batch"] for a in acked[:expect_batches]] == list(range(expect_batches))
    for a in acked:
        assert a["rc"] == [0] * PAGES_PER_BATCH, a
        assert a["evicted_regions"] == 0
    acked_pages = {k: n for a in acked for k, n in zip(a["keys"], a["sizes"])}

    # The kill may land between sealing a full region and opening the next one (the seal's
    # fdatasync is the slowest step of a put), in which case no region is open on disk. Idle,
    # the region holding the last batch's tail is always open.
    must_scan = open_region_trailers(path)
    if when == "idle":
        assert must_scan == 1

    with Store.from_config(nvme_config(path, capacity=CRASH_CAPACITY, io_backend=backend)) as store:
        st = store.stats()["nvme"]
        assert st["evicted_regions"] == 0
        assert st["recovered_regions_scanned"] == must_scan, st  # the open region was scanned
        assert st["regions_sealed"] >= 5, st  # several regions were sealed before the kill

        # (a) every acknowledged page is back, byte for byte
        for key, n in acked_pages.items():
            assert store.get_size(key) == n, key
            assert store.get(key) == pattern(key, n), key

        # (b) anything the writer may have attempted is either missing or exactly right
        present = 0
        for b in range(MAX_BATCHES):
            for i in range(PAGES_PER_BATCH):
                key, n = page_key(b, i), page_size(b, i)
                got = store.get(key)
                if got:
                    assert got == pattern(key, n), f"{key}: wrong bytes after recovery"
                    present += 1
                else:
                    assert key not in acked_pages
                    assert store.is_exist(key) == 0
        assert present >= len(acked_pages)
        assert st["entries"] == present == st["recovered_entries"]
        if when == "idle":
            assert present == MAX_BATCHES * PAGES_PER_BATCH

    # Recovery sealed the regions it scanned (an open region that held no record yet is only
    # freed): the next restart scans nothing else.
    left_open = open_region_trailers(path)
    if when == "idle":
        assert left_open == 0
    with Store.from_config(nvme_config(path, capacity=CRASH_CAPACITY, io_backend=backend)) as store:
        st = store.stats()["nvme"]
        assert st["recovered_regions_scanned"] == left_open, st
        assert st["entries"] == present


def fill(store, prefix: str, count: int, size_of=lambda i: 100_000 + 37 * i) -> dict[str, int]:
    """Put `count` pages (in batches of 8 through a registered buffer); returns key -> size."""
    pages = {f"{prefix}-{i}": size_of(i) for i in range(count)}
    items = list(pages.items())
    slot = max(pages.values()) + 4096
    buf = Buffer(8 * slot)
    try:
        store.register_buffer(buf.addr, buf.size)
        for start in range(0, len(items), 8):
            chunk = items[start:start + 8]
            for j, (k, n) in enumerate(chunk):
                buf.write(j * slot, pattern(k, n))
            rc = store.batch_put_from([k for k, _ in chunk], [buf.addr + j * slot for j in range(len(chunk))],
                                      [n for _, n in chunk])
            assert rc == [0] * len(chunk)
        store.unregister_buffer(buf.addr)
    finally:
        buf.close()
    return pages


def assert_all_present(store, pages: dict[str, int]) -> None:
    slot = max(pages.values()) + 4096
    keys = list(pages)
    buf = Buffer(len(keys) * slot)
    try:
        store.register_buffer(buf.addr, buf.size)
        got = store.batch_get_into(keys, [buf.addr + j * slot for j in range(len(keys))], [slot] * len(keys))
        assert got == [pages[k] for k in keys]
        for j, k in enumerate(keys):
            assert buf.read(j * slot, pages[k]) == pattern(k, pages[k]), k
        store.unregister_buffer(buf.addr)
    finally:
        buf.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_graceful_restart_reads_region_summaries_and_keeps_everything(tmp_path, backend):
    cfg = nvme_config(tmp_path / "nvme.data", io_backend=backend)
    with Store.from_config(cfg) as store:
        pages = fill(store, "g", 100)  # ~10 MiB: two sealed regions plus the open one
        assert store.stats()["nvme"]["regions_sealed"] >= 2
    with Store.from_config(cfg) as store:
        st = store.stats()["nvme"]
        assert st["recovered_regions_scanned"] == 0, st  # close() sealed the open region
        assert st["recovered_entries"] == st["entries"] == len(pages)
        assert st["value_bytes"] == sum(pages.values())
        assert st["recovery_seconds"] < 1.0
        assert_all_present(store, pages)


# ---- several lives of one file ----------------------------------------------------------------

# Runs a list of operations on a store and exits without closing it: a crash right after the
# calls returned (no region is sealed, nothing is flushed by close()).
CRASHER = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    from conftest import nvme_config
    from mooncake_hicache import Store
    from test_crash_recovery import apply_ops
    path, backend, capacity, ops = sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
    store = Store.from_config(nvme_config(path, capacity=capacity, io_backend=backend))
    apply_ops(store, ops)
    sys.stdout.flush()
    os._exit(0)
""")


def apply_ops(store, ops) -> None:
    """ops: ["put", key, content_tag, size] (value = pattern(content_tag, size)), ["remove", key],
    ["remove_all"], or ["fill", prefix, count] (see fill())."""
    for op in ops:
        if op[0] == "put":
            assert store.put(op[1], pattern(op[2], op[3])) == 0, op
        elif op[0] == "remove":
            assert store.remove(op[1]) == 0, op
        elif op[0] == "remove_all":
            assert store.remove_all() == 0
        elif op[0] == "fill":
            fill(store, op[1], op[2])
        else:
            raise AssertionError(op)


def run_life(path, backend, ops, how: str, capacity="64MiB") -> None:
    """One life of the data file: open, run ops, then end it by close() or by a crash."""
    if how == "close":
        with Store.from_config(nvme_config(path, capacity=capacity, io_backend=backend)) as store:
            apply_ops(store, ops)
    else:
        r = subprocess.run([sys.executable, "-c", CRASHER, TESTS_DIR, str(path), backend, capacity, json.dumps(ops)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr


def reopen(path, backend, capacity="64MiB") -> Store:
    return Store.from_config(nvme_config(path, capacity=capacity, io_backend=backend))


def fill_pages(prefix, count):
    return {f"{prefix}-{i}": 100_000 + 37 * i for i in range(count)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_writing_continues_after_a_crash_restart_and_a_second_restart_keeps_both_generations(tmp_path, backend):
    path = tmp_path / "nvme.data"
    run_life(path, backend, [["fill", "gen1", 60]], "crash")  # ~6 MiB: one sealed region, one open
    gen1 = fill_pages("gen1", 60)
    with reopen(path, backend) as store:
        st = store.stats()["nvme"]
        assert st["recovered_regions_scanned"] >= 1
        assert_all_present(store, gen1)
        gen2 = fill(store, "gen2", 60)
        assert_all_present(store, {**gen1, **gen2})
    with reopen(path, backend) as store:
        st = store.stats()["nvme"]
        assert st["recovered_regions_scanned"] == 0  # the scanned region was sealed by recovery
        assert st["entries"] == len(gen1) + len(gen2)
        assert_all_present(store, {**gen1, **gen2})
        gen3 = fill(store, "gen3", 20)
    with reopen(path, backend) as store:
        assert_all_present(store, {**gen1, **gen2, **gen3})


@pytest.mark.parametrize("how", ["close", "crash"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_removed_key_stays_missing_after_restart(tmp_path, backend, how):
    path = tmp_path / "nvme.data"
    run_life(path, backend, [["put", f"k{i}", f"k{i}", 50_000 + i] for i in range(6)], "close")
    # The removals land in a later life than the puts: the tombstones must outrank sealed records.
    run_life(path, backend, [["remove", "k1"], ["remove", "k4"], ["put", "k5", "k5-v2", 7777]], how)
    with reopen(path, backend) as store:
        assert store.is_exist("k1") == 0 and store.is_exist("k4") == 0
        assert store.get("k1") == b"" and store.get("k4") == b""
        assert store.remove("k1") == ErrorCode.NOT_FOUND
        for i in (0, 2, 3):
            assert store.get(f"k{i}") == pattern(f"k{i}", 50_000 + i)
        assert store.get("k5") == pattern("k5-v2", 7777)
        assert store.stats()["nvme"]["entries"] == 4
    with reopen(path, backend) as store:  # and once more, now from the sealed summaries
        assert store.batch_is_exist([f"k{i}" for i in range(6)]) == [1, 0, 1, 1, 0, 1]


@pytest.mark.parametrize("how", ["close", "crash"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_remove_then_put_again_in_one_life_restarts_with_the_new_value(tmp_path, backend, how):
    path = tmp_path / "nvme.data"
    run_life(path, backend, [["put", "k", "v1", 30_000], ["remove", "k"], ["put", "k", "v2", 20_000],
                             ["put", "gone", "gone", 10_000], ["remove", "gone"]], how)
    with reopen(path, backend) as store:
        assert store.get("k") == pattern("v2", 20_000)
        assert store.is_exist("gone") == 0


@pytest.mark.parametrize("how", ["close", "crash"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_remove_all_survives_restart(tmp_path, backend, how):
    path = tmp_path / "nvme.data"
    old = [f"old{i}" for i in range(40)]
    run_life(path, backend, [["fill", "old", 40], ["remove_all"], ["put", "after", "after", 12_345]], how)
    with reopen(path, backend) as store:
        assert store.batch_is_exist(old) == [0] * len(old)
        assert all(store.get(k) == b"" for k in old)
        assert store.get("after") == pattern("after", 12_345)
        assert store.stats()["nvme"]["entries"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_remove_all_then_restart_then_crash_does_not_resurrect_removed_pages(tmp_path, backend):
    """remove_all, a clean restart, a few puts, then a crash: the restart after the crash scans
    the open region and must find only the new records, never pages removed by remove_all nor
    an older value of a key that was written again."""
    path = tmp_path / "nvme.data"
    # Life 1: six equal-sized records at the start of the first region; then remove_all.
    run_life(path, backend, [["put", k, k + "-old", 40_000] for k in ("a", "b", "K", "c", "d", "e")]
             + [["remove_all"]], "close")
    # Life 2 opens an empty store, writes two records of the same size and crashes.
    run_life(path, backend, [["put", "x", "x-new", 40_000], ["put", "K", "K-new", 40_000]], "crash")
    with reopen(path, backend) as store:
        assert store.get("x") == pattern("x-new", 40_000)
        got = store.get("K")
        assert got != pattern("K-old", 40_000), "K reads the value written before remove_all"
        assert got == pattern("K-new", 40_000)
        assert store.batch_is_exist(["a", "b", "c", "d", "e"]) == [0] * 5, "removed pages came back"
        assert store.stats()["nvme"]["entries"] == 2


@pytest.mark.parametrize("how", ["close", "crash"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_newer_value_of_an_overwritten_key_wins_after_restart(tmp_path, backend, how):
    path = tmp_path / "nvme.data"
    store = reopen(path, backend)
    try:
        assert store.put("same", pattern("v1", 300_000)) == 0
        fill(store, "between", 20)  # the two versions live in different batches (and regions)
        assert store.put("same", pattern("v2", 123_457)) == 0
        assert store.get("same") == pattern("v2", 123_457)
    finally:
        store.close()
    with reopen(path, backend) as store:
        assert store.get("same") == pattern("v2", 123_457)
    # and across lives: the version written in a later life wins over the sealed one
    run_life(path, backend, [["put", "same", "v3", 4096], ["put", "other", "o", 5]], how)
    with reopen(path, backend) as store:
        assert store.get_size("same") == 4096
        assert store.get("same") == pattern("v3", 4096)
        assert store.get("other") == pattern("o", 5)
