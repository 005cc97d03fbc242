"""Stores of every kind a user can configure, for tests of behaviour that must be the same in
all of them: ``nvme`` (in-process NVMe engine alone), ``tiered`` (in-process DRAM in front of
NVMe) and ``node`` (DRAM + NVMe in a node process, reached over its Unix socket).

``StoreMaker(tmp_path)`` opens them (``make(kind, **settings)``) and, at ``close()``, closes each
store and stops each node it started (the node is detached from the test process, so it has to
be stopped by pid)."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile

from mooncake_hicache import Store

KINDS = ("nvme", "tiered", "node")
MiB = 1 << 20


def config_for(kind: str, data_dir: str, sock_dir: str, *, dram: str = "4MiB", slab: str = "1MiB",
               nvme: str = "32MiB", region: str = "2MiB", data_file: str = "nvme.data", **dram_extra) -> dict:
    nvme_tier = {"path": os.path.join(data_dir, data_file), "capacity": nvme, "region_size": region,
                 "queue_depth": 8}
    if kind == "nvme":
        return {"mode": "in_process", "tiers": {"nvme": nvme_tier}}
    dram_tier = {"capacity": dram, "slab_size": slab, "hugepages": False, **dram_extra}
    config = {"mode": "in_process" if kind == "tiered" else "node",
              "tiers": {"dram": dram_tier, "nvme": nvme_tier}, "metrics": {"port": 0}}
    if kind == "node":
        config["node"] = {"socket": os.path.join(sock_dir, "n.sock"), "timeout_ms": 5000}
    return config


def stop_pid(pid: int) -> None:
    """SIGTERM (a clean stop that seals NVMe), SIGKILL if it does not exit in time."""
    from test_node_store import stop
    try:
        stop(pid)
    except AssertionError:
        os.kill(pid, signal.SIGKILL)


class StoreMaker:
    def __init__(self, tmp_path):
        self.data_dir = str(tmp_path)
        self.sock_dir = tempfile.mkdtemp(prefix="mch", dir="/tmp")  # a socket path holds 107 bytes
        self.stores: list[Store] = []
        self.node_pids: set[int] = set()

    def config(self, kind: str, **settings) -> dict:
        return config_for(kind, self.data_dir, self.sock_dir, **settings)

    def make(self, kind: str, **settings) -> Store:
        store = Store.from_config(self.config(kind, **settings))
        self.stores.append(store)
        if kind == "node":
            self.node_pids.add(store.stats()["node"]["pid"])
        return store

    def reopen(self, store: Store, kind: str, **settings) -> Store:
        """Close `store` (stopping its node, if any) and open the same kind on the same files."""
        if kind == "node":
            self.stop_node(store)
        else:
            store.close()
        return self.make(kind, **settings)

    def stop_node(self, store: Store) -> None:
        """Stop the node serving `store` (SIGTERM: a clean stop that seals NVMe) and close it."""
        pid = store.stats()["node"]["pid"]
        store.close()
        stop_pid(pid)
        self.node_pids.discard(pid)

    def close(self) -> None:
        for store in self.stores:
            try:
                store.close()
            except Exception:
                pass
        for pid in self.node_pids:
            stop_pid(pid)
        shutil.rmtree(self.sock_dir, ignore_errors=True)
