"""``mooncake-hicache cluster status``: the cluster as this host's node sees it.

The view (members, epoch, the node's health marks) comes from the local node over its Unix
socket (VIEW); every member's figures come from a STATS request sent to all of them at once,
over the same authenticated TCP path the data uses (so the command needs the cluster secret of
the config, like any rank). Nothing here talks to etcd.
"""

from __future__ import annotations

from .. import _native
from ..config import Config, format_size
from ..errors import MooncakeHiCacheError


class ClusterUnavailable(MooncakeHiCacheError):
    """The local node is not running (or is not a cluster member)."""


def cluster_status(config: Config, timeout_ms: int = 2000) -> dict:
    """``{"epoch", "self_id", "in_grace", "members": [{id, address, in_view_healthy, up, error,
    rtt_ms, weight, dram_pages, dram_bytes, dram_capacity, nvme_pages, nvme_bytes, nvme_capacity,
    peer_requests}]}``."""
    cluster = config.cluster
    client = _native.NodeClient(config.node.socket, timeout_ms)
    if not client.healthy:
        raise ClusterUnavailable(f"no node answers on {config.node.socket} ({client.last_error}); "
                                 f"start it with 'mooncake-hicache node --config FILE'")
    pool = _native.PoolClient(client, replicas=cluster.replicas, connect_timeout_ms=cluster.connect_timeout_ms,
                              request_timeout_ms=timeout_ms, secret=cluster.read_secret())
    try:
        if not pool.refresh_view():
            raise ClusterUnavailable(f"the node on {config.node.socket} did not answer VIEW ({client.last_error})")
        view = pool.view
        if view["epoch"] == 0:
            raise ClusterUnavailable(f"the node on {config.node.socket} is not a cluster member (no cluster: "
                                     f"section in the config it was started with)")
        probes = {p["id"]: p for p in pool.probe(timeout_ms, True)}
    finally:
        pool.close()
        client.close()
    return {"epoch": view["epoch"], "self_id": view["self_id"], "in_grace": view["grace_ms"] > 0,
            "members": [_member_row(m, probes.get(m["id"])) for m in view["members"]]}


def _member_row(member: dict, probe: dict | None) -> dict:
    stats = (probe or {}).get("stats") or {}
    row = {"id": member["id"], "address": f"{member['host']}:{member['port']}",
           "in_view_healthy": member["healthy"], "weight": member["weight"],
           "up": bool(probe and probe["ok"]), "error": (probe or {}).get("error", "not probed"),
           "rtt_ms": (probe or {}).get("rtt_ms", 0.0),
           "peer_requests": (stats.get("peer") or {}).get("requests", 0)}
    for tier in ("dram", "nvme"):
        t = stats.get(tier) or {}
        row.update({f"{tier}_pages": t.get("entries", 0), f"{tier}_bytes": t.get("value_bytes", 0),
                    f"{tier}_capacity": t.get("capacity", 0)})
    return row


def status_table(status: dict) -> str:
    head = ("member", "address", "health", "rtt", "dram pages", "dram used / capacity", "nvme pages",
            "nvme used / capacity", "peer requests")
    rows = []
    for m in status["members"]:
        health = "up" if m["up"] else f"DOWN ({m['error']})"
        if m["up"] and not m["in_view_healthy"]:
            health = "up (marked down in the view)"
        mark = "*" if m["id"] == status["self_id"] else ""
        rows.append((m["id"] + mark, m["address"], health, f"{m['rtt_ms']:.1f} ms",
                     f"{m['dram_pages']:,}", f"{format_size(m['dram_bytes'])} / {format_size(m['dram_capacity'])}",
                     f"{m['nvme_pages']:,}", f"{format_size(m['nvme_bytes'])} / {format_size(m['nvme_capacity'])}",
                     f"{m['peer_requests']:,}"))
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    out = [f"epoch {status['epoch']}, {len(rows)} members, "
           f"{sum(m['up'] for m in status['members'])} up{', grace window open' if status['in_grace'] else ''} "
           f"(* = this host's node)"]
    out.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)
