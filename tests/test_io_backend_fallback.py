"""I/O backends of the NVMe tier: each one named in the config is the one used, and where the
kernel refuses io_uring (as Docker's default seccomp profile does) ``io_backend: auto`` falls
back to the thread pool with a warning while ``io_backend: io_uring`` is refused.

The refusal is real: a child process installs a seccomp filter that fails io_uring_setup with
EPERM before it opens a store."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from conftest import BACKENDS, MiB, nvme_config, pattern
from mooncake_hicache import Store
from mooncake_hicache._native import HAVE_URING

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
SIZES = [1, 4096, 65_537, 600_000, MiB]
NR_IO_URING_SETUP = {"x86_64": 425, "aarch64": 425}  # same number in both syscall tables


def round_trip(store, buffers, tag: str) -> None:
    slot = max(SIZES) + 8192
    src, dst = buffers(slot * len(SIZES)), buffers(slot * len(SIZES))
    store.register_buffer(src.addr, src.size)
    store.register_buffer(dst.addr, dst.size)
    keys = [f"{tag}-{n}" for n in SIZES]
    for i, (k, n) in enumerate(zip(keys, SIZES)):
        src.write(i * slot + (i % 2) * 100, pattern(k, n))  # every other source misaligned
    assert store.batch_put_from(keys, [src.addr + i * slot + (i % 2) * 100 for i in range(len(keys))], SIZES) \
        == [0] * len(keys)
    assert store.batch_get_into(keys, [dst.addr + i * slot for i in range(len(keys))], [slot] * len(keys)) == SIZES
    for i, (k, n) in enumerate(zip(keys, SIZES)):
        assert dst.read(i * slot, n) == pattern(k, n), k


@pytest.mark.parametrize("backend", BACKENDS)
def test_configured_backend_is_used_and_round_trips_across_a_restart(open_store, buffers, tmp_path, backend):
    store = open_store(io_backend=backend)
    st = store.stats()["nvme"]
    assert st["io_backend"] == backend
    if backend == "threads":
        assert st["fixed_buffers"] is False
    round_trip(store, buffers, backend)
    store.close()
    with Store.from_config(nvme_config(tmp_path / "nvme.data", io_backend=backend)) as again:
        assert again.stats()["nvme"]["io_backend"] == backend
        assert again.stats()["nvme"]["recovered_entries"] == len(SIZES)
        for n in SIZES:
            assert again.get(f"{backend}-{n}") == pattern(f"{backend}-{n}", n)


def io_uring_setup_errno() -> int:
    """0 if this process may create an io_uring, else the errno io_uring_setup fails with."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
    fd = libc.syscall(ctypes.c_long(NR_IO_URING_SETUP[platform.machine()]), ctypes.c_uint(2), params)
    if fd < 0:
        return ctypes.get_errno()
    os.close(fd)
    return 0


needs_seccomp_arch = pytest.mark.skipif(platform.machine() not in NR_IO_URING_SETUP,
                                        reason="the seccomp filter knows the syscall numbers of x86_64 and aarch64 only")


@needs_seccomp_arch
@pytest.mark.skipif(not HAVE_URING, reason="built without liburing")
def test_auto_picks_io_uring_where_the_kernel_allows_it(open_store):
    err = io_uring_setup_errno()
    if err:
        pytest.skip(f"io_uring_setup fails here ({errno.errorcode.get(err, err)})")
    assert open_store(io_backend="auto").stats()["nvme"]["io_backend"] == "io_uring"


# The child: install the filter, prove it works, then open a store as argv says and report.
SECCOMP_CHILD = textwrap.dedent("""
    import ctypes, errno, json, logging, os, platform, sys

    tests_dir, path, mode = sys.argv[1:4]
    AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}[platform.machine()]
    NR = 425  # io_uring_setup
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

    def setup_errno():
        params = ctypes.create_string_buffer(120)
        fd = libc.syscall(ctypes.c_long(NR), ctypes.c_uint(2), params)
        if fd < 0:
            return ctypes.get_errno()
        os.close(fd)
        return 0

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    BPF_LD_W_ABS, BPF_JMP_JEQ_K, BPF_RET_K = 0x00 | 0x00 | 0x20, 0x05 | 0x10 | 0x00, 0x06 | 0x00
    RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
    program = (SockFilter * 7)(
        SockFilter(BPF_LD_W_ABS, 0, 0, 4),            # seccomp_data.arch
        SockFilter(BPF_JMP_JEQ_K, 1, 0, AUDIT_ARCH),  # native arch: go on; else allow
        SockFilter(BPF_RET_K, 0, 0, RET_ALLOW),
        SockFilter(BPF_LD_W_ABS, 0, 0, 0),            # seccomp_data.nr
        SockFilter(BPF_JMP_JEQ_K, 0, 1, NR),
        SockFilter(BPF_RET_K, 0, 0, RET_ERRNO | errno.EPERM),
        SockFilter(BPF_RET_K, 0, 0, RET_ALLOW),
    )
    fprog = SockFprog(len(program), program)

    report = {"errno_before": setup_errno()}
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        sys.exit("PR_SET_NO_NEW_PRIVS failed: errno %d" % ctypes.get_errno())
    if libc.prctl(22, 2, ctypes.addressof(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        sys.exit("PR_SET_SECCOMP failed: errno %d" % ctypes.get_errno())
    report["errno_after"] = setup_errno()

    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG, format="LOG|%(name)s|%(levelname)s|%(message)s")
    sys.path.insert(0, tests_dir)
    from conftest import nvme_config, pattern
    from mooncake_hicache import ConfigError, Store

    backend = "auto" if mode == "auto" else mode
    try:
        store = Store.from_config(nvme_config(path, io_backend=backend))
    except ConfigError as e:
        report["config_error"] = str(e)
    else:
        report["io_backend"] = store.stats()["nvme"]["io_backend"]
        values = {f"k{n}": pattern(f"k{n}", n) for n in (1, 4096, 100_003, 2_000_000)}
        report["puts"] = [store.put(k, v) for k, v in values.items()]
        report["gets_ok"] = all(store.get(k) == v for k, v in values.items())
        store.close()
        with Store.from_config(nvme_config(path, io_backend=backend)) as again:
            report["io_backend_after_restart"] = again.stats()["nvme"]["io_backend"]
            report["restart_gets_ok"] = all(again.get(k) == v for k, v in values.items())
    print(json.dumps(report))
""")


def run_seccomp_child(tmp_path, mode: str) -> tuple[dict, list[str]]:
    r = subprocess.run([sys.executable, "-c", SECCOMP_CHILD, TESTS_DIR, str(tmp_path / "nvme.data"), mode],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    # The filter is in force: io_uring_setup fails with EPERM in the child.
    assert report["errno_after"] == errno.EPERM, report
    log_lines = [line.split("|", 3)[1:] for line in r.stderr.splitlines() if line.startswith("LOG|")]
    return report, log_lines


@needs_seccomp_arch
def test_seccomp_filter_changes_only_io_uring_setup(tmp_path):
    """The child's filter is what blocks io_uring: where the kernel allows io_uring_setup
    before it is installed, it fails with EPERM after."""
    report, _ = run_seccomp_child(tmp_path, "threads")
    if HAVE_URING and io_uring_setup_errno() == 0:
        assert report["errno_before"] == 0
    assert report["io_backend"] == "threads" and report["gets_ok"]


@needs_seccomp_arch
def test_auto_falls_back_to_threads_with_a_warning_when_io_uring_is_blocked(tmp_path):
    report, logs = run_seccomp_child(tmp_path, "auto")
    assert report["io_backend"] == "threads"
    assert report["puts"] == [0, 0, 0, 0]
    assert report["gets_ok"] and report["restart_gets_ok"]
    assert report["io_backend_after_restart"] == "threads"
    warnings = [msg for name, level, msg in logs if name == "mooncake_hicache" and level == "WARNING"]
    assert any("io_uring unavailable" in m for m in warnings), logs
    assert any("Operation not permitted" in m for m in warnings), logs


@needs_seccomp_arch
def test_explicit_threads_backend_under_the_filter_logs_no_io_uring_warning(tmp_path):
    report, logs = run_seccomp_child(tmp_path, "threads")
    assert report["io_backend"] == "threads" and report["gets_ok"] and report["restart_gets_ok"]
    assert not [entry for entry in logs if entry[1] == "WARNING"], logs


@needs_seccomp_arch
@pytest.mark.skipif(not HAVE_URING, reason="built without liburing")
def test_explicit_io_uring_backend_is_refused_when_io_uring_is_blocked(tmp_path):
    report, _ = run_seccomp_child(tmp_path, "io_uring")
    assert "config_error" in report, report
    assert "io_backend" in report["config_error"]
    assert "io_uring" in report["config_error"]
    assert "io_backend" not in report  # no store was opened
