"""The in-process tier stack (``TieredStore``, or the NVMe engine alone) built from a config,
and the helpers every holder of a native backend shares: its figures as one dict and its notes
logged at the level the C++ side gave them. Used by ``Store`` (in-process mode) and by the node
process (``node.Node``); imports neither. ``Tier`` names the tiers a page can be in, as
``Store.batch_locate`` reports them.
"""

from __future__ import annotations

import json
import logging
import os
from enum import IntEnum

from . import _native
from .config import Config
from .errors import ConfigError, StoreError


class Tier(IntEnum):
    """Where a page is: the codes the C++ tiers answer an existence query with
    (``TieredStore::batch_exists``, the node's ``EXISTS`` reply; in a pool ``PoolClient`` answers
    the cheapest holder's, a remote member's shifted by 2). Larger codes cost more to read. A
    negative code (a bad key) is an ``ErrorCode``, not a tier."""

    ABSENT = 0
    """Not stored: a miss."""
    DRAM = 1
    """In this host's DRAM tier: a get copies it out of the arena."""
    NVME = 2
    """On this host's NVMe tier only: a get reads it from the device (and promotes it to DRAM)."""
    REMOTE_DRAM = 3
    """In a pool (``cluster:``), in another member's DRAM tier only: a get reads it over TCP."""
    REMOTE_NVME = 4
    """In a pool, on another member's NVMe tier only: a get reads it over TCP from the device."""


def open_tiers(config: Config):
    """The in-process tier stack for ``config``: a ``TieredStore`` (DRAM, plus NVMe when
    configured) or, without a DRAM tier, the NVMe engine alone. Raises ConfigError/StoreError."""
    nv, dr = config.tiers.nvme, config.tiers.dram
    if nv is not None:
        os.makedirs(os.path.dirname(os.path.abspath(nv.path)) or ".", exist_ok=True)
    try:
        if dr is None:
            return _native.NvmeEngine(
                path=nv.path, capacity=nv.capacity, region_size=nv.region_size,
                queue_depth=nv.queue_depth, direct_io=nv.direct_io, io_backend=nv.io_backend,
                sync_on_seal=nv.sync_on_seal, reinsertion=nv.reinsertion)
        kwargs = dict(dram_capacity=dr.capacity, slab_size=dr.slab_size, eviction=dr.eviction,
                      hugepages=dr.hugepages, admission=dr.admission, write_through=dr.write_through,
                      keep_keys=dr.keep_keys, clean_reserve=dr.clean_reserve, demote_batch=dr.demote_batch,
                      prefetch_workers=config.prefetch.concurrency)
        if nv is not None:
            kwargs.update(nvme_path=nv.path, nvme_capacity=nv.capacity, nvme_region_size=nv.region_size,
                          nvme_queue_depth=nv.queue_depth, nvme_direct_io=nv.direct_io,
                          nvme_io_backend=nv.io_backend, nvme_sync_on_seal=nv.sync_on_seal,
                          nvme_reinsertion=nv.reinsertion)
        return _native.TieredStore(**kwargs)
    except _native.EngineError as e:
        raise native_error(e) from None


def native_error(e: "_native.EngineError") -> Exception:
    """The package's exception for an EngineError: ConfigError for its 'invalid' kind (a setting
    to change), StoreError otherwise. Decided on the kind, never on the message."""
    kind, message = e.args if len(e.args) == 2 else ("io", str(e))  # (kind code, message)
    return ConfigError("", message) if kind == "invalid" else StoreError(message)


def backend_stats(backend) -> dict:
    """Figures of any backend as ``{"dram": ..., "nvme": ..., "tiering": ..., ...}``."""
    if hasattr(backend, "stats_json"):
        return json.loads(backend.stats_json())
    return {"nvme": backend.stats()}


def log_notes(backend, logger: logging.Logger) -> None:
    """Log the lines the backend queued, each at the level it carries (INFO or WARNING)."""
    for level, line in backend.take_notes(with_levels=True):
        logger.log(level, "%s", line)

