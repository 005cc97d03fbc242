"""The Store in node mode: one node process per host, started by the first Store, shared by every
process; its death, SIGTERM and restart. Real processes, sockets, shared memory and NVMe files."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from mooncake_hicache import ErrorCode, Store
from conftest import Buffer, pattern

PAGE = 256 * 1024


def node_config(sock_dir: str, data_dir: str, **dram) -> dict:
    d = {"capacity": "8MiB", "slab_size": "1MiB", "hugepages": False}
    d.update(dram)
    return {
        "mode": "node",
        "tiers": {"dram": d,
                  "nvme": {"path": os.path.join(data_dir, "nvme.data"), "capacity": "64MiB",
                           "region_size": "4MiB", "queue_depth": 8}},
        "node": {"socket": os.path.join(sock_dir, "n.sock"), "timeout_ms": 2000},
        "metrics": {"port": 0},
    }


def node_pid(store: Store) -> int:
    return store.stats()["node"]["pid"]


def stop(pid: int, sig=signal.SIGTERM, timeout: float = 10.0) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    raise AssertionError(f"node {pid} did not exit after {sig!r}")


@pytest.fixture
def cfg(tmp_path):
    sock_dir = tempfile.mkdtemp(prefix="mch", dir="/tmp")  # short: a socket path holds 107 bytes
    config = node_config(sock_dir, str(tmp_path))
    yield config
    # Stop any node this test left running (the pid is in the socket's sidecar log/lock files).
    try:
        with Store.from_config({**config, "node": {**config["node"], "autostart": False}}) as s:
            stop(node_pid(s))
    except Exception:
        pass
    shutil.rmtree(sock_dir, ignore_errors=True)


def put_pages(store: Store, keys) -> Buffer:
    buf = Buffer(PAGE * len(keys))
    store.register_buffer(buf.addr, buf.size)
    for i, k in enumerate(keys):
        buf.write(i * PAGE, pattern(k, PAGE))
    assert store.batch_put_from(keys, [buf.addr + i * PAGE for i in range(len(keys))], [PAGE] * len(keys)) == [0] * len(keys)
    store.unregister_buffer(buf.addr)
    return buf


def read_pages(store: Store, keys) -> list:
    buf = Buffer(PAGE * len(keys))
    store.register_buffer(buf.addr, buf.size)
    res = store.batch_get_into(keys, [buf.addr + i * PAGE for i in range(len(keys))], [PAGE] * len(keys))
    out = []
    for i, (k, r) in enumerate(zip(keys, res)):
        if r == PAGE:
            assert buf.read(i * PAGE, PAGE) == pattern(k, PAGE), f"wrong bytes for {k}"
        out.append(r)
    store.unregister_buffer(buf.addr)
    return out


def test_first_store_starts_the_node_and_a_second_process_reads_what_it_wrote(cfg):
    with Store.from_config(cfg) as writer:
        assert writer.mode == "node"
        keys = [f"shared-{i}" for i in range(16)]
        put_pages(writer, keys)
        reader = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {os.path.dirname(__file__)!r})
            from conftest import Buffer, pattern
            from mooncake_hicache import Store
            PAGE = {PAGE}
            with Store.from_config({cfg!r}) as s:
                keys = [f"shared-{{i}}" for i in range(16)]
                b = Buffer(PAGE * 16)
                s.register_buffer(b.addr, b.size)
                res = s.batch_get_into(keys, [b.addr + i * PAGE for i in range(16)], [PAGE] * 16)
                ok = all(r == PAGE and b.read(i * PAGE, PAGE) == pattern(k, PAGE) for i, (k, r) in enumerate(zip(keys, res)))
                print("OK" if ok else f"BAD {{res}}", s.stats()["node"]["pid"])
        """)], capture_output=True, text=True, timeout=60)
        assert reader.returncode == 0, reader.stderr
        word, pid = reader.stdout.split()
        assert word == "OK"
        assert int(pid) == node_pid(writer), "the second process must use the same node"


def test_ranks_starting_together_start_exactly_one_node(cfg):
    script = textwrap.dedent(f"""
        from mooncake_hicache import Store
        s = Store.from_config({cfg!r})
        print(s.stats()["node"]["pid"], flush=True)
        s.close()
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(4)]
    pids = {p.communicate(timeout=90)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(pids) == 1, f"several nodes were started: {pids}"


def test_dram_overflow_demotes_to_nvme_and_reads_promote_back(cfg):
    cfg["tiers"]["dram"]["clean_reserve"] = 0  # promotion over dirty victims (test_clean_reserve.py: with one)
    with Store.from_config(cfg) as store:
        keys = [f"p{i}" for i in range(64)]  # 16 MiB of pages into 8 MiB of DRAM
        put_pages(store, keys)
        st = store.stats()
        assert st["tiering"]["demoted"] > 0 and st["nvme"]["entries"] > 0
        assert store.batch_is_exist(keys) == [1] * 64
        assert read_pages(store, keys[:8]) == [PAGE] * 8  # oldest: on NVMe only
        assert store.stats()["tiering"]["promoted"] >= 8


def test_sigterm_then_restart_keeps_the_pages_that_reached_nvme(cfg):
    cfg = {**cfg, "tiers": {**cfg["tiers"], "dram": {**cfg["tiers"]["dram"], "write_through": True}}}
    with Store.from_config(cfg) as store:
        keys = [f"durable-{i}" for i in range(12)]
        put_pages(store, keys)
        stop(node_pid(store), signal.SIGTERM)
    with Store.from_config(cfg) as store:  # starts a fresh node on the same NVMe file
        st = store.stats()
        try:
            assert st["nvme"]["recovered_entries"] >= 12
            assert st["nvme"]["recovered_regions_scanned"] == 0, "SIGTERM must seal the open region"
            assert read_pages(store, keys) == [PAGE] * 12
        finally:
            stop(st["node"]["pid"])  # the node outlives its clients by design: the test ends it


def test_sigkilled_node_gives_misses_fast_then_a_new_node_serves_the_nvme_data(cfg):
    cfg = {**cfg, "tiers": {**cfg["tiers"], "dram": {**cfg["tiers"]["dram"], "write_through": True}}}
    store = Store.from_config(cfg)
    try:
        keys = [f"k{i}" for i in range(8)]
        put_pages(store, keys)
        old = node_pid(store)
        stop(old, signal.SIGKILL)
        t0 = time.monotonic()
        first = read_pages(store, keys)  # the node is gone: misses, no hang, no garbage
        assert time.monotonic() - t0 < 2 * 2.0 + 1
        assert all(r in (PAGE, ErrorCode.NOT_FOUND) for r in first)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # a later call restarts the node
            if read_pages(store, keys) == [PAGE] * 8:
                break
            time.sleep(0.3)
        else:
            raise AssertionError("no restarted node served the NVMe pages")
        assert node_pid(store) != old
    finally:
        pid = store.stats().get("node", {}).get("pid")
        store.close()
        if pid:
            stop(pid)


def test_without_autostart_a_missing_node_is_a_clear_error(cfg):
    from mooncake_hicache import StoreError
    with pytest.raises(StoreError, match="mooncake-hicache node"):
        Store.from_config({**cfg, "node": {**cfg["node"], "autostart": False}})
