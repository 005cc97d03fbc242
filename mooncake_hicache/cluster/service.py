"""What a node does as a cluster member (``cluster:`` in its config; docs/cluster.md).

``ClusterService(config, node_server)`` runs next to the node's Unix-socket server:

* a ``PeerServer`` on ``cluster.listen_host:listen_port`` (that address only; the node raised its
  open-file limit for its connections: idle ones cost descriptors, not threads) serves the node's
  store to the ranks and nodes of other hosts over TCP, each connection authenticated with the
  cluster secret;
* membership (``open_membership``: static list or etcd) gives the view; every new view is pushed
  into the node's C++ side (``NodeServer.set_view``), which serves it to the host's ranks (VIEW
  on the Unix socket: ranks never talk to etcd) and puts its epoch in every TCP reply;
* a prober thread asks every member for its STATS once a second (all at once, over the same
  authenticated TCP path the data uses): a member that does not answer is marked down in the view
  (``Membership.mark_health``: the epoch stays, placement skips it) and up again when it answers;
  the figures feed ``stats()["cluster"]`` (``/metrics``) and ``mooncake-hicache cluster status``.

Threads: the membership's own (etcd watch and keepalive), the PeerServer's (C++), and the prober.
``_lock`` guards ``_figures``. ``close()`` leaves the cluster (revokes the etcd lease) and stops
the peer server; call it before the node server stops.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Optional

from .. import _native
from ..config import Config
from ..errors import ConfigError, StoreError
from .membership import Membership, open_membership
from .transport import choose_transport
from .view import View

log = logging.getLogger("mooncake_hicache.cluster")

PROBE_INTERVAL_S = 1.0
# Per-member figures of stats()["cluster"] (as member_<name>: {member id: value}).
MEMBER_FIGURES = ("up", "dram_pages", "nvme_pages", "dram_bytes", "nvme_bytes", "dram_capacity", "nvme_capacity",
                  "rtt_ms", "weight")


def view_dict(view: View, self_id: str, grace_s: float, now: Optional[float] = None) -> dict:
    """``view`` as ``NodeServer.set_view`` / ``PoolClient.set_view`` take it; the previous view
    goes along while the grace window of ``grace_s`` seconds is open."""
    now = time.monotonic() if now is None else now
    left = grace_s - (now - view.changed_at)
    previous = view.previous if view.previous is not None and view.previous.members and left > 0 else None
    return {"epoch": view.epoch, "self_id": self_id, "grace_ms": int(left * 1000) if previous else 0,
            "members": [m.to_dict() for m in view.members],
            "previous_epoch": previous.epoch if previous else 0,
            "previous_members": [m.to_dict() for m in previous.members] if previous else []}


def _native_error(e: Exception, cluster) -> Exception:
    kind, message = e.args if len(e.args) == 2 else ("io", str(e))
    if kind == "invalid" and cluster.transport != "tcp" and "RDMA" in message.upper():
        return ConfigError("cluster.transport", message)
    if kind == "invalid":
        return ConfigError("cluster.listen_host", message)
    if kind == "in_use":
        return ConfigError("cluster.listen_port", message)
    return StoreError(message)


class ClusterService:
    def __init__(self, config: Config, node_server):
        cluster = config.cluster
        self.config = config
        self.self_id = cluster.self_id if cluster.listen_port else ""
        self._server = node_server
        self._lock = threading.Lock()
        self._figures: dict = {}
        self._stop = threading.Event()
        secret = cluster.read_secret()
        self.peer_server = None
        if cluster.listen_port:
            transport = choose_transport(cluster, who=f"node {cluster.self_id}")
            self.peer_server = _native.PeerServer(
                node_server, cluster.self_id, secret, cluster.listen_host, cluster.listen_port,
                handshake_timeout_ms=cluster.connect_timeout_ms, request_timeout_ms=cluster.request_timeout_ms,
                **transport.native_kwargs(cluster.rdma.gid_index))
            try:
                self.peer_server.start()
            except _native.EngineError as e:
                raise _native_error(e, cluster) from None
        self.prober = _native.PoolClient(None, replicas=cluster.replicas, spill_depth=cluster.spill_depth,
                                         connect_timeout_ms=cluster.connect_timeout_ms,
                                         request_timeout_ms=cluster.request_timeout_ms, secret=secret)
        try:
            self.membership: Membership = open_membership(config)
        except Exception:
            self._stop_peer_server()
            raise
        self.membership.add_listener(lambda new, old: self._push(new))
        self._push(self.membership.view)
        self._thread = threading.Thread(target=self._probe_loop, name="cluster-probe", daemon=True)
        self._thread.start()
        where = f"{cluster.listen_host}:{self.peer_server.port}" if self.peer_server else "no listener"
        log.info("cluster member %s (%s): %s membership, epoch %d, %d members", cluster.self_id, where,
                 self.membership.kind, self.membership.view.epoch, len(self.membership.view.members))

    @property
    def port(self) -> int:
        return self.peer_server.port if self.peer_server else 0

    def _push(self, view: View) -> None:
        d = view_dict(view, self.self_id, self.membership.grace_s)
        self._server.set_view(d)
        self.prober.set_view(d)

    # ---- health and figures --------------------------------------------------------------------

    def _probe_loop(self) -> None:
        timeout = self.config.cluster.request_timeout_ms
        while not self._stop.wait(PROBE_INTERVAL_S):
            try:
                self.probe_once(timeout)
            except Exception:  # the prober must never die
                log.exception("cluster probe failed")

    def probe_once(self, timeout_ms: int) -> list:
        results = self.prober.probe(timeout_ms, False)
        view = self.membership.view
        figures = {}
        for r in results:
            member = view.member(r["id"])
            if r["id"] == self.self_id:
                figures[r["id"]] = _member_figures(self._server_stats(), member, True, 0.0)
                continue
            figures[r["id"]] = _member_figures(r["stats"], member, r["ok"], r["rtt_ms"], r["error"])
            if member is not None and member.healthy != r["ok"]:
                log.log(logging.INFO if r["ok"] else logging.WARNING, "cluster member %s at %s is %s%s", r["id"],
                        r["address"], "up again" if r["ok"] else "down", "" if r["ok"] else f" ({r['error']})")
                self.membership.mark_health(r["id"], r["ok"])
        for line in self.prober.take_notes():
            log.debug("%s", line)
        with self._lock:
            self._figures = figures
        return results

    def _server_stats(self) -> dict:
        return json.loads(self._server.stats_json())

    def stats(self) -> dict:
        """The ``cluster`` section of the node's figures: this node, the view, and per member
        (label ``member``) up, pages, bytes and capacity from the last probe."""
        view = self.membership.view
        with self._lock:
            figures = dict(self._figures)
        out = {"node_id": self.config.cluster.self_id, "membership": self.membership.kind,
               "membership_healthy": self.membership.healthy, "epoch": view.epoch,
               "members": len(view.members), "live_members": len(view.live_members()),
               "in_grace": len(view.read_views(self.membership.grace_s)) > 1, "port": self.port}
        ms = self.membership.stats()
        for key in ("registrations", "watch_restarts", "etcd_failures"):  # etcd membership only
            if key in ms:
                out[f"membership_{key}"] = ms[key]
        for key in MEMBER_FIGURES:
            out[f"member_{key}"] = {i: f[key] for i, f in sorted(figures.items())}
        out["member_address"] = {m.id: m.address for m in view.members}
        out["member_error"] = {i: f["error"] for i, f in sorted(figures.items()) if f["error"]}
        return out

    def take_notes(self, with_levels: bool = False) -> list:
        """The peer server's lines (refused handshakes, ...), for ``tiers.log_notes``."""
        return self.peer_server.take_notes(with_levels=with_levels) if self.peer_server else []

    # ---- life ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Leave the cluster (an etcd lease is revoked: peers see the leave at once), stop serving peers."""
        self._stop.set()
        self._thread.join(timeout=self.config.cluster.request_timeout_ms / 1000 + 2)
        self.membership.close()
        self.prober.close()
        self._stop_peer_server()

    def _stop_peer_server(self) -> None:
        if self.peer_server is not None:
            self.peer_server.stop()


def _member_figures(stats: Optional[dict], member, ok: bool, rtt_ms: float, error: str = "") -> dict:
    stats = stats or {}
    out = {"up": int(bool(ok)), "rtt_ms": round(rtt_ms, 3), "weight": member.weight if member is not None else 0.0,
           "error": error}
    for tier in ("dram", "nvme"):
        t = stats.get(tier) or {}
        out[f"{tier}_pages"] = t.get("entries", 0)
        out[f"{tier}_bytes"] = t.get("value_bytes", 0)
        out[f"{tier}_capacity"] = t.get("capacity", 0)
    return out
