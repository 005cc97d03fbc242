"""Result codes have one source (csrc/common/status.h, exported as _native.STATUS_CODES), and the
Python side decides on codes, never on message text: NodeClient.last_error_code says why a node
could not be reached, and every note carries the logging level the C++ side gave it."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import shutil
import socket
import tempfile

import pytest

from mooncake_hicache import ErrorCode, _native

STATUS_H = os.path.join(os.path.dirname(__file__), "..", "csrc", "common", "status.h")


def test_error_codes_are_the_extensions_table():
    assert [(m.name, int(m)) for m in ErrorCode] == [(n, v) for n, v, _ in _native.STATUS_CODES]
    assert ErrorCode.NOT_FOUND == -704 and ErrorCode.INVALID_PARAMS == -600  # Mooncake's numbers
    assert ErrorCode.describe(-704) == "NOT_FOUND" and ErrorCode.describe(12345) == "UNKNOWN(12345)"


def test_the_status_header_lists_every_code_once():
    rows = re.findall(r"X\((k\w+), (\w+), (-?\d+),", open(STATUS_H).read())
    assert [(name, int(value)) for _, name, value in rows] == [(m.name, int(m)) for m in ErrorCode]
    assert len({v for _, _, v in rows}) == len(rows)


@pytest.fixture
def sock_dir():
    d = tempfile.mkdtemp(prefix="mche", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_no_node_is_reported_by_code(sock_dir):
    c = _native.NodeClient(os.path.join(sock_dir, "none.sock"), 500)
    try:
        assert not c.healthy
        assert c.last_error_code in (errno.ENOENT, errno.ECONNREFUSED)
    finally:
        c.close()


def test_a_node_that_does_not_answer_is_a_timeout_by_code(sock_dir):
    path = os.path.join(sock_dir, "mute.sock")
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(path)
    mute.listen(4)  # accepts into the backlog, never answers HELLO
    try:
        c = _native.NodeClient(path, 300)
        assert not c.healthy and c.last_error_code == errno.ETIMEDOUT
        c.close()
    finally:
        mute.close()


def test_notes_carry_their_logging_level(tmp_path):
    engine = _native.NvmeEngine(str(tmp_path / "n.data"), 8 << 20, region_size=1 << 20, io_backend="threads")
    try:
        buf = bytearray(4096)
        addr = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
        engine._inject_write_errors(1)
        assert engine.batch_put(["k"], [addr], [4096]) == [ErrorCode.IO_ERROR]
        notes = engine.take_notes(with_levels=True)
        assert any(level == logging.WARNING and "failed" in line for level, line in notes), notes
        assert all(isinstance(level, int) for level, _ in notes)
    finally:
        engine.close()


# Mooncake's store result codes (kvcache-ai/Mooncake, mooncake-store/include/types.h, enum
# ErrorCode), as far as they matter here: a number our table shares with Mooncake must mean the
# same thing there, because code written against Mooncake's Python API reads our results.
MOONCAKE_CODES = {
    0: "OK", -1: "INTERNAL_ERROR", -10: "BUFFER_OVERFLOW", -100: "SHARD_INDEX_OUT_OF_RANGE",
    -101: "SEGMENT_NOT_FOUND", -102: "SEGMENT_ALREADY_EXISTS", -103: "CLIENT_NOT_FOUND",
    -200: "NO_AVAILABLE_HANDLE", -300: "INVALID_VERSION", -400: "INVALID_KEY", -500: "WRITE_FAIL",
    -600: "INVALID_PARAMS", -601: "ILLEGAL_CLIENT", -700: "INVALID_WRITE", -701: "INVALID_READ",
    -702: "INVALID_REPLICA", -703: "REPLICA_IS_NOT_READY", -704: "OBJECT_NOT_FOUND",
    -705: "OBJECT_ALREADY_EXISTS", -706: "OBJECT_HAS_LEASE", -707: "LEASE_EXPIRED",
    -708: "OBJECT_HAS_REPLICATION_TASK", -709: "OBJECT_NO_REPLICATION_TASK", -710: "REPLICA_NOT_FOUND",
    -711: "REPLICA_ALREADY_EXISTS", -712: "REPLICA_IS_GONE", -713: "REPLICA_NOT_IN_LOCAL_MEMORY",
    -714: "OBJECT_REPLICA_BUSY", -800: "TRANSFER_FAIL", -801: "CHECKSUM_MISMATCH", -900: "RPC_FAIL",
    -901: "RPC_TIMEOUT", -1000: "ETCD_OPERATION_ERROR", -1010: "UNAVAILABLE_IN_CURRENT_STATUS",
    -1011: "UNAVAILABLE_IN_CURRENT_MODE",
}

# What each of our codes means in Mooncake's vocabulary (None: Mooncake has no such result).
COUNTERPARTS = {
    "OK": "OK", "BUFFER_TOO_SMALL": "BUFFER_OVERFLOW", "NO_SPACE": "NO_AVAILABLE_HANDLE",
    "KEY_TOO_LONG": "INVALID_KEY", "INVALID_PARAMS": "INVALID_PARAMS", "VALUE_TOO_LARGE": None,
    "UNREGISTERED_BUFFER": None, "NOT_FOUND": "OBJECT_NOT_FOUND", "IO_ERROR": "TRANSFER_FAIL",
    "NODE_UNAVAILABLE": "RPC_FAIL", "CLOSED": "UNAVAILABLE_IN_CURRENT_STATUS",
    "UNSUPPORTED": "UNAVAILABLE_IN_CURRENT_MODE",
}


def test_every_code_means_in_mooncake_what_it_means_here():
    assert {m.name for m in ErrorCode} == set(COUNTERPARTS)
    by_value = {v: k for k, v in MOONCAKE_CODES.items()}
    for m in ErrorCode:
        want = COUNTERPARTS[m.name]
        if want is None:  # no counterpart: a number Mooncake does not use
            assert int(m) not in MOONCAKE_CODES, f"{m.name} reuses Mooncake's {MOONCAKE_CODES[int(m)]}"
        else:
            assert int(m) == by_value[want], f"{m.name} should be Mooncake's {want} ({by_value[want]})"
        assert ErrorCode.mooncake_name(m) == want


def test_the_readme_table_lists_the_codes_of_the_extension():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    rows = re.findall(r"^\| (-?\d+) \| (\w+) \|", readme, re.M)
    assert [(name, int(v)) for v, name in rows] == [(m.name, int(m)) for m in ErrorCode]


def test_remove_all_takes_mooncakes_force_argument(tmp_path):
    from mooncake_hicache import Store
    with Store.from_config({"tiers": {"nvme": {"path": str(tmp_path / "n.data"), "capacity": "8MiB",
                                               "region_size": "1MiB"}}}) as s:
        assert s.put("k", b"v") == 0
        assert s.remove_all(force=False) == 0 and s.is_exist("k") == 0
        assert s.put("k", b"v") == 0
        assert s.remove_all(force=True) == 0 and s.is_exist("k") == 0
        assert s.remove_all() == 0
