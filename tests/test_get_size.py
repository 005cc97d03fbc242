"""get_size() only looks: it answers from the indexes without reading the page, so asking a size
never promotes the page into DRAM, never evicts another page to make room, and counts no hit or
miss. The same in every kind of store."""

from __future__ import annotations

import pytest

from mooncake_hicache import ErrorCode
from conftest import pattern, wait_demoter_idle
from store_modes import KINDS

PAGE = 256 * 1024
N = 40  # pages put: DRAM (4 MiB) holds 16, the others are on NVMe only


def fill(store, scratch):
    buf = scratch(store, PAGE)
    for i in range(N):
        buf.write(0, pattern(f"p{i}", PAGE))
        assert store.batch_put_from([f"p{i}"], [buf.addr], [PAGE]) == [0]
    wait_demoter_idle(store)  # its writes would move the figures


def figures(store) -> dict:
    st = store.stats()
    out = {f"nvme.{k}": st["nvme"][k] for k in ("hits", "misses", "gets", "entries")}
    for section in ("dram", "tiering"):
        for k, v in st.get(section, {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{section}.{k}"] = v
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_get_size_changes_no_figure_and_moves_no_page(stores, scratch, kind):
    store = stores.make(kind)
    fill(store, scratch)
    before = figures(store)
    on_nvme_only, in_dram = "p0", f"p{N - 1}"
    assert store.get_size(on_nvme_only) == PAGE
    assert store.get_size(in_dram) == PAGE
    assert store.get_size("absent") == ErrorCode.NOT_FOUND
    after = figures(store)
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not changed, f"get_size changed {changed}"


@pytest.mark.parametrize("kind", ["tiered", "node"])
def test_a_page_that_get_size_looked_at_is_still_read_from_nvme(stores, scratch, kind):
    store = stores.make(kind)
    fill(store, scratch)
    assert store.get_size("p0") == PAGE
    promoted = store.stats()["tiering"]["promoted"]
    assert store.get("p0") == pattern("p0", PAGE)  # the first read promotes it, not get_size
    assert store.stats()["tiering"]["promoted"] == promoted + 1
