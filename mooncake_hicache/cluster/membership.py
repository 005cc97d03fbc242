"""Who is in the cluster: a ``View`` kept current from a static list or from etcd.

* ``StaticMembership``: the members listed in ``cluster.members``; one view, epoch 1.
* ``EtcdMembership``: each node registers itself under ``<prefix>members/<id>`` with a lease
  (a transaction on ``create_revision == 0``, so a second node with the same id is refused), keeps
  the lease alive from a thread, and watches the prefix from another; the etcd revision of a
  change is the view's epoch. After a watch failure or a compaction it re-reads the prefix. When
  etcd goes away the last view keeps serving, ``healthy`` turns false and one log line says so;
  when etcd comes back the node registers again if its lease was lost, and the views converge.

Only node processes use this module (ranks learn the view from their node). Listeners added
with ``add_listener(fn)`` are called as ``fn(new_view, old_view)`` on the thread that saw the
change (the watch thread for etcd), with no lock held; an exception in a listener is logged.
Every public method may be called from any thread.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
from collections import Counter
from typing import Callable, Iterable, Optional

from ..config import ClusterConfig, Config, ConfigError
from ..errors import MooncakeHiCacheError
from .etcd_session import EtcdSession, EtcdUnreachable, WatchCompacted, unb64
from .view import Member, View

log = logging.getLogger("mooncake_hicache.cluster")

__all__ = ["DuplicateMemberError", "EtcdMembership", "Membership", "MembershipError",
           "StaticMembership", "open_membership", "own_weight"]

Listener = Callable[[View, View], None]


class MembershipError(MooncakeHiCacheError, RuntimeError):
    """Membership cannot start (etcd unreachable, bad registration). The message says what to do."""


class DuplicateMemberError(MembershipError):
    """Another live node is registered with this node's id."""


class Membership:
    """The current view and its listeners; subclasses feed it changes through ``_publish``."""

    kind = "none"

    def __init__(self, grace_s: float):
        self.grace_s = grace_s
        self._lock = threading.Lock()  # guards _view, _listeners (and subclass state it names)
        self._view = View(0, ())
        self._listeners: list[Listener] = []

    @property
    def view(self) -> View:
        with self._lock:
            return self._view

    @property
    def healthy(self) -> bool:
        """Whether the source of the view is reachable (a static list always is)."""
        return True

    def read_views(self) -> tuple[View, ...]:
        """The views a read asks, newest first (the previous one during the grace window)."""
        return self.view.read_views(self.grace_s)

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def mark_health(self, member_id: str, healthy: bool) -> None:
        """Record what the data path saw (a member timed out, or answered again); the epoch stays."""
        self._swap(lambda old: old.with_health(member_id, healthy))

    def stats(self) -> dict:
        view = self.view
        return {"kind": self.kind, "epoch": view.epoch, "members": len(view.members),
                "live_members": len(view.live_members()), "healthy": self.healthy}

    def close(self) -> None:
        pass

    def __enter__(self) -> "Membership":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- for subclasses ----------------------------------------------------------------------

    def _publish(self, epoch: int, members: Iterable[Member]) -> bool:
        """Make ``members`` the view at ``epoch`` if they differ from the current ones; members
        whose registration is unchanged keep the health the data path marked. Returns whether
        the view changed."""
        members = list(members)

        def change(old: View) -> View:
            kept = [self._keep_health(old, m) for m in members]
            if sorted(kept, key=lambda m: m.id) == list(old.members):
                return old
            return old.successor(epoch, kept)
        return self._swap(change)

    @staticmethod
    def _keep_health(old: View, member: Member) -> Member:
        before = old.member(member.id)
        if before is not None and dataclasses.replace(member, healthy=before.healthy) == before:
            return before
        return member

    def _swap(self, change: Callable[[View], View]) -> bool:
        with self._lock:
            old = self._view
            new = change(old)
            self._view = new
            listeners = list(self._listeners)
        if new is old:
            return False
        self._log_change(new, old)
        for listener in listeners:
            try:
                listener(new, old)
            except Exception:  # a listener's bug must not stop membership
                log.exception("membership listener %r failed", listener)
        return True

    @staticmethod
    def _log_change(new: View, old: View) -> None:
        if new.epoch < old.epoch:
            log.warning("membership epoch went back from %d to %d (was etcd's data reset?)", old.epoch, new.epoch)
        joined, left, changed = new.diff(old)
        parts = [f"+{i}" for i in joined] + [f"-{i}" for i in left] + [f"~{i}" for i in changed]
        log.info("membership epoch %d: %s (%d members, %d live)", new.epoch, " ".join(parts) or "no change",
                 len(new.members), len(new.live_members()))


class StaticMembership(Membership):
    """The members of ``cluster.members``: one view at epoch 1, changed only by health marks."""

    kind = "static"

    def __init__(self, members: Iterable[Member], grace_s: float = 30.0):
        super().__init__(grace_s)
        self._publish(1, members)

    @classmethod
    def from_config(cls, cluster: ClusterConfig) -> "StaticMembership":
        members = [Member(m.id, m.host, m.port, m.placement_weight) for m in cluster.members]
        return cls(members, cluster.grace_window_ms / 1000)


class EtcdMembership(Membership):
    """Membership from etcd (module docstring). ``me`` is this node's registration (None: watch
    only, for a node without a listener). Raises ``MembershipError`` when no endpoint answers at
    start and ``DuplicateMemberError`` when another live node holds ``me.id``.

    Threads: ``keepalive`` refreshes the lease every TTL/3 and registers again when the lease or
    the key was lost; ``watch`` follows the prefix. ``_lock`` also guards ``_problems``,
    ``_counters`` and ``_stream``; ``_members`` belongs to the watch thread and ``_lease_id`` to
    the keepalive thread (``close`` reads it after joining that thread)."""

    kind = "etcd"

    def __init__(self, endpoints: list[str], prefix: str, me: Optional[Member], lease_ttl_s: int = 5,
                 grace_s: float = 30.0, *, _before_watch: Optional[Callable[[int], None]] = None):
        super().__init__(grace_s)
        self.endpoints = list(endpoints)
        self._session = EtcdSession(self.endpoints, timeout_s=max(0.5, lease_ttl_s / 3))
        self._prefix = (prefix + "members/").encode()
        self._me, self._ttl = me, lease_ttl_s
        self._before_watch = _before_watch  # test hook: called with the revision before each watch opens
        self._lease_id = 0
        self._members: dict[str, Member] = {}
        self._problems: dict[str, str] = {}
        self._stream = None
        self._stopping = threading.Event()
        self._wake = threading.Event()  # wakes the keepalive thread (stop, or register again)
        self._must_register = False
        self._counters: Counter = Counter()  # guarded by _lock
        revision = self._start()
        self._threads = [threading.Thread(target=self._watch_loop, args=(revision,), name="membership-watch",
                                          daemon=True)]
        if me is not None:
            self._threads.append(threading.Thread(target=self._keepalive_loop, name="membership-keepalive",
                                                  daemon=True))
        for t in self._threads:
            t.start()

    @property
    def healthy(self) -> bool:
        with self._lock:
            return not self._problems

    def stats(self) -> dict:
        with self._lock:
            problems = dict(self._problems)
            counters = {k: self._counters[k] for k in ("registrations", "watch_restarts", "compactions",
                                                       "etcd_failures")}
        out = super().stats()
        out.update(endpoint=self._session.endpoint, registered_as=self._me.id if self._me else None,
                   problems=problems, **counters)
        return out

    def _count(self, name: str) -> None:
        with self._lock:
            self._counters[name] += 1

    def close(self) -> None:
        """Leave the cluster: stop the threads and revoke the lease (peers see the leave at once)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake.set()
        for t in self._threads[1:]:
            t.join(timeout=self._ttl + 2)
        if self._lease_id:
            try:
                self._session.revoke(self._lease_id)
            except Exception as e:  # etcd gone: the lease expires by itself
                log.info("could not revoke the membership lease (%s); it expires within %d s", type(e).__name__, self._ttl)
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.abort()
        self._threads[0].join(timeout=self._ttl + 2)

    # ---- registration ------------------------------------------------------------------------

    @property
    def _key(self) -> bytes:
        return self._prefix + self._me.id.encode()

    def _registration(self) -> bytes:
        me = self._me
        return json.dumps({"id": me.id, "host": me.host, "port": me.port, "weight": me.weight,
                           "hostname": socket.gethostname(), "pid": os.getpid(), "version": 1}).encode()

    def _start(self) -> int:
        try:
            if self._me is not None:
                self._register_at_start()
            return self._reload()
        except EtcdUnreachable as e:
            raise MembershipError(f"cannot reach etcd ({e}); check cluster.etcd.endpoints and that etcd runs") from None
        except self._session.etcd_errors as e:
            raise MembershipError(f"etcd refused the registration of {self._me.id if self._me else 'a watcher'}: "
                                  f"{e.detail_text or type(e).__name__}") from None

    def _register_at_start(self) -> None:
        """Create our key; a key left by a previous life of this node (its lease still counting
        down) is waited out; a key whose lease stays alive is a duplicate."""
        self._lease_id = self._session.grant(self._ttl)
        deadline = None
        while True:
            holder = self._session.create(self._key, self._registration(), self._lease_id)
            if holder is None or holder["lease"] == self._lease_id:
                self._count("registrations")
                return
            if deadline is None:
                deadline = time.monotonic() + self._holder_ttl(holder) + 1
                log.info("node id %r is registered by another lease (%s); waiting up to %.0f s for it to expire",
                         self._me.id, _describe(holder), deadline - time.monotonic())
            if time.monotonic() > deadline:
                self._session.revoke(self._lease_id)
                self._lease_id = 0
                raise DuplicateMemberError(self._duplicate_message(holder))
            time.sleep(0.2)
            self._session.keepalive(self._lease_id)  # ours must outlive the wait

    def _holder_ttl(self, holder: dict) -> float:
        if not holder["lease"]:
            return 0.0
        remaining, granted = self._session.lease_ttl(holder["lease"])
        return max(remaining, granted, 0)

    def _duplicate_message(self, holder: dict) -> str:
        key = self._key.decode()
        if not holder["lease"]:
            return (f"node id {self._me.id!r} is taken: etcd key {key} has no lease (written by hand?); "
                    f"delete it (etcdctl del {key}) or give this node another cluster.node_id")
        return (f"node id {self._me.id!r} is already registered by a live node ({_describe(holder)}); give this "
                f"node another cluster.node_id, or stop the other node (its registration expires "
                f"{self._ttl} s after it stops)")

    def _register_again(self) -> None:
        """From the keepalive thread, after the lease or the key was lost."""
        if not self._lease_id or self._session.keepalive(self._lease_id) <= 0:
            self._lease_id = self._session.grant(self._ttl)
        self._must_register = False
        holder = self._session.create(self._key, self._registration(), self._lease_id)
        if holder is not None and holder["lease"] != self._lease_id:
            self._must_register = True
            self._set_problem("registration", self._duplicate_message(holder))
            return
        self._clear_problem("registration")
        if holder is None:  # else the key is there under our lease already: nothing was lost
            self._count("registrations")
            log.info("registered %s at %s in etcd again (lease %x)", self._me.id, self._me.address, self._lease_id)

    def _request_register(self) -> None:
        if self._me is not None and not self._stopping.is_set():
            self._must_register = True
            self._wake.set()

    def _keepalive_loop(self) -> None:
        while True:
            self._wake.wait(self._ttl / 3)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                if self._must_register or self._session.keepalive(self._lease_id) <= 0:
                    self._register_again()
                self._clear_problem("lease")
            except EtcdUnreachable as e:
                self._set_problem("lease", str(e))
                self._abort_watch()  # the watch reconnects (and re-reads) once etcd answers again
            except Exception as e:  # an etcd error answer: keep the last view, retry next round
                self._set_problem("lease", f"{type(e).__name__}: {e}")

    # ---- the view ------------------------------------------------------------------------------

    def _reload(self) -> int:
        """Read every registration at one revision and publish it; returns the revision."""
        revision, pairs = self._session.read_prefix(self._prefix)
        members = {}
        for key, value in pairs:
            member = self._parse(key, value)
            if member is not None:
                members[member.id] = member
        self._members = members
        if self._me is not None and self._me.id not in members and self._lease_id:
            self._request_register()
        self._publish(revision, members.values())
        return revision

    def _parse(self, key: bytes, value: bytes) -> Optional[Member]:
        member_id = key[len(self._prefix):].decode(errors="replace")
        try:
            d = json.loads(value)
            member = Member(str(d["id"]), str(d["host"]), int(d["port"]), float(d["weight"]))
        except (ValueError, KeyError, TypeError):
            member = None
        if member is None or member.id != member_id:
            log.warning("ignoring the malformed registration under etcd key %r", key.decode(errors="replace"))
            return None
        return member

    def _apply(self, result: dict) -> None:
        """Apply one watch message's events to the members and publish them."""
        epoch = 0
        for event in result.get("events", []):
            kv = event["kv"]
            key = unb64(kv["key"])
            epoch = max(epoch, int(kv.get("mod_revision", 0)))
            member_id = key[len(self._prefix):].decode(errors="replace")
            if event.get("type") == "DELETE":
                self._members.pop(member_id, None)
                if self._me is not None and member_id == self._me.id:
                    self._request_register()
            else:
                member = self._parse(key, unb64(kv.get("value", "")))
                if member is not None:
                    self._members[member.id] = member
        if epoch:
            self._publish(epoch, self._members.values())

    def _watch_loop(self, revision: Optional[int]) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                if revision is None:
                    revision = self._reload()
                self._follow(revision)
            except WatchCompacted:
                self._count("compactions")
                log.info("membership watch fell behind a compaction; re-reading the members")
                backoff = 0.0
            except Exception as e:  # WatchFailed, EtcdUnreachable, an etcd error answer: never die
                if self._stopping.is_set():
                    return
                self._count("watch_restarts")
                self._set_problem("watch", f"{type(e).__name__}: {e}")
                backoff = min(1.0, max(0.1, backoff * 2))
            revision = None
            self._stopping.wait(backoff)

    def _follow(self, revision: int) -> None:
        """Watch from ``revision + 1`` until the stream ends (it always ends by raising)."""
        if self._before_watch is not None:
            self._before_watch(revision)
        stream = self._session.watch(self._prefix, revision + 1)
        with self._lock:
            self._stream = stream
        try:
            if self._stopping.is_set():
                return
            for result in stream.messages():
                if result.get("created"):
                    self._clear_problem("watch")
                self._apply(result)
        finally:
            with self._lock:
                self._stream = None
            stream.abort()

    def _abort_watch(self) -> None:
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.abort()

    # ---- health --------------------------------------------------------------------------------

    def _set_problem(self, kind: str, message: str) -> None:
        with self._lock:
            first = not self._problems
            self._problems[kind] = message
            view = self._view
        if first:
            self._count("etcd_failures")
            log.warning("etcd unreachable or refusing (%s: %s): keeping the last view (epoch %d, %d members) "
                        "until it returns", kind, message, view.epoch, len(view.members))

    def _clear_problem(self, kind: str) -> None:
        with self._lock:
            if kind not in self._problems:
                return
            del self._problems[kind]
            recovered = not self._problems
            view = self._view
        if recovered:
            log.info("etcd reachable again at %s: view epoch %d, %d members", self._session.endpoint,
                     view.epoch, len(view.members))


def _describe(holder: dict) -> str:
    try:
        d = json.loads(holder["value"])
        where = f"{d.get('host')}:{d.get('port')}, host {d.get('hostname')}, pid {d.get('pid')}"
    except (ValueError, TypeError, AttributeError):
        where = "unreadable registration"
    return f"{where}, lease {holder['lease']:x}"


def own_weight(config: Config) -> float:
    """This node's placement weight: ``cluster.capacity``, else the DRAM tier's capacity, else the
    NVMe tier's."""
    cluster = config.cluster
    if cluster is not None and cluster.capacity is not None:
        return float(cluster.capacity)
    for tier in (config.tiers.dram, config.tiers.nvme):
        if tier is not None and tier.capacity:
            return float(tier.capacity)
    raise ConfigError("cluster.capacity", "cannot tell what this node contributes; set cluster.capacity (e.g. 64GiB)")


def open_membership(config: Config) -> Membership:
    """The membership source ``config.cluster`` asks for. A node with ``listen_port: 0`` watches
    etcd without registering (it serves no peer)."""
    cluster = config.cluster
    if cluster is None:
        raise ValueError("open_membership needs a configuration with a cluster section")
    if cluster.etcd is None:
        return StaticMembership.from_config(cluster)
    me = None
    if cluster.listen_port:
        me = Member(cluster.self_id, cluster.advertised_host, cluster.listen_port, own_weight(config))
    return EtcdMembership(list(cluster.etcd.endpoints), cluster.etcd.prefix, me, cluster.etcd.lease_ttl_s,
                          cluster.grace_window_ms / 1000)
