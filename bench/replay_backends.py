"""The systems the trace replay drives, behind one small interface, plus the bandwidth calibration.

Every backend sees what SGLang's HiCache would send its storage backend, batch by batch
(at most 128 pages per call), from one host buffer of 128 page slots:

* ``exists_prefix(keys) -> int``  leading keys present (``batch_exists`` semantics);
* ``get(keys, slots) -> (leading pages read, {tier: pages})``;
* ``put(keys, slots, depths) -> pages stored``;
* ``counters() -> {"read": {tier: bytes}, "written": {tier: bytes}}`` and ``close()``.

Backends:

* :class:`StoreBackend` -- our ``mooncake_hicache.Store`` in ``in_process`` mode (DRAM only,
  DRAM + NVMe, or NVMe only). Hits are attributed to a tier from ``stats()["tiering"]``.
* :class:`PyLruBackend` -- a plain LRU of pages in one DRAM arena (``OrderedDict`` + memmove):
  the DRAM-only cache a user gets without a capacity tier (SGLang's host-memory tier works so).
* :class:`HiCacheFileBackend` -- SGLang's real ``HiCacheFile`` (``sglang.srt.mem_cache.
  hicache_storage``), one file per page, driven through its ``batch_exists`` / ``batch_get`` /
  ``batch_set`` with torch CPU tensors over the same host buffer, capped with its own LRU
  evictor (``extra_config.max_size``, ``eviction_ratio``).
* :class:`HostTierFront` -- SGLang's host memory tier in front of an L3 backend: a
  :class:`PyLruBackend` of our DRAM tier's page count, written through (every page stored goes
  to both), consulted first; pages served by the L3 backend enter it, as SGLang's prefetch
  lands them in host memory. The ``hicache-file`` baseline is this front over HiCacheFile.

Every page put carries a 16-byte stamp derived from its key at its start; every page read back
is checked against it (``verify_errors``), so a backend that returns wrong bytes is caught.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import time
from collections import OrderedDict
from typing import Optional, Sequence

import numpy as np

import _bench_common as bc
from replay_model import BATCH_PAGES, GRANULE, NVME_RECORD_HEADER, MiB, round_up

STAMP = 16


class HostPool:
    """``slots`` page slots of ``page_bytes`` in page-aligned memory: the host KV pool the store
    copies into and out of. Filled with random bytes once; stamps mark which key a slot holds."""

    def __init__(self, page_bytes: int, slots: int = BATCH_PAGES, seed: int = 1):
        self.page_bytes, self.slots = page_bytes, slots
        self.buf = bc.AlignedBuffer(page_bytes * slots)
        self.addr = self.buf.addr
        self.arr = np.frombuffer(self.buf.mm, dtype=np.uint8)
        self.arr[:] = np.random.default_rng(seed).integers(0, 256, self.arr.size, dtype=np.uint8)
        self.mv = self.buf.view
        self._torch = None

    def ptr(self, slot: int) -> int:
        return self.addr + slot * self.page_bytes

    def stamp(self, slot: int, key: str) -> None:
        off = slot * self.page_bytes
        self.mv[off:off + STAMP] = bytes.fromhex(key[:2 * STAMP])

    def clear_stamp(self, slot: int) -> None:
        off = slot * self.page_bytes
        self.mv[off:off + STAMP] = bytes(STAMP)

    def check(self, slot: int, key: str) -> bool:
        off = slot * self.page_bytes
        return self.mv[off:off + STAMP] == bytes.fromhex(key[:2 * STAMP])

    def torch_slots(self):
        """One uint8 torch tensor per slot, viewing this memory (for HiCacheFile)."""
        if self._torch is None:
            import torch
            pool = torch.from_numpy(self.arr).view(self.slots, self.page_bytes)
            self._torch = [pool[i] for i in range(self.slots)]
        return self._torch

    def close(self) -> None:
        self._torch = None
        del self.arr
        self.mv = None
        self.buf.close()


# ---- backends -----------------------------------------------------------------------------------

class StoreBackend:
    """Our Store, in-process. ``dram``/``nvme`` are the tier sections of the config (or None)."""

    def __init__(self, pool: HostPool, dram: Optional[dict], nvme: Optional[dict]):
        from mooncake_hicache import Store
        tiers = {}
        if dram is not None:
            tiers["dram"] = dram
        if nvme is not None:
            tiers["nvme"] = nvme
        self.config = {"mode": "in_process", "tiers": tiers, "logging": {"level": "WARNING"}}
        self.store = Store.from_config(self.config)
        self.pool = pool
        self.page_bytes = pool.page_bytes
        self.store.register_buffer(pool.addr, pool.page_bytes * pool.slots)
        self.tiers = tuple(t for t in ("dram", "nvme") if t in tiers)
        self._tiered = dram is not None
        self._sizes = [pool.page_bytes] * pool.slots

    def _hit_counts(self) -> tuple:
        st = self.store.stats()
        if self._tiered:
            t = st["tiering"]
            return t["dram_hits"], t["nvme_hits"]
        return 0, st["nvme"]["hits"]

    def exists_prefix(self, keys: Sequence[str]) -> int:
        n = 0
        for r in self.store.batch_is_exist(keys):
            if r != 1:
                break
            n += 1
        return n

    def get(self, keys: Sequence[str], slots: Sequence[int]) -> tuple:
        d0, n0 = self._hit_counts()
        ptrs, sizes = [self.pool.ptr(s) for s in slots], self._sizes[:len(keys)]
        t0 = time.perf_counter()
        codes = self.store.batch_get_into(keys, ptrs, sizes)
        self.last_call_s = time.perf_counter() - t0   # the data call only, not the stats lookups
        d1, n1 = self._hit_counts()
        ok = 0
        for c in codes:
            if c != self.page_bytes:
                break
            ok += 1
        return ok, {"dram": d1 - d0, "nvme": n1 - n0}

    def put(self, keys: Sequence[str], slots: Sequence[int], depths: Sequence[int]) -> int:
        codes = self.store.batch_put_from(keys, [self.pool.ptr(s) for s in slots],
                                          self._sizes[:len(keys)], depths=depths)
        return sum(1 for c in codes if c == 0)

    def counters(self) -> dict:
        st = self.store.stats()
        out = {"read": {}, "written": {}, "stats": st}
        if self._tiered:
            t = st["tiering"]
            out["read"]["dram"] = t["dram_hits"] * self.page_bytes
            out["written"]["dram"] = (t["puts"] + t["promoted"]) * self.page_bytes
        if "nvme" in st:
            out["read"]["nvme"] = st["nvme"]["get_bytes"]
            out["written"]["nvme"] = st["nvme"]["put_bytes"]
        return out

    def close(self) -> None:
        self.store.close()


class PyLruBackend:
    """A plain LRU page cache in one DRAM arena: ``capacity_pages`` slots of ``page_bytes``."""

    tiers = ("dram",)

    def __init__(self, pool: HostPool, capacity_pages: int):
        self.pool, self.page_bytes = pool, pool.page_bytes
        self.capacity = capacity_pages
        self.arena = bc.AlignedBuffer(max(1, capacity_pages) * self.page_bytes)
        self.index: OrderedDict = OrderedDict()   # key -> arena slot, oldest first
        self.free = list(range(capacity_pages - 1, -1, -1))
        self.reads = self.writes = 0

    def exists_prefix(self, keys: Sequence[str]) -> int:
        n = 0
        for k in keys:
            if k not in self.index:
                break
            n += 1
        return n

    def get(self, keys: Sequence[str], slots: Sequence[int]) -> tuple:
        ok = 0
        pb, base, index = self.page_bytes, self.arena.addr, self.index
        for k, s in zip(keys, slots):
            a = index.get(k)
            if a is None:
                break
            index.move_to_end(k)
            ctypes.memmove(self.pool.ptr(s), base + a * pb, pb)
            ok += 1
        self.reads += ok
        return ok, {"dram": ok}

    def put(self, keys: Sequence[str], slots: Sequence[int], depths: Sequence[int]) -> int:
        pb, base, index = self.page_bytes, self.arena.addr, self.index
        n = 0
        for k, s in zip(keys, slots):
            if self.capacity <= 0:
                break
            a = index.get(k)
            if a is None:
                if self.free:
                    a = self.free.pop()
                else:
                    _, a = index.popitem(last=False)
                index[k] = a
            else:
                index.move_to_end(k)
            ctypes.memmove(base + a * pb, self.pool.ptr(s), pb)
            n += 1
        self.writes += n
        return n

    def counters(self) -> dict:
        return {"read": {"dram": self.reads * self.page_bytes},
                "written": {"dram": self.writes * self.page_bytes},
                "stats": {"entries": len(self.index), "capacity_pages": self.capacity}}

    def close(self) -> None:
        self.index.clear()
        self.arena.close()


def sglang_available() -> Optional[str]:
    """None if SGLang's HiCacheFile can be imported, else why not."""
    try:
        import sglang.srt.mem_cache.hicache_storage  # noqa: F401
        import torch  # noqa: F401
        return None
    except Exception as e:  # ImportError, or a broken install
        return f"{type(e).__name__}: {e}"


class HiCacheFileBackend:
    """SGLang's HiCacheFile (the real class), one file per page under ``directory``, capped at
    ``max_bytes`` by its own LRU file evictor, which evicts down to ``eviction_ratio`` of the cap
    when a write would exceed it (SGLang's default ratio 0.9 when None)."""

    tiers = ("file",)

    def __init__(self, pool: HostPool, directory: str, max_bytes: int, eviction_ratio: Optional[float] = None):
        os.environ.pop("SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR", None)  # would override ours
        for name in ("sglang", "sglang.srt.mem_cache.hicache_storage",
                     "sglang.srt.mem_cache.storage.file.lru_file_evictor"):
            logging.getLogger(name).setLevel(logging.ERROR)   # it warns on every miss
        from sglang.srt.mem_cache.hicache_storage import HiCacheFile, HiCacheStorageConfig
        cfg = HiCacheStorageConfig(
            tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
            is_mla_model=False, enable_storage_metrics=False, is_page_first_layout=True,
            model_name="replay", extra_config={"file_storage_path": directory, "max_size": int(max_bytes),
                                               **({"eviction_ratio": eviction_ratio} if eviction_ratio else {})})
        self.directory = directory
        self.h = HiCacheFile(cfg)
        self.pool, self.page_bytes = pool, pool.page_bytes
        self.tensors = pool.torch_slots()
        self.reads = self.writes = 0

    def exists_prefix(self, keys: Sequence[str]) -> int:
        return int(self.h.batch_exists(list(keys)))

    def get(self, keys: Sequence[str], slots: Sequence[int]) -> tuple:
        res = self.h.batch_get(list(keys), [self.tensors[s] for s in slots])
        ok = 0
        for r in res:
            if r is None:
                break
            ok += 1
        self.reads += ok
        return ok, {"file": ok}

    def put(self, keys: Sequence[str], slots: Sequence[int], depths: Sequence[int]) -> int:
        if self.h.batch_set(list(keys), [self.tensors[s] for s in slots]):
            self.writes += len(keys)
            return len(keys)
        # batch_set stops at the first refused page; count what landed
        n = self.exists_prefix(keys)
        self.writes += n
        return n

    def counters(self) -> dict:
        ev = self.h._evictor
        return {"read": {"file": self.reads * self.page_bytes},
                "written": {"file": self.writes * self.page_bytes},
                "stats": {"files": len(ev._lru), "bytes": ev._total_bytes, "max_bytes": ev.max_size_bytes}}

    def drop_page_cache(self) -> None:
        """Write back and drop the page cache of this backend's files (posix_fadvise DONTNEED, no
        root needed), so the next reads come from the device."""
        for name in os.listdir(self.directory):
            if not name.endswith(".bin"):
                continue
            try:
                fd = os.open(os.path.join(self.directory, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def close(self) -> None:
        self.tensors = None
        shutil.rmtree(self.directory, ignore_errors=True)


class HostTierFront:
    """SGLang's host memory tier (a DRAM LRU of ``front``'s page count) in front of an L3
    backend ``back``, inclusive and written through: ``put`` stores every page in both; ``get``
    serves the leading pages from the front, the rest from ``back``, and the pages ``back``
    served enter the front (SGLang's prefetch lands them in host memory). ``last_call_s`` is the
    time of the two data reads alone: the copy into the front stands for a prefetch SGLang would
    land in host memory directly, so it is not charged to the get."""

    def __init__(self, front: PyLruBackend, back):
        self.front, self.back = front, back
        self.tiers = ("dram",) + tuple(back.tiers)

    def exists_prefix(self, keys: Sequence[str]) -> int:
        k = self.front.exists_prefix(keys)
        return k if k == len(keys) else k + self.back.exists_prefix(keys[k:])

    def get(self, keys: Sequence[str], slots: Sequence[int]) -> tuple:
        t0 = time.perf_counter()
        ok, _ = self.front.get(keys, slots)
        got = {self.tiers[1]: 0}
        if ok < len(keys):
            n, got = self.back.get(keys[ok:], slots[ok:])
            self.last_call_s = time.perf_counter() - t0
            self.front.put(keys[ok:ok + n], slots[ok:ok + n], [])
            return ok + n, {"dram": ok, **got}
        self.last_call_s = time.perf_counter() - t0
        return ok, {"dram": ok, **got}

    def put(self, keys: Sequence[str], slots: Sequence[int], depths: Sequence[int]) -> int:
        self.front.put(keys, slots, depths)
        return self.back.put(keys, slots, depths)

    def counters(self) -> dict:
        f, b = self.front.counters(), self.back.counters()
        return {"read": {**f["read"], **b["read"]}, "written": {**f["written"], **b["written"]},
                "stats": {"host_tier": f["stats"], self.tiers[1]: b["stats"]}}

    def drop_page_cache(self) -> None:
        self.back.drop_page_cache()

    def close(self) -> None:
        self.front.close()
        self.back.close()


# ---- tier sizing ---------------------------------------------------------------------------------

DRAM_SLAB = 32 * MiB


def dram_slots(capacity: int, page_bytes: int, slab: int = DRAM_SLAB) -> int:
    """Pages our DRAM tier holds: whole slabs, each cut into page-sized slots."""
    return (capacity // slab) * (slab // round_up(page_bytes, GRANULE))


def dram_capacity_for(pages: int, page_bytes: int, slab: int = DRAM_SLAB) -> int:
    """Smallest slab-multiple DRAM capacity that holds at least ``pages`` pages."""
    per_slab = slab // round_up(page_bytes, GRANULE)
    return max(1, -(-pages // per_slab)) * slab


def nvme_pages_per_region(page_bytes: int, region: int) -> int:
    """Records (4 KiB header + value) of ``page_bytes`` one NVMe region holds."""
    return max(1, (region - 64 * 1024) // (NVME_RECORD_HEADER + round_up(page_bytes, GRANULE)))


def nvme_capacity_for(pages: int, page_bytes: int, region: int) -> int:
    """NVMe capacity holding ``pages`` records (4 KiB header + value) in whole regions, at least
    four regions (one is kept free for reclaim)."""
    return max(4, -(-pages // nvme_pages_per_region(page_bytes, region))) * region


# ---- calibration: tier bandwidth at the real page size ------------------------------------------

def timed_get(backend, keys, slots):
    """``backend.get`` and the seconds spent in its data call (a backend that does bookkeeping
    around the call, such as reading tier counters, reports the call alone in ``last_call_s``)."""
    backend.last_call_s = None
    t = time.perf_counter()
    r = backend.get(keys, slots)
    dt = time.perf_counter() - t
    return (backend.last_call_s if backend.last_call_s is not None else dt), r


def _put_all(backend, pool: HostPool, keys: Sequence[str]) -> None:
    for b in range(0, len(keys), pool.slots):
        ks = keys[b:b + pool.slots]
        backend.put(ks, range(len(ks)), list(range(b, b + len(ks))))


def _read_all(backend, pool: HostPool, keys: Sequence[str], tier: str, passes: int = 1) -> Optional[float]:
    """Best GB/s over ``passes`` reads of ``keys`` (pages counted from ``tier`` only)."""
    best = None
    for _ in range(passes):
        t, pages = 0.0, 0
        for b in range(0, len(keys), pool.slots):
            ks = keys[b:b + pool.slots]
            dt, (ok, by_tier) = timed_get(backend, ks, range(len(ks)))
            t += dt
            pages += by_tier.get(tier, ok)
        if t > 0 and pages:
            bw = pages * pool.page_bytes / t / 1e9
            best = bw if best is None else max(best, bw)
    return best


def _calibrate_store(kind: str, pool: HostPool, keys: list, workdir: str) -> dict:
    page_bytes, n = pool.page_bytes, len(keys)
    region = max(64 * MiB, round_up(4 * (page_bytes + NVME_RECORD_HEADER), MiB))
    slab = max(DRAM_SLAB, round_up(page_bytes, GRANULE) * 4)
    dram_cap = dram_capacity_for(n, page_bytes, slab)
    slots = dram_slots(dram_cap, page_bytes, slab)
    nv = {"path": os.path.join(workdir, "calib-nvme.data"),
          "capacity": nvme_capacity_for(3 * (n + slots), page_bytes, region), "region_size": region}
    dr = {"capacity": dram_cap, "slab_size": slab}
    b = StoreBackend(pool, None if kind == "store-nvme" else dr, nv if kind != "store-dram" else None)
    out = {}
    try:
        _put_all(b, pool, keys)
        if kind != "store-nvme":
            out["dram"] = _read_all(b, pool, keys, "dram", passes=3)
        if kind == "store-tiered":
            _put_all(b, pool, [f"calib-b-{i:08d}" for i in range(slots)])   # pushes all of A to NVMe
        if kind != "store-dram":
            out["nvme"] = _read_all(b, pool, keys, "nvme")
    finally:
        b.close()
        try:
            os.remove(nv["path"])
        except FileNotFoundError:
            pass
    return out


def _calibrate_lru(pool: HostPool, keys: list) -> dict:
    b = PyLruBackend(pool, len(keys))
    try:
        _put_all(b, pool, keys)
        return {"dram": _read_all(b, pool, keys, "dram", passes=3)}
    finally:
        b.close()


def _calibrate_file(pool: HostPool, keys: list, workdir: str) -> dict:
    b = HiCacheFileBackend(pool, os.path.join(workdir, "calib-file"), 0)
    try:
        _put_all(b, pool, keys)
        b.drop_page_cache()
        return {"file": _read_all(b, pool, keys, "file")}
    finally:
        b.close()


def calibrate(kind: str, page_bytes: int, workdir: str, target_bytes: int = 128 * MiB) -> dict:
    """GB/s of a read from each tier of backend ``kind`` (``store-dram``, ``store-tiered``,
    ``store-nvme``, ``lru``, ``file``) for pages of ``page_bytes`` (the model's real page size),
    read in 128-page batches into a host buffer. ``store-tiered`` reports DRAM and NVMe: NVMe
    hits are read after the pages were pushed out of DRAM (so each read also promotes, and the
    promotion demotes another page, as in the replay). ``file`` reports its host-tier front (the
    DRAM LRU) and HiCacheFile, whose files are dropped from the page cache first, so its figure
    is a read from the device like our O_DIRECT NVMe tier's."""
    n = max(32, -(-target_bytes // page_bytes))
    pool = HostPool(page_bytes, slots=min(n, BATCH_PAGES), seed=7)
    keys = [f"calib-a-{i:08d}" for i in range(n)]
    try:
        if kind in ("store-dram", "store-tiered", "store-nvme"):
            return _calibrate_store(kind, pool, keys, workdir)
        if kind == "lru":
            return _calibrate_lru(pool, keys)
        if kind == "file":
            return {**_calibrate_lru(pool, keys), **_calibrate_file(pool, keys, workdir)}
        raise ValueError(kind)
    finally:
        pool.close()
