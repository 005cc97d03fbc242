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
