"""remove_prefix(prefix) removes exactly the keys that start with prefix (a namespace: one
tenant's pages), from every tier, for good (also after a restart), and says how many it removed.
Keys of other namespaces stay readable. The NVMe tier indexes digests only, so the keys are read
back from the record headers."""

from __future__ import annotations

import pytest

from mooncake_hicache import ErrorCode, StoreError
from conftest import pattern
from store_modes import KINDS

PAGE = 128 * 1024  # DRAM holds 32 of them: most of the pages below are on NVMe only


def fill(store, prefixes=("tenant-a/", "tenant-b/", "tenant-ab/"), n=30):
    for i in range(n):
        for p in prefixes:
            assert store.put(f"{p}{i}", pattern(f"{p}{i}", PAGE)) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_remove_prefix_removes_exactly_one_namespace_on_every_tier(stores, kind):
    store = stores.make(kind, write_through=True) if kind != "nvme" else stores.make(kind)
    fill(store)
    a = [f"tenant-a/{i}" for i in range(30)]
    others = [f"tenant-b/{i}" for i in range(30)] + [f"tenant-ab/{i}" for i in range(30)]
    assert store.remove_prefix("tenant-a/") == 30
    assert store.batch_is_exist(a) == [0] * 30
    assert store.get(a[-1]) == b"" and store.get(a[0]) == b""
    assert store.batch_is_exist(others) == [1] * 60
    for k in others[::7]:
        assert store.get(k) == pattern(k, PAGE)
    assert store.remove_prefix("tenant-a/") == 0
    assert store.remove_prefix("nobody/") == 0
    store = stores.reopen(store, kind)
    assert store.batch_is_exist(a) == [0] * 30, "removed pages came back after a restart"
    assert store.batch_is_exist(others) == [1] * 60
    assert store.remove_prefix(b"tenant-b/") == 30 and store.batch_is_exist(others[30:]) == [1] * 30


@pytest.mark.parametrize("kind", ["tiered", "node"])
def test_a_page_in_both_tiers_counts_once(stores, kind):
    store = stores.make(kind, write_through=True)
    assert store.put("ns/x", b"x" * 5000) == 0  # in DRAM, and written through to NVMe
    assert store.stats()["nvme"]["entries"] == 1 and store.stats()["dram"]["entries"] == 1
    assert store.remove_prefix("ns/") == 1


def test_the_prefix_is_checked(stores):
    store = stores.make("tiered")
    with pytest.raises(StoreError, match="non-empty"):
        store.remove_prefix("")
    with pytest.raises(StoreError, match="longer than a key"):
        store.remove_prefix("p" * (store.MAX_KEY_LEN + 1))
    with pytest.raises(StoreError, match="str or bytes"):
        store.remove_prefix(7)


def test_a_dram_only_store_needs_its_keys_to_remove_by_prefix(tmp_path, store_from_config):
    dram = {"capacity": "4MiB", "slab_size": "1MiB", "hugepages": False}
    store = store_from_config({"mode": "in_process", "tiers": {"dram": dram}})
    assert store.put("a/1", b"v") == 0
    assert store.remove_prefix("a/") == ErrorCode.UNSUPPORTED
    assert store.is_exist("a/1") == 1  # nothing was removed
    keeping = store_from_config({"mode": "in_process", "tiers": {"dram": {**dram, "keep_keys": True}}})
    assert keeping.put("a/1", b"v") == 0 and keeping.put("b/1", b"v") == 0
    assert keeping.remove_prefix("a/") == 1
    assert keeping.batch_is_exist(["a/1", "b/1"]) == [0, 1]
