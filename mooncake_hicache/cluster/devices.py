"""``mooncake-hicache devices``: the RDMA devices of this host, their ports, state, link layer,
GIDs and MTU, through **pyverbs** (Debian's ``python3-pyverbs``, which matches the system's
rdma-core; ``scripts/setup.sh`` makes it importable in the virtualenv).

With no RDMA core in the kernel, ``pyverbs.device.get_device_list()`` raises
(``PyverbsRDMAError``) instead of returning an empty list: that is reported as "no devices", with
the reason. Without pyverbs the report says how to install it. Read-only: devices are opened and
queried, nothing is allocated on them.
"""

from __future__ import annotations

from typing import Any

_MTU_BYTES = {1: 256, 2: 512, 3: 1024, 4: 2048, 5: 4096}
MAX_GIDS_SHOWN = 16


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _port(ctx, verbs, port: int) -> dict:
    attr = ctx.query_port(port)
    gids = []
    for index in range(min(attr.gid_tbl_len, MAX_GIDS_SHOWN)):
        try:
            gid = str(ctx.query_gid(port, index))
        except verbs.PyverbsError:
            continue
        if gid.strip("0:"):
            gids.append({"index": index, "gid": gid})
    return {"port": port, "state": verbs.port_state_to_str(attr.state), "active": attr.state == verbs.ACTIVE,
            "link_layer": verbs.translate_link_layer(attr.link_layer),
            "mtu": _MTU_BYTES.get(int(attr.active_mtu), 0), "lid": attr.lid, "gids": gids}


def _device(dev, verbs) -> dict:
    name = _text(dev.name)
    entry: dict = {"name": name, "ports": [], "error": ""}
    try:
        with verbs.Context(name=name) as ctx:
            attr = ctx.query_device()
            entry["max_mr_size"] = int(attr.max_mr_size)
            entry["ports"] = [_port(ctx, verbs, p) for p in range(1, attr.phys_port_cnt + 1)]
    except verbs.PyverbsError as e:
        entry["error"] = f"cannot be opened or queried: {e}"
    return entry


class _Verbs:
    """The pyverbs names this module uses (imported on demand)."""

    def __init__(self):
        import pyverbs.device as device
        import pyverbs.enums as enums
        from pyverbs.pyverbs_error import PyverbsError
        self.get_device_list = device.get_device_list
        self.Context = device.Context
        self.port_state_to_str = device.port_state_to_str
        self.translate_link_layer = device.translate_link_layer
        self.ACTIVE = enums.IBV_PORT_ACTIVE
        self.PyverbsError = PyverbsError


def list_devices() -> dict:
    """{"source": "pyverbs", "devices": [...], "note": why the list is empty ("" when it is not)}."""
    try:
        verbs = _Verbs()
    except ImportError as e:
        return {"source": "none", "devices": [],
                "note": f"pyverbs is not importable ({e}); install python3-pyverbs (Debian/Ubuntu) and run "
                        "bash scripts/setup.sh, which makes it importable in the virtualenv"}
    try:
        found = verbs.get_device_list()
    except verbs.PyverbsError as e:  # no RDMA core in the kernel: no devices
        return {"source": "pyverbs", "devices": [],
                "note": f"no devices: the kernel has no RDMA core (rdma-core could not list devices: {e})"}
    devices = [_device(d, verbs) for d in found]
    return {"source": "pyverbs", "devices": devices, "note": "" if devices else "no devices: no RDMA NIC on this host"}


def devices_table(report: dict) -> str:
    """The report as text: one line per port, its GIDs indented below it."""
    if not report["devices"]:
        return report["note"] or "no devices"
    lines = []
    for d in report["devices"]:
        if d["error"]:
            lines.append(f"{d['name']}: {d['error']}")
            continue
        for p in d["ports"]:
            lines.append(f"{d['name']} port {p['port']}: {p['state']}, {p['link_layer']}, MTU {p['mtu']}, "
                         f"LID {p['lid']}, max_mr_size {d['max_mr_size']}")
            lines.extend(f"    gid[{g['index']}] {g['gid']}" for g in p["gids"])
    return "\n".join(lines)
