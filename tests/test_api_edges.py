"""The edges of the Python API: keys given in any iterable, a plain string where a list of keys
belongs, keys that are not UTF-8, and calls after close(). Each either works or raises a
StoreError that says what to change; none leaks an internal exception or silently does
nothing."""

from __future__ import annotations

import pytest

from mooncake_hicache import ErrorCode, StoreError
from store_modes import KINDS


@pytest.fixture(params=KINDS)
def store(request, stores):
    return stores.make(request.param)


def test_keys_from_a_generator_are_all_looked_up(store):
    assert store.put("a", b"1") == 0 and store.put("b", b"2") == 0
    assert store.batch_is_exist(k for k in ["a", "nope", "b"]) == [1, 0, 1]
    assert store.batch_is_exist(iter(("b",))) == [1]


def test_a_generator_of_keys_works_with_the_buffer_lists_too(store, scratch):
    buf = scratch(store, 8192)
    buf.write(0, b"x" * 4096)
    assert store.batch_put_from((k for k in ["g0", "g1"]), iter([buf.addr, buf.addr]), (4096 for _ in range(2))) == [0, 0]
    assert store.batch_get_into((k for k in ["g1"]), [buf.addr + 4096], [4096]) == [4096]


def test_a_plain_string_is_not_taken_as_a_list_of_one_letter_keys(store):
    with pytest.raises(StoreError, match=r"list of keys.*\[key\]"):
        store.batch_is_exist("abc")
    with pytest.raises(StoreError, match=r"list of keys"):
        store.batch_is_exist(b"abc")
    assert store.is_exist("a") == 0 and store.is_exist("b") == 0  # nothing was looked up or stored


def test_bytes_keys_that_are_not_utf8_are_keys_like_any_other(store):
    key = b"\xff\xfe page \x80"
    assert store.put(key, b"value") == 0
    assert store.get(key) == b"value"
    assert store.batch_is_exist([key, b"\xff"]) == [1, 0]
    assert store.get_size(key) == 5
    assert store.remove(key) == 0 and store.is_exist(key) == 0


def test_utf8_bytes_and_the_same_str_name_one_key(store):
    assert store.put("clé", b"v") == 0
    assert store.get("clé".encode()) == b"v"


def test_a_str_key_that_cannot_be_utf8_is_a_store_error_naming_it(store):
    with pytest.raises(StoreError, match=r"key 1 .*UTF-8"):
        store.batch_is_exist(["fine", "bad \udcff"])
    with pytest.raises(StoreError, match=r"UTF-8"):
        store.put("\udcff", b"v")
    with pytest.raises(StoreError, match=r"keys must be str or bytes.*int"):
        store.batch_is_exist(["ok", 7])


def test_stats_after_close_is_a_store_error(store):
    assert "nvme" in store.stats()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.stats()
    with pytest.raises(StoreError, match="closed"):
        store.batch_is_exist(["a"])


def test_results_of_a_closed_store_use_codes_not_exceptions_from_the_native_layer(store):
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError):
        store.get_size("a")
    assert ErrorCode.CLOSED < 0
