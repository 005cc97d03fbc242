"""Three-node demo of the pooled tier (``bash scripts/demo.sh cluster``).

Starts three cluster members on this machine (each a ``mooncake-hicache node`` process with its
own Unix socket, NVMe file and TCP port on 127.0.0.1, static membership, a shared secret), then:

1. a rank of node-a writes KV pages; they land on all three nodes by weighted rendezvous hashing;
2. a rank of node-b reads every page back (one request per node per batch) and checks each byte;
3. node-c is killed: node-b's reads of its pages miss within the timeout, the others still hit;
4. node-c restarts and serves its pages again from its NVMe file.

Prints a table per step and ``mooncake-hicache cluster status``. Timings taken on a shared or
busy machine are not benchmarks (bench/ has those). Everything lives in a temporary directory that
is removed at the end; every wait is bounded.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import hashlib
import mmap
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import yaml

from mooncake_hicache import Store
from mooncake_hicache.cluster.status import cluster_status
from mooncake_hicache.config import load_config

IDS = ("node-a", "node-b", "node-c")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def content(key: str, n: int) -> bytes:
    seed = hashlib.sha256(key.encode()).digest()
    return (seed * (n // len(seed) + 1))[:n]


class Demo:
    def __init__(self, root: str, page: int, pages: int):
        self.root, self.page, self.pages = root, page, pages
        secret = os.path.join(root, "cluster.secret")
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, base64.b64encode(os.urandom(32)) + b"\n")
        os.close(fd)
        ports = {i: free_port() for i in IDS}
        members = [{"id": i, "host": "127.0.0.1", "port": ports[i]} for i in IDS]
        self.configs, self.procs = {}, {}
        for i in IDS:
            d = os.path.join(root, i)
            os.makedirs(d)
            self.configs[i] = os.path.join(d, "node.yaml")
            with open(self.configs[i], "w") as f:
                yaml.safe_dump({
                    "mode": "node",
                    "tiers": {"dram": {"capacity": "256MiB", "slab_size": "4MiB", "hugepages": False,
                                       "write_through": True},
                              "nvme": {"path": os.path.join(d, "nvme.data"), "capacity": "256MiB",
                                       "region_size": "8MiB"}},
                    "node": {"socket": os.path.join(d, "node.sock"), "autostart": False},
                    "metrics": {"port": 0},
                    "cluster": {"node_id": i, "listen_host": "127.0.0.1", "listen_port": ports[i],
                                "members": members, "secret_file": secret, "request_timeout_ms": int(os.environ.get("DEMO_TIMEOUT_MS", "5000"))},
                }, f)

    def start(self, node_id: str) -> None:
        log = open(os.path.join(self.root, node_id, "node.log"), "ab")
        start = log.tell()
        self.procs[node_id] = subprocess.Popen([sys.executable, "-m", "mooncake_hicache", "node", "--config",
                                                self.configs[node_id]], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        path = os.path.join(self.root, node_id, "node.log")
        while True:
            with open(path, "rb") as f:
                f.seek(start)
                if b"ready on" in f.read():
                    return
            if self.procs[node_id].poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{node_id} did not start; see {path}")
            time.sleep(0.05)

    def wait_all_up(self, node_id: str, timeout: float = 15.0) -> dict:
        """Until node_id's view marks every member up (each node probes the others once a second;
        a member still starting is marked down meanwhile, and its keys go to their next candidates)."""
        config = load_config(self.configs[node_id])
        deadline = time.monotonic() + timeout
        while True:
            status = cluster_status(config, timeout_ms=1000)
            if all(m["up"] and m["in_view_healthy"] for m in status["members"]) or time.monotonic() > deadline:
                return status
            time.sleep(0.2)

    def pages_held(self, node_id: str) -> dict:
        return {m["id"]: m["dram_pages"] for m in cluster_status(load_config(self.configs[node_id]))["members"]}

    def rank(self, node_id: str):
        store = Store.from_config(self.configs[node_id])
        mm = mmap.mmap(-1, self.pages * self.page)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
        store.register_buffer(addr, len(mm))
        return store, mm, addr

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def table(rows, head) -> str:
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [head] + rows)


def read_all(store, mm, addr, keys, page):
    mm[:] = b"\0" * len(mm)
    t0 = time.perf_counter()
    res = store.batch_get_into(keys, [addr + i * page for i in range(len(keys))], [page] * len(keys))
    dt = time.perf_counter() - t0
    wrong = sum(1 for i, k in enumerate(keys) if res[i] == page and mm[i * page:(i + 1) * page] != content(k, page))
    return res, dt, wrong


def write_and_read(demo: Demo, keys: list, page: int):
    """Steps 1-2: node-a's rank writes, node-b's rank reads; returns node-b's rank and the pages held."""
    a, amm, aaddr = demo.rank("node-a")
    for i, k in enumerate(keys):
        amm[i * page:(i + 1) * page] = content(k, page)
    t0 = time.perf_counter()
    put = a.batch_put_from(keys, [aaddr + i * page for i in range(len(keys))], [page] * len(keys))
    put_s = time.perf_counter() - t0
    a.close()
    b = demo.rank("node-b")
    got, get_s, wrong = read_all(*b, keys, page)
    held = demo.pages_held("node-b")
    rows = [[i, held[i], "shared memory" if i == "node-b" else "TCP"] for i in IDS]
    print(f"\n1-2. node-a's rank wrote {len(keys)} pages of {page >> 10} KiB ({put.count(0)} ok, "
          f"{put_s * 1e3:.1f} ms); node-b's rank read them ({got.count(page)} hits, "
          f"{wrong} wrong bytes, {get_s * 1e3:.1f} ms):")
    print(table(rows, ("holder", "pages", "node-b reads them over")))
    print("\n" + subprocess.run([sys.executable, "-m", "mooncake_hicache", "cluster", "status", "--config",
                                 demo.configs["node-b"]], capture_output=True, text=True).stdout)
    return b, held


def kill_and_restart(demo: Demo, b, held: dict, keys: list, page: int) -> bool:
    """Steps 3-4: node-c is killed (its pages miss, nothing hangs), then restarted from its NVMe."""
    demo.procs["node-c"].send_signal(signal.SIGKILL)
    demo.procs["node-c"].wait(timeout=10)
    got, get_s, wrong = read_all(*b, keys, page)
    print(f"3. node-c killed: node-b read {got.count(page)} hits, {got.count(-704)} misses "
          f"(node-c held {held['node-c']}), {wrong} wrong bytes, in {get_s * 1e3:.1f} ms")
    demo.start("node-c")
    deadline = time.monotonic() + 5
    while True:
        got, get_s, wrong_now = read_all(*b, keys, page)
        wrong += wrong_now
        if got.count(page) == len(keys) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    print(f"4. node-c restarted from its NVMe file: node-b read {got.count(page)} hits, {wrong_now} wrong bytes")
    return wrong == 0 and got.count(page) == len(keys)


def run(page: int, pages: int, keep: bool = False) -> int:
    root = tempfile.mkdtemp(prefix="mch-cluster-demo-")
    demo = Demo(root, page, pages)
    try:
        print(f"starting {', '.join(IDS)} (logs and data in {root})", flush=True)
        for i in IDS:
            demo.start(i)
        for i in IDS:
            demo.wait_all_up(i)
        keys = [f"demo-page-{i}" for i in range(pages)]
        b, held = write_and_read(demo, keys, page)
        ok = kill_and_restart(demo, b, held, keys, page)
        b[0].close()
        return 0 if ok else 1
    finally:
        demo.stop_all()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--page-size", type=int, default=256 << 10)
    p.add_argument("--pages", type=int, default=384)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    args = p.parse_args()
    return run(args.page_size, args.pages, args.keep)


if __name__ == "__main__":
    sys.exit(main())
