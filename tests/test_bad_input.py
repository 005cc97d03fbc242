"""Bad input gets a clear error (naming what to change) and loses nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from mooncake_hicache import ConfigError, ErrorCode, Store, StoreError
from conftest import MiB, nvme_config, pattern


def test_unwritable_path_is_a_config_error_naming_the_field():
    with pytest.raises(ConfigError, match=r"tiers\.nvme\.path"):
        Store.from_config(nvme_config("/proc/self/nope/nvme.data"))


def test_capacity_smaller_than_two_regions_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"tiers\.nvme\.capacity.*region"):
        Store.from_config(nvme_config(tmp_path / "d", capacity="4MiB", region_size="4MiB"))


def test_value_larger_than_a_region_is_refused_per_key(open_store, buffers):
    store = open_store(region_size="1MiB", capacity="8MiB")
    b = buffers(2 * MiB)
    store.register_buffer(b.addr, b.size)
    res = store.batch_put_from(["big", "ok"], [b.addr, b.addr], [2 * MiB, 4096])
    assert res == [ErrorCode.VALUE_TOO_LARGE, 0]
    assert store.is_exist("ok") == 1 and store.is_exist("big") == 0


def test_empty_and_too_long_keys_get_their_codes(open_store, buffers):
    store = open_store()
    b = buffers(4096)
    store.register_buffer(b.addr, b.size)
    long_key = "k" * (Store.MAX_KEY_LEN + 1)
    assert store.batch_put_from(["", long_key, "fine"], [b.addr] * 3, [4096] * 3) == [
        ErrorCode.INVALID_PARAMS, ErrorCode.KEY_TOO_LONG, 0]
    assert store.batch_is_exist(["", long_key, "fine"]) == [ErrorCode.INVALID_PARAMS, ErrorCode.KEY_TOO_LONG, 1]
    assert store.put("k" * Store.MAX_KEY_LEN, b"max") == 0


def test_mismatched_list_lengths_raise_store_error(open_store, buffers):
    store = open_store()
    b = buffers(4096)
    store.register_buffer(b.addr, b.size)
    with pytest.raises(StoreError, match="keys"):
        store.batch_put_from(["a", "b"], [b.addr], [4096, 4096])
    with pytest.raises(StoreError, match="keys"):
        store.batch_get_into(["a"], [b.addr], [])
    with pytest.raises(StoreError, match="size"):
        store.batch_put_from_multi_buffers(["a"], [[b.addr, b.addr]], [[4096]])


def test_null_and_unregistered_pointers_are_refused_per_key(open_store, buffers):
    store = open_store()
    reg, other = buffers(8192), buffers(8192)
    store.register_buffer(reg.addr, reg.size)
    res = store.batch_put_from(["null", "unreg", "overrun", "ok"],
                               [0, other.addr, reg.addr + 4096, reg.addr], [4096, 4096, 8192, 4096])
    assert res == [ErrorCode.INVALID_PARAMS, ErrorCode.UNREGISTERED_BUFFER, ErrorCode.UNREGISTERED_BUFFER, 0]
    assert store.batch_get_into(["ok"], [other.addr], [4096]) == [ErrorCode.UNREGISTERED_BUFFER]
    assert store.unregister_buffer(reg.addr) == 0
    assert store.batch_get_into(["ok"], [reg.addr], [4096]) == [ErrorCode.UNREGISTERED_BUFFER]
    with pytest.raises(StoreError):
        store.register_buffer(0, 4096)


def test_calls_after_close_raise_and_close_is_idempotent(open_store):
    store = open_store()
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get("x")


def test_second_process_opening_the_same_file_is_refused(tmp_path):
    cfg = nvme_config(tmp_path / "shared.data")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from mooncake_hicache import Store
        s = Store.from_config({cfg!r})
        s.put("mine", b"kept")
        print("ready", flush=True)
        sys.stdin.read()
        s.close()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreError, match="in use by another"):
            Store.from_config(cfg)
    finally:
        holder.communicate("", timeout=30)
    assert holder.returncode == 0
    with Store.from_config(cfg) as s:  # nothing was lost by the refused open
        assert s.get("mine") == b"kept"


def test_changed_geometry_is_refused_with_the_fix(tmp_path):
    Store.from_config(nvme_config(tmp_path / "g.data", capacity="64MiB")).close()
    with pytest.raises(ConfigError, match="capacity"):
        Store.from_config(nvme_config(tmp_path / "g.data", capacity="128MiB"))
    with pytest.raises(ConfigError, match="region_size"):
        Store.from_config(nvme_config(tmp_path / "g.data", region_size="8MiB"))


def test_device_write_failure_fails_the_put_not_the_process(open_store, buffers):
    # The failure is injected at completion time (a real EIO needs a failing disk); the real
    # write still happens, which is the worst case: bytes on disk that must never be served.
    store = open_store()
    b = buffers(65536)
    store.register_buffer(b.addr, b.size)
    b.write(0, pattern("x", 65536))
    store._backend._inject_write_errors(1)
    assert store.batch_put_from(["bad"], [b.addr], [65536]) == [ErrorCode.IO_ERROR]
    assert store.batch_put_from(["good"], [b.addr], [65536]) == [0]
    assert store.is_exist("bad") == 0
    assert store.get("good") == pattern("x", 65536)
    assert store.stats()["nvme"]["io_errors"] == 1
