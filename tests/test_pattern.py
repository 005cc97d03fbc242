"""The byte pattern every test checks values with (``conftest.pattern``) catches misplaced data:
each byte depends on (key, offset), so swapped 4 KiB blocks, for keys of any length, and another
key's bytes never compare equal."""

from __future__ import annotations

import pytest

from conftest import pattern

BLOCK = 4096


def swap_blocks(data: bytes, a: int, b: int) -> bytes:
    out = bytearray(data)
    out[a * BLOCK:(a + 1) * BLOCK], out[b * BLOCK:(b + 1) * BLOCK] = \
        data[b * BLOCK:(b + 1) * BLOCK], data[a * BLOCK:(a + 1) * BLOCK]
    return bytes(out)


@pytest.mark.parametrize("key", ["k", "abc"])  # the lengths whose old period (len + 1) divided 4096
def test_two_swapped_4k_blocks_no_longer_compare_equal(key):
    value = pattern(key, 4 * BLOCK)
    assert swap_blocks(value, 1, 2) != value
    assert swap_blocks(value, 0, 3) != value


@pytest.mark.parametrize("key_len", range(1, 9))
def test_every_4k_block_of_a_value_is_distinct(key_len):
    value = pattern("x" * key_len, 64 * BLOCK + 123)
    blocks = [value[i:i + BLOCK] for i in range(0, len(value), BLOCK)]
    assert len(set(blocks)) == len(blocks)


def test_keys_differ_and_shorter_values_are_prefixes():
    assert pattern("a", 10_000) != pattern("b", 10_000)
    assert pattern("a", 10_000)[:4097] == pattern("a", 4097)
    assert len(pattern("a", 5)) == 5 and pattern("a", 0) == b""
