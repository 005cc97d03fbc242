"""Which transport moves a cluster's value bytes in this process: ``cluster.transport``
(``tcp | rdma | auto``; docs/cluster.md, "The RDMA data path").

``choose_transport(cluster)`` decides once per process (the node for its peer server, each rank
for its pool client) and logs one line saying which and why:

* ``tcp``: value bytes travel in the authenticated TCP stream.
* ``rdma``: RDMA is required. No verbs provider (a build without ``libibverbs-dev``), no device
  list (no RDMA core in the kernel), a configured device that is missing, or no device with an
  active port is a ``ConfigError`` that says what to change and names the devices there are.
* ``auto``: RDMA when a usable device (an active port) is there, else TCP with the reason.

The device list comes from the native side (``_native.rdma_devices``: the same verbs provider
the transport uses, including the FAKE provider that tests select with
``MOONCAKE_HICACHE_FAKE_VERBS=1``); ``mooncake-hicache devices`` shows the real devices through
pyverbs (``cluster/devices.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .. import _native
from ..errors import ConfigError

log = logging.getLogger("mooncake_hicache.cluster")


@dataclass(frozen=True)
class TransportChoice:
    rdma: bool
    why: str
    devices: tuple = field(default_factory=tuple)  # the devices RDMA uses ((): every usable one)

    def native_kwargs(self, gid_index: int) -> dict:
        """The keyword arguments of ``_native.PeerServer`` / ``_native.PoolClient``."""
        return {"rdma": self.rdma, "rdma_devices": list(self.devices), "gid_index": gid_index}


def _names(devices: list) -> str:
    return ", ".join(d["name"] + ("" if d["usable"] else " (no active port)") for d in devices) or "none"


def _rdma_problem(cluster) -> tuple[str, str]:
    """("", "") when RDMA can be used with cluster.rdma.devices, else (field, what is wrong)."""
    info = _native.rdma_devices()
    if not info["provider"]:
        return "cluster.transport", info["error"]
    if info["error"]:
        return "cluster.transport", f"the RDMA devices cannot be listed ({info['error']}): this host has no RDMA core in its kernel or no RDMA NIC"
    devices = info["devices"]
    by_name = {d["name"]: d for d in devices}
    for i, name in enumerate(cluster.rdma.devices):
        if name not in by_name:
            return f"cluster.rdma.devices[{i}]", f"RDMA device {name!r} is not on this host; devices here: {_names(devices)} ('mooncake-hicache devices' shows their ports)"
        if not by_name[name]["usable"]:
            return f"cluster.rdma.devices[{i}]", f"RDMA device {name!r} has no active port; devices here: {_names(devices)}"
    if not any(d["usable"] for d in devices):
        return "cluster.transport", f"no RDMA device with an active port; devices here: {_names(devices)}"
    return "", ""


def _describe_rdma(cluster) -> str:
    info = _native.rdma_devices()
    used = cluster.rdma.devices or tuple(d["name"] for d in info["devices"] if d["usable"])
    provider = "the FAKE verbs provider (tests only; no NIC)" if info["fake"] else info["provider"]
    return f"devices {', '.join(used)} through {provider}"


def choose_transport(cluster, *, who: str = "this process") -> TransportChoice:
    """The transport for ``cluster`` (a ``ClusterConfig``); logs the choice once. Raises
    ``ConfigError`` for ``rdma`` when RDMA cannot be used."""
    if cluster.transport == "tcp":
        choice = TransportChoice(False, "cluster.transport is tcp")
    else:
        where, problem = _rdma_problem(cluster)
        if problem and cluster.transport == "rdma":
            raise ConfigError(where, f"cluster.transport is rdma but {problem}; fix that or set cluster.transport: tcp (or auto)")
        if problem:
            choice = TransportChoice(False, f"cluster.transport is auto and {problem}")
        else:
            choice = TransportChoice(True, f"cluster.transport is {cluster.transport}: {_describe_rdma(cluster)}",
                                     tuple(cluster.rdma.devices))
    log.info("cluster transport of %s: %s (%s)", who, "rdma" if choice.rdma else "tcp", choice.why)
    return choice


def transport_here(cluster) -> str:
    """What ``choose_transport`` would pick on this host, as text (``check-config``: a config may
    be meant for another host, so a problem is reported, not raised)."""
    try:
        choice = choose_transport(cluster, who="this host")
    except ConfigError as e:
        return f"not usable on this host: {e}"
    return f"{'rdma' if choice.rdma else 'tcp'} ({choice.why})"
