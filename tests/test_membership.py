"""Membership: the static list, and etcd membership against a REAL etcd server (tests/etcd_server.py
starts the ``etcd`` binary on free loopback ports; the tests skip, saying why, only when the binary
is missing). Members are ``EtcdMembership`` objects in this process, and a child process for the
member that is killed. Leases are 2 s; every wait is bounded; timings are printed.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import _closed_at_teardown
from etcd_server import ETCD, SKIP_REASON, EtcdServer, TcpProxy, free_port
from mooncake_hicache.cluster import (DuplicateMemberError, EtcdMembership, Member, MembershipError,
                                      StaticMembership, View, open_membership)
from mooncake_hicache.cluster.etcd_session import EtcdSession
from mooncake_hicache.config import load_config

TTL = 2
needs_etcd = pytest.mark.skipif(ETCD is None, reason=SKIP_REASON)


def wait_for(predicate, timeout: float, what: str) -> float:
    """Poll until predicate() is true; return the seconds it took, or fail naming ``what``."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - t0


def member(node_id: str, port: int = 7000, weight: float = 1.0) -> Member:
    return Member(node_id, "127.0.0.1", port, weight)


@pytest.fixture(scope="module")
def shared_etcd(tmp_path_factory):
    """One etcd for the tests that leave it running (each uses its own key prefix)."""
    if ETCD is None:
        pytest.skip(SKIP_REASON)
    server = EtcdServer(str(tmp_path_factory.mktemp("etcd") / "data")).start()
    yield server
    server.kill()


@pytest.fixture
def etcd(tmp_path):
    """An etcd of this test's own, for tests that stop, restart or compact it."""
    if ETCD is None:
        pytest.skip(SKIP_REASON)
    server = EtcdServer(str(tmp_path / "data")).start()
    yield server
    server.kill()


@pytest.fixture
def prefix(request) -> str:
    return f"/test/{request.node.name}/"


@pytest.fixture
def members():
    """members(endpoints, prefix, me, ...) -> EtcdMembership with a TTL-second lease; closed at teardown."""
    yield from _closed_at_teardown(lambda *args, **kw: EtcdMembership(*args, **{"lease_ttl_s": TTL, **kw}))


def ids(m) -> list[str]:
    return m.view.ids


# ---- the view and static membership --------------------------------------------------------------

def test_static_membership_serves_the_configured_members(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("x" * 32)
    secret.chmod(0o600)
    config = load_config({"tiers": {"dram": {}}, "cluster": {
        "node_id": "a", "listen_port": 7700, "secret_file": str(secret), "members": [
            {"id": "b", "host": "10.0.0.2", "port": 7700, "capacity": "2GiB"},
            {"id": "a", "host": "::1", "port": 7700, "capacity": "1GiB"}]}}, env={})
    membership = open_membership(config)
    assert isinstance(membership, StaticMembership) and membership.healthy
    view = membership.view
    assert view.epoch == 1 and view.ids == ["a", "b"]
    assert view.member("a").address == "[::1]:7700" and view.member("b").weight == float(2 << 30)
    assert view.placement.ids == ["a", "b"] and view.holders("k", 2) in (["a", "b"], ["b", "a"])


def test_a_member_marked_down_holds_nothing_until_marked_up():
    membership = StaticMembership([member("a"), member("b"), member("c")])
    seen = []
    membership.add_listener(lambda new, old: seen.append((new.epoch, new.member("b").healthy)))
    membership.mark_health("b", False)
    assert [m.id for m in membership.view.live_members()] == ["a", "c"]
    assert all("b" not in membership.view.holders(f"k{i}", 3) for i in range(100))
    membership.mark_health("b", True)
    assert seen == [(1, False), (1, True)]


def test_reads_ask_the_previous_view_only_during_the_grace_window():
    first = View(5, (member("a"), member("b")))
    second = first.successor(6, [member("a"), member("b"), member("c")])
    assert second.previous == first and second.previous.previous is None
    assert second.read_views(30.0) == (second, first)
    assert second.read_views(30.0, now=second.changed_at + 31) == (second,)
    assert second.successor(7, [member("a")]).previous == second  # one level deep only
    assert second.diff(first) == (["c"], [], [])


# ---- etcd: join and leave --------------------------------------------------------------------------

@needs_etcd
def test_members_see_each_others_join_and_clean_leave(shared_etcd, prefix, members):
    a = members([shared_etcd.url], prefix, member("a", 7001))
    changes = []
    a.add_listener(lambda new, old: changes.append((old.ids, new.ids, new.epoch > old.epoch)))
    b = members([shared_etcd.url], prefix, member("b", 7002))
    c = members([shared_etcd.url], prefix, member("c", 7003, weight=2.0))
    for m in (a, b, c):
        took = wait_for(lambda: ids(m) == ["a", "b", "c"], TTL + 1, "join seen")
        print(f"join seen by {m.view.ids} in {took * 1000:.0f} ms")
    assert a.view.member("c") == member("c", 7003, weight=2.0)
    assert a.view.epoch == b.view.epoch == c.view.epoch
    c.close()
    for m in (a, b):
        took = wait_for(lambda: ids(m) == ["a", "b"], TTL + 1, "clean leave seen")
        print(f"clean leave seen in {took * 1000:.0f} ms")
    # Listeners run after the view is published: wait for the callback too, not only the view.
    wait_for(lambda: changes and changes[-1] == (["a", "b", "c"], ["a", "b"], True), TTL + 1, "listener told")
    assert all(up for _, _, up in changes)
    assert a.healthy and a.stats()["registrations"] == 1


CHILD = textwrap.dedent("""
    import sys, time
    from mooncake_hicache.cluster import EtcdMembership, Member
    url, prefix, node_id = sys.argv[1:4]
    m = EtcdMembership([url], prefix, Member(node_id, "127.0.0.1", 7100, 1.0), lease_ttl_s=2)
    print("registered", flush=True)
    time.sleep(60)
""")


def start_child(url: str, prefix: str, node_id: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, url, prefix, node_id], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@needs_etcd
def test_a_killed_member_leaves_every_view_within_the_lease_ttl(shared_etcd, prefix, members):
    a = members([shared_etcd.url], prefix, member("a"))
    b = members([shared_etcd.url], prefix, member("b"))
    child = start_child(shared_etcd.url, prefix, "killed")
    try:
        wait_for(lambda: "killed" in ids(a) and "killed" in ids(b), 30, "the child's registration seen")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        for m in (a, b):
            took = wait_for(lambda: ids(m) == ["a", "b"], TTL + 1, "the killed member's leave seen")
            print(f"killed member left the view {took:.2f} s after SIGKILL (lease TTL {TTL} s)")
    finally:
        child.kill()
        child.wait(timeout=10)


@needs_etcd
def test_a_duplicate_id_is_refused_with_a_clear_error(shared_etcd, prefix, members):
    members([shared_etcd.url], prefix, member("a", 7001))
    t0 = time.monotonic()
    with pytest.raises(DuplicateMemberError) as info:
        members([shared_etcd.url], prefix, member("a", 7002))
    message = str(info.value)
    assert "already registered by a live node" in message and "127.0.0.1:7001" in message
    assert "cluster.node_id" in message
    assert time.monotonic() - t0 < TTL + 3  # it waits out one lease TTL, no more
    session = EtcdSession([shared_etcd.url], 2.0)
    _, pairs = session.read_prefix((prefix + "members/").encode())
    assert len(pairs) == 1 and b"7001" in pairs[0][1]  # the first registration is untouched


@needs_etcd
def test_a_restarted_node_takes_its_id_back_once_the_old_lease_expires(shared_etcd, prefix, members):
    watcher = members([shared_etcd.url], prefix, None)
    child = start_child(shared_etcd.url, prefix, "a")
    try:
        wait_for(lambda: ids(watcher) == ["a"], 30, "the child's registration seen")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        t0 = time.monotonic()
        again = members([shared_etcd.url], prefix, member("a", 7200))
        print(f"restarted node registered {time.monotonic() - t0:.2f} s after its previous life was killed")
        wait_for(lambda: watcher.view.member("a") == member("a", 7200), TTL + 1, "the new life seen")
        assert again.healthy
    finally:
        child.kill()
        child.wait(timeout=10)


@needs_etcd
def test_a_watch_only_node_sees_the_members_without_joining(shared_etcd, prefix, members):
    a = members([shared_etcd.url], prefix, member("a"))
    watcher = members([shared_etcd.url], prefix, None)
    assert ids(watcher) == ["a"]
    members([shared_etcd.url], prefix, member("b"))
    wait_for(lambda: ids(watcher) == ["a", "b"] and ids(a) == ["a", "b"], TTL + 1, "join seen by the watcher")
    assert watcher.stats()["registered_as"] is None


@needs_etcd
def test_a_dead_endpoint_is_skipped_for_a_live_one(shared_etcd, prefix, members):
    dead = f"http://127.0.0.1:{free_port()}"
    a = members([dead, shared_etcd.url], prefix, member("a"))
    b = members([shared_etcd.url], prefix, member("b"))
    wait_for(lambda: ids(a) == ["a", "b"], TTL + 1, "join seen through the second endpoint")
    assert a.stats()["endpoint"] == shared_etcd.url and a.healthy


def test_an_unreachable_etcd_at_start_is_a_clear_error(prefix):
    t0 = time.monotonic()
    with pytest.raises(MembershipError, match="cannot reach etcd.*cluster.etcd.endpoints"):
        EtcdMembership([f"http://127.0.0.1:{free_port()}"], prefix, member("a"), lease_ttl_s=TTL)
    assert time.monotonic() - t0 < 5


@needs_etcd
def test_a_malformed_registration_is_ignored_and_logged(shared_etcd, prefix, members, caplog):
    session = EtcdSession([shared_etcd.url], 2.0)
    session.put((prefix + "members/junk").encode(), b"not json")
    with caplog.at_level(logging.WARNING, logger="mooncake_hicache.cluster"):
        a = members([shared_etcd.url], prefix, member("a"))
    assert ids(a) == ["a"]
    assert any("malformed registration" in r.getMessage() for r in caplog.records)
    session.put((prefix + "members/b").encode(), b'{"id": "b", "host": "h", "port": 1, "weight": 1}')
    wait_for(lambda: ids(a) == ["a", "b"], TTL + 1, "a well-formed registration seen")


@needs_etcd
def test_open_membership_registers_the_node_with_its_capacity(shared_etcd, prefix, tmp_path):
    config = load_config({"tiers": {"dram": {"capacity": "64MiB", "slab_size": "4MiB"}}, "cluster": {
        "node_id": "node-x", "listen_port": 7300, "secret": "y" * 20,
        "etcd": {"endpoints": [shared_etcd.url], "prefix": prefix, "lease_ttl_s": TTL}}}, env={})
    with open_membership(config) as membership:
        assert isinstance(membership, EtcdMembership)
        assert membership.view.member("node-x") == Member("node-x", "127.0.0.1", 7300, float(64 << 20))
    watcher = EtcdMembership([shared_etcd.url], prefix, None, lease_ttl_s=TTL)
    try:
        assert ids(watcher) == []  # closed = left at once (lease revoked)
    finally:
        watcher.close()


# ---- etcd: failures ---------------------------------------------------------------------------------

@needs_etcd
def test_etcd_down_keeps_the_last_view_then_back_re_registers_and_views_converge(etcd, prefix, members, caplog):
    a = members([etcd.url], prefix, member("a"))
    b = members([etcd.url], prefix, member("b"))
    c = members([etcd.url], prefix, member("c"))
    wait_for(lambda: all(ids(m) == ["a", "b", "c"] for m in (a, b, c)), TTL + 1, "three members seen")
    before = a.view
    with caplog.at_level(logging.WARNING, logger="mooncake_hicache.cluster"):
        etcd.stop()
        took = wait_for(lambda: not a.healthy and not b.healthy, TTL + 1, "etcd loss reported")
    print(f"etcd loss reported after {took:.2f} s")
    assert any("keeping the last view" in r.getMessage() for r in caplog.records)
    assert a.stats()["problems"] and a.stats()["etcd_failures"] >= 1
    c.close()  # leaves while etcd is down: its lease cannot be revoked, it must expire
    time.sleep(TTL / 2)
    assert a.view == before and a.view.holders("some-key", 2) == before.holders("some-key", 2)

    etcd.start()
    took = wait_for(lambda: a.healthy and b.healthy, 10, "etcd recovery reported")
    print(f"etcd recovery seen after {took:.2f} s")
    # etcd renews every lease when it comes back (leader promotion), so c's expires TTL after
    # that, plus etcd's 0.5 s expiry check
    took = wait_for(lambda: ids(a) == ids(b) == ["a", "b"], TTL + 3, "c's expired lease seen by both")
    print(f"views converged {took:.2f} s after recovery")
    d = members([etcd.url], prefix, member("d"))
    wait_for(lambda: ids(a) == ids(b) == ids(d) == ["a", "b", "d"], TTL + 1, "a join after recovery")


@needs_etcd
def test_a_node_cut_off_from_etcd_keeps_its_view_and_registers_again_when_back(shared_etcd, prefix, members):
    """etcd stays up; only node a loses it (a proxy between them is cut): a keeps serving its
    last view and says so, the others see a leave when its lease expires, and once the link is
    back a registers again and every view converges."""
    proxy = TcpProxy(shared_etcd.client_port)
    try:
        a = members([proxy.url], prefix, member("a"))
        b = members([shared_etcd.url], prefix, member("b"))
        wait_for(lambda: ids(a) == ids(b) == ["a", "b"], TTL + 1, "both registered")
        proxy.cut()
        took = wait_for(lambda: not a.healthy, TTL + 1, "a reports etcd lost")
        print(f"cut-off reported after {took:.2f} s")
        took = wait_for(lambda: ids(b) == ["b"], TTL + 1, "a's lease expired, seen by b")
        print(f"b saw a leave {took:.2f} s after the cut")
        assert ids(a) == ["a", "b"]  # a keeps its last view
        proxy.restore()
        took = wait_for(lambda: a.healthy and ids(b) == ids(a) == ["a", "b"], TTL + 1, "a back in every view")
        print(f"a registered again and views converged {took:.2f} s after the link came back")
        assert a.stats()["registrations"] == 2
    finally:
        proxy.close()


@needs_etcd
def test_a_node_whose_id_was_taken_while_cut_off_reports_it_and_does_not_steal_it(shared_etcd, prefix, members):
    proxy = TcpProxy(shared_etcd.client_port)
    try:
        a = members([proxy.url], prefix, member("a", 7001))
        watcher = members([shared_etcd.url], prefix, None)
        proxy.cut()
        wait_for(lambda: ids(watcher) == [], TTL + 1, "a's lease expired")
        members([shared_etcd.url], prefix, member("a", 7002))  # another node takes the id
        proxy.restore()
        wait_for(lambda: "registration" in a.stats()["problems"], TTL + 1, "the conflict reported")
        assert "already registered by a live node" in a.stats()["problems"]["registration"]
        assert not a.healthy
        time.sleep(TTL / 2)
        assert watcher.view.member("a").port == 7002  # the new holder keeps the id
    finally:
        proxy.close()


@needs_etcd
def test_a_lost_lease_is_registered_again(shared_etcd, prefix, members):
    a = members([shared_etcd.url], prefix, member("a"))
    b = members([shared_etcd.url], prefix, member("b"))
    wait_for(lambda: ids(b) == ["a", "b"], TTL + 1, "both registered")
    session = EtcdSession([shared_etcd.url], 2.0)
    session.revoke(a._lease_id)  # as if etcd had expired it: the key is deleted
    took = wait_for(lambda: a.stats()["registrations"] == 2, TTL + 1, "a registered again")
    wait_for(lambda: ids(b) == ["a", "b"], TTL + 1, "a back in b's view")
    print(f"re-registered {took:.2f} s after its lease was revoked")
    assert a.healthy


@needs_etcd
def test_the_watch_resumes_after_a_compaction(etcd, prefix, members):
    """The watch thread is held between reading the members and opening its watch; meanwhile a
    member joins and etcd compacts past that point, so the watch is refused as compacted: the
    membership must re-read the members and watch again."""
    held, release = threading.Event(), threading.Event()

    def hold_first_watch(revision: int) -> None:
        if not held.is_set():
            held.set()
            release.wait(10)
    a = members([etcd.url], prefix, member("a"), _before_watch=hold_first_watch)
    assert held.wait(5)
    members([etcd.url], prefix, member("b"))
    session = EtcdSession([etcd.url], 2.0)
    revision, _ = session.read_prefix(b"/")
    session.put(b"/unrelated", b"x")
    session.compact(revision + 1)
    release.set()
    wait_for(lambda: ids(a) == ["a", "b"], TTL + 1, "the join made before the compaction")
    assert a.stats()["compactions"] == 1
    members([etcd.url], prefix, member("c"))
    wait_for(lambda: ids(a) == ["a", "b", "c"], TTL + 1, "a join after the compaction")
    assert a.healthy
