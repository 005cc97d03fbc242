"""Bounded resources and no hangs, pushed the way careless neighbours push a node: frame headers
that announce huge bodies (inside a memory cgroup where one can be made), connections that never
speak, a DRAM capacity beyond the machine or the cgroup, a million small pages, a dead or hung
node, a node started with other settings, batches beyond the protocol's limits, and start-up
failures. Every load loop is bounded in count and time; every node is stopped by its id."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml

from mooncake_hicache import Store, _native
from mooncake_hicache.config import load_config
from mooncake_hicache.errors import ConfigError, ErrorCode, StoreError
from hostile import memory_cgroup, private_bytes, rss_bytes  # noqa: F401 (fixture)
from test_node_transport import (OP_ERROR, OP_HELLO, OP_PING, OP_PUT_RESERVE, Buf, RawClient,  # noqa: F401
                                 error_message, node_stats, sock_dir, start_node, wait_for)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
NOT_FOUND, NODE_UNAVAILABLE = int(ErrorCode.NOT_FOUND), int(ErrorCode.NODE_UNAVAILABLE)
# What a call may take beyond node.timeout_ms on this (shared, 2-core) machine: the client's own
# work plus scheduling; docs/architecture.md ("Trust and limits") states the margin.
MARGIN_S = 0.5


def node_mode_config(sock: str, data_dir: str | None = None, timeout_ms: int = 1000, **dram) -> dict:
    d = {"capacity": "16MiB", "slab_size": "1MiB", "hugepages": False, **dram}
    tiers = {"dram": d}
    if data_dir:
        tiers["nvme"] = {"path": os.path.join(data_dir, "nvme.data"), "capacity": "16MiB", "region_size": "2MiB"}
    return {"mode": "node", "tiers": tiers, "node": {"socket": sock, "timeout_ms": timeout_ms},
            "metrics": {"port": 0}}


def kill_pid(pid: int) -> None:
    for sig in (signal.SIGCONT, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z",
             timeout=10, what=f"pid {pid} to go")


def timed(fn, *args):
    t0 = time.monotonic()
    out = fn(*args)
    return out, time.monotonic() - t0


# ---- 6. frame headers announce bodies that never come ------------------------------------------

def announce(path: str, hello_first: bool, body_len: int) -> RawClient:
    raw = RawClient(path)
    if hello_first:
        raw.hello()
        raw.send(OP_PUT_RESERVE, b"", body_len=body_len)
    else:
        raw.send(OP_HELLO, b"", body_len=body_len)
    return raw


def test_frame_headers_alone_allocate_nothing(start_node):
    node = start_node(dram=16 * MiB, slab=1 * MiB)
    before = rss_bytes(node.pid)
    pre = [announce(node.path, False, 60 * MiB) for _ in range(8)]
    post = [announce(node.path, True, 60 * MiB) for _ in range(8)]
    for raw in pre:  # before HELLO only a small HELLO is accepted: refused at once
        op, _, body = raw.recv()
        assert op == OP_ERROR and "hello" in error_message(body)[1].lower(), error_message(body)
        assert raw.closed_by_peer()
    time.sleep(0.3)
    grown = rss_bytes(node.pid) - before
    assert grown < 32 * MiB, f"the node grew by {grown >> 20} MiB for headers alone"
    good = _native.NodeClient(node.path, 2000)
    assert good.ping() and good.batch_exists(["k"]) == [0]
    for raw in post:
        raw.close()


def test_a_header_flood_inside_a_memory_cgroup_leaves_the_node_serving(start_node, memory_cgroup):
    cg = memory_cgroup(384 * MiB)
    node = start_node(dram=16 * MiB, slab=1 * MiB, preexec_fn=cg.enter)
    flood = []
    for i in range(64):
        try:
            flood.append(announce(node.path, True, 60 * MiB))
        except (OSError, EOFError, AssertionError):
            break  # the node died under us (what this test exists to catch)
    time.sleep(0.5)
    try:
        assert node.proc.poll() is None, f"the node died (status {node.proc.returncode})"
        assert cg.oom_kills() == 0
        good = _native.NodeClient(node.path, 2000)
        b = Buf(4096)
        assert good.batch_put(["k"], [b.addr], [4096]) == [0] and good.batch_exists(["k"]) == [1]
    finally:
        for raw in flood:
            raw.close()


# ---- 7. connections that never speak -------------------------------------------------------

def test_silent_connections_are_closed_after_the_hello_timeout(start_node):
    node = start_node(timeout_ms=300)
    socks = []
    for _ in range(20):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(node.path)
        s.settimeout(0.3 + 3)
        socks.append(s)
    t0 = time.monotonic()
    for s in socks:
        try:
            assert s.recv(1) == b""  # closed by the node (an ERROR frame would be readable too)
        except ConnectionResetError:
            pass
        except socket.timeout:
            pytest.fail("a silent connection was kept open")
        s.close()
    assert time.monotonic() - t0 < 0.3 + 3


def test_a_new_client_gets_in_while_silent_connections_fill_the_node(start_node):
    node = start_node(timeout_ms=10000)  # silent connections would live 10 s
    cap = _native.NodeServer.MAX_CONNECTIONS
    socks = []
    try:
        for _ in range(cap):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(node.path)
            socks.append(s)
        c, took = timed(_native.NodeClient, node.path, 2000)
        assert c.healthy, c.last_error
        assert took < 2.0 + MARGIN_S
        assert node_stats(c)["node"]["evicted_connections"] >= 1
    finally:
        for s in socks:
            s.close()


def test_too_many_busy_connections_are_reported_as_such_without_starting_a_node(start_node, sock_dir):
    node = start_node(server={"max_connections": 4})
    busy = [RawClient(node.path) for _ in range(4)]
    for raw in busy:
        raw.hello()
    stop = threading.Event()

    def keep_busy():
        while not stop.is_set():
            for raw in busy:
                raw.send(OP_PING, b"x")
                raw.recv()
            time.sleep(0.05)

    th = threading.Thread(target=keep_busy, daemon=True)
    th.start()
    try:
        config = node_mode_config(node.path, timeout_ms=1000)
        with pytest.raises(StoreError) as e:
            timed(Store.from_config, config)
        assert "too many connections" in str(e.value) and "4" in str(e.value), str(e.value)
        assert not os.path.exists(node.path + ".log"), "a second node was started"
    finally:
        stop.set()
        th.join(timeout=5)
    assert node.proc.poll() is None


# ---- 8. DRAM capacity -----------------------------------------------------------------------

def test_dram_capacity_beyond_physical_memory_is_refused():
    with pytest.raises(ConfigError) as e:
        load_config({"tiers": {"dram": {"capacity": "1TiB"}}}, env={})
    assert e.value.field == "tiers.dram.capacity"
    assert "physical memory" in str(e.value), str(e.value)


CHECK_IN_CGROUP = """
import sys
from mooncake_hicache.config import load_config
from mooncake_hicache.errors import ConfigError
try:
    load_config({"tiers": {"dram": {"capacity": sys.argv[1], "hugepages": False}}}, env={})
    print("valid")
except ConfigError as e:
    print("ConfigError", e)
"""


def test_dram_capacity_beyond_the_cgroup_limit_is_refused_naming_it(memory_cgroup, sock_dir, tmp_path):
    cg = memory_cgroup(512 * MiB)
    out = subprocess.run([sys.executable, "-c", CHECK_IN_CGROUP, "1GiB"], capture_output=True, text=True,
                         timeout=60, preexec_fn=cg.enter).stdout
    assert out.startswith("ConfigError tiers.dram.capacity") and "cgroup" in out and "512.0 MiB" in out, out
    out = subprocess.run([sys.executable, "-c", CHECK_IN_CGROUP, "64MiB"], capture_output=True, text=True,
                         timeout=60, preexec_fn=cg.enter).stdout
    assert out.strip() == "valid", out
    # The node started inside the cgroup refuses at once instead of being OOM-killed while idle.
    cfg = node_mode_config(os.path.join(sock_dir, "n.sock"), capacity="768MiB", slab_size="4MiB")
    (tmp_path / "n.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "mooncake_hicache", "node", "--config", str(tmp_path / "n.yaml")],
                       capture_output=True, text=True, timeout=60, preexec_fn=cg.enter)
    assert r.returncode == 2 and "cgroup" in r.stderr and "Traceback" not in r.stderr, (r.returncode, r.stderr)
    assert cg.oom_kills() == 0


# ---- 9. memory per key -----------------------------------------------------------------------

def test_small_pages_cost_little_memory_per_key_and_no_whole_4k_slot(start_node):
    n, batch = 100_000, 5_000
    node = start_node(dram=64 * MiB, slab=4 * MiB)
    c = _native.NodeClient(node.path, 10000)
    value = Buf(4096)
    value.put(0, b"sixteen bytes!!!")
    keys = [f"{i:064x}-tp" for i in range(n)]  # 67 bytes, as SGLang's keys with a scope suffix
    assert c.batch_exists(keys[:1]) == [0]
    before = private_bytes(node.pid)
    for i in range(0, n, batch):
        part = keys[i:i + batch]
        assert c.batch_put(part, [value.addr] * len(part), [16] * len(part)) == [0] * len(part)
    per_key = (private_bytes(node.pid) - before) / n  # the batches' scratch (one batch) included
    stats = node_stats(c)["dram"]
    assert stats["entries"] == n, f"{n - stats['entries']} 16-byte pages were evicted: they take whole 4 KiB slots"
    print(f"node private memory per 67-byte key with a 16-byte value: {per_key:.0f} bytes "
          f"(the tier's own metadata: {stats['metadata_bytes'] / n:.0f} bytes)")
    assert per_key < 100, f"{per_key:.0f} bytes of node memory per key"
    assert sum(c.batch_exists(keys)) == n
    out = Buf(4096)
    assert c.batch_get(keys[-3:], [out.addr] * 3, [4096] * 3) == [16] * 3
    assert out.get(0, 16) == b"sixteen bytes!!!"


# ---- 10. a dead or hung node costs at most one timeout per call ---------------------------------

def calls_within_timeout(store: Store, timeout_s: float, seconds: float, buf: Buf) -> list[float]:
    """Runs exists / get / put for `seconds`; returns every call's duration."""
    store.register_buffer(buf.addr, 8192)
    took = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for call in (lambda: store.batch_is_exist(["k"]),
                     lambda: store.batch_get_into(["k"], [buf.addr], [4096]),
                     lambda: store.batch_put_from(["k2"], [buf.addr + 4096], [4096])):
            _, t = timed(call)
            took.append(t)
        time.sleep(0.05)
    store.unregister_buffer(buf.addr)
    return took


def test_a_dead_node_that_cannot_restart_costs_no_call_more_than_the_timeout(sock_dir, tmp_path, caplog):
    cfg = node_mode_config(os.path.join(sock_dir, "n.sock"), data_dir=str(tmp_path), timeout_ms=1000)
    store = Store.from_config(cfg)
    pids = [store.stats()["node"]["pid"]]
    buf = Buf(8192)
    try:
        assert store.put("k", b"v" * 4096) == 0
        kill_pid(pids[0])
        # The replacement cannot start: the data file is locked (a node that is still exiting).
        with open(tmp_path / "nvme.data", "rb") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            with caplog.at_level(logging.WARNING, logger="mooncake_hicache.node"):
                took = calls_within_timeout(store, 1.0, 4.0, buf)
                wait_for(lambda: "could not start" in caplog.text, timeout=30, what="the reason to be logged")
            assert max(took) < 1.0 + MARGIN_S, f"slowest call {max(took):.2f} s"
            assert "in use" in caplog.text, caplog.text  # the node's own one-line reason
        # Once the file is free the node comes back, started in the background.
        wait_for(lambda: store.put("k3", b"w" * 4096) == 0, timeout=30, what="the node to come back")
        pids.append(store.stats()["node"]["pid"])
        assert store.get("k3") == b"w" * 4096
    finally:
        store.close()
        for pid in pids:
            kill_pid(pid)


def test_a_hung_node_costs_one_timeout_per_call_not_two(sock_dir):
    cfg = node_mode_config(os.path.join(sock_dir, "n.sock"), timeout_ms=1000)
    store = Store.from_config(cfg)
    pid = store.stats()["node"]["pid"]
    buf = Buf(8192)
    try:
        os.kill(pid, signal.SIGSTOP)
        took = calls_within_timeout(store, 1.0, 3.0, buf)
        assert max(took) < 1.0 + MARGIN_S, f"slowest call {max(took):.2f} s"
    finally:
        os.kill(pid, signal.SIGCONT)
        store.close()
        kill_pid(pid)


# ---- 11. a node started with other settings ------------------------------------------------

def test_a_node_started_with_other_settings_is_refused_naming_the_fields(sock_dir):
    sock = os.path.join(sock_dir, "n.sock")
    first = Store.from_config(node_mode_config(sock, capacity="16MiB"))
    pid = first.stats()["node"]["pid"]
    try:
        with pytest.raises((ConfigError, StoreError)) as e:
            Store.from_config(node_mode_config(sock, capacity="32MiB", eviction="s3fifo"))
        msg = str(e.value)
        assert "tiers.dram.capacity" in msg and "tiers.dram.eviction" in msg, msg
        assert "16777216" in msg and "33554432" in msg, msg
        assert "slab_size" not in msg  # only the fields that differ
        assert first.put("k", b"x" * 4096) == 0  # the node itself is fine
    finally:
        first.close()
        kill_pid(pid)


# ---- 12. batches beyond the protocol's limits ---------------------------------------------

def test_batches_beyond_the_frame_limits_are_split_and_the_node_stays_healthy(start_node):
    node = start_node(dram=64 * MiB, slab=4 * MiB)
    c = _native.NodeClient(node.path, 10000)
    n = 70_000  # more keys than one frame may carry (65,536)
    keys = [f"k{i}" for i in range(n)]
    value = Buf(4096)
    value.put(0, b"0123456789abcdef")
    assert c.batch_put(keys, [value.addr] * n, [16] * n) == [0] * n
    assert c.batch_exists(keys) == [1] * n
    out = Buf(n * 16)
    assert c.batch_get(keys, [out.addr + 16 * i for i in range(n)], [16] * n) == [16] * n
    assert out.get(16 * (n - 1), 16) == b"0123456789abcdef"
    # Long keys: 40,000 x 2 KiB is more bytes than one frame may carry (64 MiB).
    long_keys = [f"{i:08d}".ljust(_native.MAX_KEY_LEN, "x") for i in range(40_000)]
    assert c.batch_exists(long_keys) == [0] * len(long_keys)
    assert c.healthy
    assert not [line for line in c.take_notes() if "unavailable" in str(line)]


# ---- 13. start-up failures and the empty config ------------------------------------------------

def start_node_cli(tmp_path, sock: str) -> subprocess.CompletedProcess:
    cfg = node_mode_config(sock)
    (tmp_path / "n.yaml").write_text(yaml.safe_dump(cfg))
    return subprocess.run([sys.executable, "-m", "mooncake_hicache", "node", "--config", str(tmp_path / "n.yaml")],
                          capture_output=True, text=True, timeout=60)


def assert_one_line(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode in (1, 2), (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_node_start_failures_are_one_line_reasons(tmp_path, sock_dir):
    as_dir = os.path.join(sock_dir, "is-a-dir")
    os.mkdir(as_dir)
    assert_one_line(start_node_cli(tmp_path, as_dir), as_dir)
    as_file = os.path.join(sock_dir, "is-a-file")
    open(as_file, "w").close()
    assert_one_line(start_node_cli(tmp_path, as_file), as_file)
    ro = os.path.join(sock_dir, "ro")
    os.mkdir(ro, 0o700)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m,mode=700", "none", ro],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root and mount rights)")
    try:
        assert_one_line(start_node_cli(tmp_path, os.path.join(ro, "n.sock")), "Read-only file system")
    finally:
        subprocess.run(["umount", ro], capture_output=True)


def test_an_empty_config_file_is_logged_as_meaning_the_defaults(tmp_path, caplog):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with caplog.at_level(logging.INFO, logger="mooncake_hicache.config"):
        load_config(empty, env={})
    assert str(empty) in caplog.text and "defaults" in caplog.text, caplog.text
