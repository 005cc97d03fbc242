"""Who may connect to the node and what a connected client can touch, attacked the way a careless
operator and a hostile neighbour on the same host would: a socket directory made by someone else,
planted symbolic links, umask 000, a node run by another user, a client of another user, the
arena's memfd seals, and a flood of the metrics port. The second user is created for the session
(CI runs as root); every process the tests start is stopped by its id."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import pytest
import yaml

from mooncake_hicache import Store, _native
from mooncake_hicache.config import load_config
from mooncake_hicache.errors import ConfigError, ErrorCode, StoreError
from hostile import other_user, open_fds, popen_kwargs_as, run_as, thread_count  # noqa: F401 (fixture)
from test_node_transport import (HDR, OP_ERROR, OP_HELLO, Buf, Node, node_stats, sock_dir, wait_for,  # noqa: F401
                                 wire_str)

KiB, MiB = 1 << 10, 1 << 20
NODE_UNAVAILABLE = int(ErrorCode.NODE_UNAVAILABLE)
PRECIOUS = b"precious: must never be overwritten\n"


def node_store_config(sock: str, **node) -> dict:
    return {"mode": "node",
            "tiers": {"dram": {"capacity": "16MiB", "slab_size": "1MiB", "hugepages": False}},
            "node": {"socket": sock, "timeout_ms": 3000, **node},
            "metrics": {"port": 0}}


def victims(tmp_path, names) -> dict:
    """Root-owned 0600 files a planted link points at."""
    out = {}
    for n in names:
        p = tmp_path / f"victim-{n}"
        p.write_bytes(PRECIOUS)
        p.chmod(0o600)
        out[n] = p
    return out


def assert_untouched(files: dict) -> None:
    for name, p in files.items():
        assert p.read_bytes() == PRECIOUS, f"{name}: written through a planted link"


def stop_node_on(sock: str) -> None:
    """Stops the node serving ``sock``, if any (its pid from a STATS round trip)."""
    c = _native.NodeClient(sock, 2000)
    if c.healthy:
        pid = c.node_info["pid"]
        c.close()
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=15, what=f"node {pid} to stop")


# ---- 1. the socket directory ----------------------------------------------------------------

def test_default_socket_lives_in_a_per_user_runtime_directory(tmp_path, other_user):
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    assert load_config({}, env={"XDG_RUNTIME_DIR": str(runtime)}).node.socket == \
        str(runtime / "mooncake-hicache" / "node.sock")
    fallback = f"/tmp/mooncake-hicache-{os.getuid()}/node.sock"
    assert load_config({}, env={}).node.socket == fallback
    # A runtime directory that is not this user's own (sudo -E keeps the caller's) is not used.
    os.chown(runtime, other_user.uid, other_user.gid)
    assert load_config({}, env={"XDG_RUNTIME_DIR": str(runtime)}).node.socket == fallback
    # An explicit setting is kept as written.
    assert load_config({"node": {"socket": "/run/x/n.sock"}}, env={}).node.socket == "/run/x/n.sock"


def test_socket_directory_made_by_another_user_is_refused_and_nothing_is_written_through_it(other_user, tmp_path):
    d = f"/tmp/mchx-{uuid.uuid4().hex[:8]}"
    files = victims(tmp_path, ["yaml", "log", "lock"])
    planted = run_as(other_user, """
        import os, sys
        d = sys.argv[1]
        os.mkdir(d)
        os.chmod(d, 0o777)
        for ext, target in zip(("yaml", "log", "lock"), sys.argv[2:]):
            os.symlink(target, os.path.join(d, "n.sock." + ext))
        """, d, *(str(files[n]) for n in ("yaml", "log", "lock")))
    assert planted.returncode == 0, planted.stderr
    try:
        with pytest.raises((ConfigError, StoreError)) as e:
            Store.from_config(node_store_config(os.path.join(d, "n.sock")))
        assert "owned by" in str(e.value) and other_user.name in str(e.value), str(e.value)
        assert_untouched(files)
        assert not os.path.exists(os.path.join(d, "n.sock"))
    finally:
        stop_node_on(os.path.join(d, "n.sock"))
        shutil.rmtree(d, ignore_errors=True)


def test_socket_directory_writable_by_others_is_refused(sock_dir):
    os.chmod(sock_dir, 0o777)
    with pytest.raises((ConfigError, StoreError)) as e:
        Store.from_config(node_store_config(os.path.join(sock_dir, "n.sock")))
    assert "writable by other users" in str(e.value) and sock_dir in str(e.value)


def test_symbolic_links_planted_next_to_the_socket_are_not_followed(sock_dir, tmp_path):
    files = victims(tmp_path, ["yaml", "log", "lock"])
    sock = os.path.join(sock_dir, "n.sock")
    for ext, p in files.items():
        os.symlink(p, f"{sock}.{ext}")
    try:
        with pytest.raises(StoreError) as e:
            Store.from_config(node_store_config(sock))
        assert "symbolic link" in str(e.value)
        assert_untouched(files)
    finally:
        stop_node_on(sock)


UMASK_000_CLIENT = """
import os, sys
os.umask(0)
from mooncake_hicache import Store
config = {"mode": "node", "tiers": {"dram": {"capacity": "16MiB", "slab_size": "1MiB", "hugepages": False}},
          "node": {"socket": sys.argv[1], "timeout_ms": 3000}, "metrics": {"port": 0}}
with Store.from_config(config) as s:
    assert s.put("k", b"v" * 4096) == 0
    print(s.stats()["node"]["pid"])
"""


def test_socket_directory_and_files_are_private_under_umask_000(sock_dir):
    sock = os.path.join(sock_dir, "fresh", "sub", "n.sock")  # directories made by the client
    r = subprocess.run([sys.executable, "-c", UMASK_000_CLIENT, sock], capture_output=True, text=True, timeout=120)
    try:
        assert r.returncode == 0, r.stderr
        mode = lambda p: stat.S_IMODE(os.lstat(p).st_mode)  # noqa: E731
        assert mode(os.path.dirname(sock)) == 0o700
        assert mode(sock) == 0o600
        for ext in ("yaml", "log", "lock"):
            assert mode(f"{sock}.{ext}") == 0o600, ext
    finally:
        stop_node_on(sock)


# ---- 2. peer credentials, both ways ----------------------------------------------------------

HELLO_AS_OTHER_USER = """
import socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
s.connect(sys.argv[1])
try:  # a node that refuses us may have closed already: its ERROR frame is still there to read
    s.sendall(struct.pack("<IHHIIQ", int(sys.argv[2]), 1, 1, 1, 0, 15) + struct.pack("<HHII", 1, 1, 0, 3) + b"raw")
except OSError:
    pass
try:
    head = s.recv(24)
    op, n = struct.unpack_from("<H", head, 6)[0], struct.unpack_from("<Q", head, 16)[0]
    body = s.recv(n) if n else b""
    print(op, body[12:].decode(errors="replace"))
except OSError as e:
    print("closed", e)
"""

CLIENT_AS_OTHER_USER = """
import json, sys
from mooncake_hicache import _native
kw = json.loads(sys.argv[2])
c = _native.NodeClient(sys.argv[1], 2000, **kw)
print(json.dumps({"healthy": c.healthy, "code": c.last_error_code, "error": c.last_error,
                  "exists": c.batch_exists(["k"])}))
"""


def open_to_everyone(d: str, sock: str) -> None:
    """File permissions out of the way, so only the node's own check stands."""
    os.chmod(d, 0o755)
    os.chmod(sock, 0o666)


def test_node_refuses_a_client_of_another_uid_unless_the_config_allows_it(other_user, sock_dir):
    sock = os.path.join(sock_dir, "n.sock")
    node = Node(sock)
    try:
        open_to_everyone(sock_dir, sock)
        # A HELLO by hand: what the node answers, whatever the client would check itself.
        out = run_as(other_user, HELLO_AS_OTHER_USER, sock, str(_native.PROTOCOL_MAGIC))
        assert out.returncode == 0, out.stderr
        op, _, message = out.stdout.strip().partition(" ")
        assert op == str(OP_ERROR), f"the node answered op {op} to another user: {message}"
        assert f"uid {other_user.uid}" in message and "allowed_uids" in message, message
        trust_root = json.dumps({"allowed_uids": [os.getuid()]})  # the client's own check passes
        seen = json.loads(run_as(other_user, CLIENT_AS_OTHER_USER, sock, trust_root).stdout)
        assert not seen["healthy"] and seen["code"] == errno.EACCES and "refused" in seen["error"], seen
        mine = _native.NodeClient(sock, 2000)  # the node's own uid is served
        assert mine.healthy and node_stats(mine)["node"]["refused_peers"] >= 1
    finally:
        node.stop()
    node = Node(sock, server={"allowed_uids": [other_user.uid]})
    try:
        open_to_everyone(sock_dir, sock)
        trust_root = json.dumps({"allowed_uids": [os.getuid()]})
        seen = json.loads(run_as(other_user, CLIENT_AS_OTHER_USER, sock, trust_root).stdout)
        assert seen["healthy"] and seen["exists"] == [0], seen
    finally:
        node.stop()


def test_client_refuses_a_node_run_by_another_uid_unless_the_config_allows_it(other_user):
    d = tempfile.mkdtemp(prefix="mcho", dir="/tmp")
    os.chown(d, other_user.uid, other_user.gid)
    sock = os.path.join(d, "n.sock")
    # The foreign node would serve us (it allows our uid): the refusal is the client's own.
    node = Node(sock, server={"allowed_uids": [os.getuid()]}, **popen_kwargs_as(other_user))
    try:
        os.chmod(sock, 0o666)  # root could connect anyway; the point is whether it should
        c = _native.NodeClient(sock, 2000)
        assert not c.healthy and c.last_error_code == errno.EACCES
        assert f"uid {other_user.uid}" in c.last_error and "allowed_uids" in c.last_error, c.last_error
        b = Buf(4096)
        b.put(0, b"root's page".ljust(4096, b"."))
        assert c.batch_put(["k"], [b.addr], [4096]) == [NODE_UNAVAILABLE]
        # The foreign node never saw a page of ours.
        out = run_as(other_user, """
            import json, sys
            from mooncake_hicache import _native
            s = json.loads(_native.NodeClient(sys.argv[1], 2000).stats_json())
            print(json.dumps(s["node"]["requests_by_op"]))
            """, sock)
        assert json.loads(out.stdout).get("put_reserve", 0) == 0, out.stdout + out.stderr
        trusting = _native.NodeClient(sock, 2000, allowed_uids=[other_user.uid])
        assert trusting.healthy and trusting.batch_exists(["k"]) == [0]
    finally:
        node.stop()
        shutil.rmtree(d, ignore_errors=True)


# ---- 3. socket mode ---------------------------------------------------------------------------

def test_socket_mode_is_set_explicitly_even_under_umask_000(other_user, sock_dir):
    os.chmod(sock_dir, 0o755)  # the directory lets others through; the socket must not
    sock = os.path.join(sock_dir, "n.sock")
    node = Node(sock, preexec_fn=lambda: os.umask(0))
    try:
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        out = run_as(other_user, """
            import socket, sys
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(sys.argv[1])
                print("connected")
            except PermissionError:
                print("refused")
            """, sock)
        assert out.stdout.strip() == "refused", out.stdout + out.stderr
    finally:
        node.stop()
    node = Node(sock, server={"socket_mode": 0o660}, preexec_fn=lambda: os.umask(0o077))
    try:
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660  # as configured, whatever the umask
    finally:
        node.stop()


# ---- 4. the arena's seals -----------------------------------------------------------------

F_SEAL_FUTURE_WRITE = 0x0010


def arena_fd_from_hello(sock: str) -> int:
    """Says HELLO by hand and keeps the arena memfd the reply carries."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(sock)
    s.sendall(HDR.pack(_native.PROTOCOL_MAGIC, 1, OP_HELLO, 1, 0, 12 + len(b"raw")) +
              struct.pack("<HHI", 1, 1, os.getpid()) + wire_str(b"raw"))
    data, fds, _, _ = socket.recv_fds(s, 4096, 4)
    assert fds, f"no descriptor in the HELLO reply: {data!r}"
    s.close()
    return fds[0]


def test_arena_seals_are_locked_before_the_descriptor_is_passed(sock_dir):
    sock = os.path.join(sock_dir, "n.sock")
    node = Node(sock, dram=16 * MiB, slab=1 * MiB)
    fd = arena_fd_from_hello(sock)
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        need = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
        assert seals & need == need, f"seals {seals:#x}"
        with pytest.raises(PermissionError):  # would make every later client's mapping fail
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, F_SEAL_FUTURE_WRITE)
        with pytest.raises(PermissionError):
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 0)
        # Clients that come later still map and use the arena.
        c = _native.NodeClient(sock, 2000)
        b = Buf(8192)
        b.put(0, b"x" * 8192)
        assert c.batch_put(["k"], [b.addr], [8192]) == [0]
        assert c.get_bytes("k") == b"x" * 8192
        assert node_stats(c)["node"]["arena_sealed"] is True
    finally:
        os.close(fd)
        node.stop()


# ---- 5. the metrics port ---------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_port_flood_is_bounded_in_connections_and_time(sock_dir, tmp_path):
    port, limit, idle_s = free_port(), 8, 1
    cfg = node_store_config(os.path.join(sock_dir, "n.sock"), autostart=False)
    cfg["metrics"] = {"port": port, "max_connections": limit, "timeout_s": idle_s}
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(cfg))
    node = subprocess.Popen([sys.executable, "-m", "mooncake_hicache", "node", "--config", str(tmp_path / "node.yaml")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    flood = []
    try:
        assert "ready" in node.stdout.readline()
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        threads0, fds0 = thread_count(node.pid), open_fds(node.pid)
        for _ in range(300):  # idle connections that never send a request
            s = socket.socket()
            s.connect(("127.0.0.1", port))
            flood.append(s)
        time.sleep(0.5)
        assert thread_count(node.pid) <= threads0 + 2, "a thread per connection"
        assert open_fds(node.pid) <= fds0 + limit + 2, "more connections open than the limit"
        # Idle connections are closed within the timeout (plus the server's 1 s check interval):
        # the first ones accepted, then the next ones from the backlog, and so on.
        t0 = time.monotonic()
        for s in flood[:2 * limit]:
            s.settimeout(2 * (idle_s + 3))
            try:
                assert s.recv(1) == b""
            except ConnectionResetError:
                pass
        took = time.monotonic() - t0
        assert took < 2 * (idle_s + 3), f"two rounds of idle connections took {took:.1f} s to be closed"
        assert thread_count(node.pid) <= threads0 + 2
    finally:
        for s in flood:
            s.close()
    try:
        # The flood gone, scrapes answer at once; nothing identifies the node's clients.
        client = _native.NodeClient(cfg["node"]["socket"], 2000)
        assert client.healthy
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert "mooncake_hicache_node_connections" in body
        stats = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10).read())
        assert stats["node"]["connections"] >= 1 and "client_pids" not in stats["node"]
        client.close()
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=30)
