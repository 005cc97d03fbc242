"""The NVMe engine when the kernel or the disk says no: an io_uring submission that fails, an
fdatasync that fails, an I/O queue that cannot be set up. Each failure becomes a result code (or
a logged warning) within a bounded time; none spins, raises out of remove/remove_all/close, or
loses track of what is stored. Faults are injected at the exact call that fails
(`_inject_faults`), the rest of the path is the engine's own."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest

from mooncake_hicache import ErrorCode, _native
from conftest import BACKENDS, Buffer, pattern

MiB = 1 << 20
PAGE = 64 * 1024


def engine(path, backend="io_uring", **kw):
    return _native.NvmeEngine(str(path), 16 * MiB, region_size=1 * MiB, queue_depth=4, io_backend=backend, **kw)


def put(e, keys, buf: Buffer):
    for i, k in enumerate(keys):
        buf.write(i * PAGE, pattern(k, PAGE))
    return e.batch_put(keys, [buf.addr + i * PAGE for i in range(len(keys))], [PAGE] * len(keys))


def run_child(code: str, timeout: float = 60) -> str:
    """Runs `code` in a fresh interpreter (a hang there cannot take this process with it)."""
    here = os.path.dirname(__file__)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=here, env={**os.environ, "PYTHONPATH": here})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


needs_uring = pytest.mark.skipif("io_uring" not in BACKENDS, reason="this build has no io_uring backend")


@pytest.fixture
def engines(tmp_path):
    """engines(backend) -> an engine on tmp_path/n.data (the same file each time); closed at teardown."""
    made = []

    def _open(backend="io_uring"):
        made.append(engine(tmp_path / "n.data", backend))
        return made[-1]
    yield _open
    for e in made:
        e.close()


@needs_uring
@pytest.mark.parametrize("warm", [True, False], ids=["record-writes", "region-open"])
@pytest.mark.parametrize("err", [errno.EIO, errno.EBADF, errno.ENOMEM])
def test_a_failed_submission_fails_those_writes_and_the_engine_goes_on(tmp_path, err, warm):
    """The first submission of a batch is refused: with a region open (record writes fail) and
    without (the region's opening fails). Either way: IO_ERROR for what was not written, in
    bounded time, and the next call works on a fresh queue."""
    out = run_child(f"""
        import time
        from mooncake_hicache import ErrorCode
        from test_io_faults import engine, put, PAGE
        from conftest import Buffer, pattern
        e = engine({str(tmp_path / 'n.data')!r})
        buf = Buffer(8 * PAGE)
        if {warm}:
            assert put(e, ["warm"], buf) == [0]
        e._inject_faults("submit", 1, {err})
        t0 = time.monotonic()
        res = put(e, [f"k{{i}}" for i in range(8)], buf)
        assert time.monotonic() - t0 < 10, "a failed submission must not spin"
        assert ErrorCode.IO_ERROR in res, res
        assert set(res) <= {{0, ErrorCode.IO_ERROR}}, res
        assert put(e, ["after"], buf) == [0]
        got = Buffer(PAGE)
        assert e.batch_get(["after"], [got.addr], [PAGE]) == [PAGE] and got.read(0, PAGE) == pattern("after", PAGE)
        for i, r in enumerate(res):  # what was acknowledged reads back; what failed is a miss
            want = PAGE if r == 0 else ErrorCode.NOT_FOUND
            assert e.batch_get([f"k{{i}}"], [got.addr], [PAGE]) == [want]
        e.close()
        print("ok")
    """)
    assert out.strip() == "ok"


@needs_uring
def test_a_busy_submission_is_retried(engines):
    e, buf = engines(), Buffer(4 * PAGE)
    e._inject_faults("submit", 3, errno.EAGAIN)
    assert put(e, ["a", "b", "c", "d"], buf) == [0] * 4
    got = Buffer(PAGE)
    assert e.batch_get(["c"], [got.addr], [PAGE]) == [PAGE] and got.read(0, PAGE) == pattern("c", PAGE)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failed_fdatasync_is_reported_not_ignored(engines, backend):
    e, buf = engines(backend), Buffer(4 * PAGE)
    assert put(e, ["a"], buf) == [0]
    e._inject_faults("sync", 1, errno.EIO)
    assert e.remove_all() == ErrorCode.IO_ERROR
    assert any("fdatasync" in line for line in e.take_notes()), "the failed sync must be logged"
    assert put(e, ["b"], buf) == [0]
    e._inject_faults("sync", 1, errno.EIO)
    e.close()  # seals and syncs: the failure is logged, close still releases the file
    assert any("fdatasync" in line for line in e.take_notes())
    assert e.stats()["io_errors"] >= 2
    engines(backend)  # the file was released


@pytest.mark.parametrize("backend", BACKENDS)
def test_remove_without_an_io_queue_is_an_io_error_and_changes_nothing(engines, backend):
    e, buf = engines(backend), Buffer(4 * PAGE)
    assert put(e, ["a", "b"], buf) == [0, 0]
    e._inject_faults("acquire", 1)
    assert e.remove("a") == ErrorCode.IO_ERROR
    assert e.batch_exists(["a"]) == [1], "a removal that could not be persisted must not half-happen"
    e._inject_faults("acquire", 1)
    assert e.remove_all() == ErrorCode.IO_ERROR
    assert e.batch_exists(["a", "b"]) == [1, 1]
    assert any("I/O queue" in line for line in e.take_notes())
    assert e.remove("a") == 0 and e.batch_exists(["a"]) == [0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_close_without_an_io_queue_still_releases_the_file_and_keeps_the_pages(engines, backend):
    e, buf = engines(backend), Buffer(4 * PAGE)
    assert put(e, ["a", "b"], buf) == [0, 0]
    e._inject_faults("acquire", 1)
    e.close()  # cannot seal: logs it, closes anyway
    assert any("seal" in line for line in e.take_notes())
    e2, got = engines(backend), Buffer(PAGE)  # the open region is scanned at restart
    assert e2.batch_get(["b"], [got.addr], [PAGE]) == [PAGE] and got.read(0, PAGE) == pattern("b", PAGE)
