"""Shared fixtures: real stores on real files (under pytest's tmp_path, on a disk file system)
and page-aligned buffers with known content."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import mmap
import os
from pathlib import Path

import numpy as np
import pytest

from mooncake_hicache import Store
from mooncake_hicache._native import HAVE_URING
from skip_reporting import ModuleReportingSkippedTests

MiB = 1 << 20

BACKENDS = ["threads"] + (["io_uring"] if HAVE_URING else [])


class Buffer:
    """A page-aligned anonymous mapping with its address (keeps the mapping alive)."""

    def __init__(self, size: int):
        self.size = size
        self.mm = mmap.mmap(-1, max(size, 1))
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.mm))

    def write(self, offset: int, data: bytes) -> None:
        self.mm[offset:offset + len(data)] = data

    def read(self, offset: int, n: int) -> bytes:
        return bytes(self.mm[offset:offset + n])

    def close(self) -> None:
        try:
            self.mm.close()
        except BufferError:
            pass


@functools.lru_cache(maxsize=64)
def pattern(key: str, n: int) -> bytes:
    """Deterministic bytes for a key: every value is checkable without keeping it around.

    Every 8-byte word is a hash of (key, word offset), so no two 4 KiB blocks of a value, and no
    two keys, share content: a block swapped, shifted or taken from another key is caught.
    ``pattern(key, m)`` is a prefix of ``pattern(key, n)`` for m < n. Cached per (key, n)."""
    if n <= 0:
        return b""
    seed = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    words = np.arange((n + 7) // 8, dtype=np.uint64)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as the mix intends
        z = words * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed)   # splitmix64 of (seed, offset)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z.astype("<u8").tobytes()[:n]


def pytest_pycollect_makemodule(module_path, parent):
    """A module skipped at import (``pytest.importorskip``: the SGLang tests without sglang)
    reports each of its tests as skipped, with the reason, instead of vanishing from the counts."""
    return ModuleReportingSkippedTests.from_parent(parent, path=module_path)


def page_kind_this_machine_provides(capacity: int) -> str:
    """What a hugepages arena of ``capacity`` bytes gets here: 2 MiB hugetlb pages when the pool
    has enough free ones, else shmem THP when the kernel gives shmem huge pages to an madvise,
    else 4 KiB pages."""
    pool = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")
    try:
        free = int((pool / "free_hugepages").read_text()) - int((pool / "resv_hugepages").read_text())
    except OSError:  # no 2 MiB pool in sysfs: /proc/meminfo, if 2 MiB is the default size
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        free = int(info["HugePages_Free"]) - int(info["HugePages_Rsvd"]) \
            if info.get("Hugepagesize", "").split() == ["2048", "kB"] else 0
    if free * 2 * MiB >= capacity:
        return "hugetlb"
    try:
        shmem = Path("/sys/kernel/mm/transparent_hugepage/shmem_enabled").read_text()
    except OSError:
        return "4k"  # a kernel without THP
    mode = shmem[shmem.index("[") + 1:shmem.index("]")]
    return "thp" if mode in ("always", "within_size", "advise", "force") else "4k"


def nvme_config(path, **overrides) -> dict:
    cfg = {"path": str(path), "capacity": "64MiB", "region_size": "4MiB", "queue_depth": 8,
           "direct_io": True, "io_backend": "auto"}
    cfg.update(overrides)
    return {"tiers": {"nvme": cfg}}


def _closed_at_teardown(make):
    """Fixture body: yields a function that returns make(*args) and remembers it; every object it
    made is closed, in order, at teardown."""
    made = []

    def _make(*args, **kwargs):
        obj = make(*args, **kwargs)
        made.append(obj)
        return obj

    yield _make
    for obj in made:
        obj.close()


@pytest.fixture
def store_from_config():
    """store_from_config(config) -> Store.from_config(config); closed at teardown."""
    yield from _closed_at_teardown(Store.from_config)


@pytest.fixture
def open_store(tmp_path, store_from_config):
    """open_store(**nvme_overrides) -> Store on tmp_path/nvme.data; closed at teardown."""

    def _open(**overrides):
        overrides.setdefault("path", tmp_path / "nvme.data")
        return store_from_config(nvme_config(**overrides))

    return _open


@pytest.fixture
def buffers():
    """buffers(size) -> a Buffer of `size` bytes; closed at teardown."""
    yield from _closed_at_teardown(Buffer)


@pytest.fixture
def scratch(buffers):
    """scratch(store, size) -> a Buffer of `size` bytes registered with `store`."""

    def _make(store, size):
        b = buffers(size)
        store.register_buffer(b.addr, b.size)
        return b

    return _make


@pytest.fixture
def stores(tmp_path):
    """stores.make(kind, **settings) -> a Store of kind nvme | tiered | node (store_modes.py);
    every store is closed and every node it started is stopped at teardown."""
    from store_modes import StoreMaker
    maker = StoreMaker(tmp_path)
    yield maker
    maker.close()


def wait_demoter_idle(store, timeout: float = 10.0) -> None:
    """Wait until the store's background demoter has nothing to do (its clean reserve is full),
    so figures taken next are not moved by its writes. No-op for a store without a reserve."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = store.stats().get("tiering") or {}
        if t.get("clean_bytes", 0) >= t.get("clean_target_bytes", 0):
            return
        time.sleep(0.01)
    raise AssertionError("the demoter did not fill its clean reserve in time")
