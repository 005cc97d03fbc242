"""The ``mooncake-hicache`` command: run a node, check a config, read a node's figures, and run
the benchmark workload (``bench_command.py``). ``mooncake-hicache --help`` and
``mooncake-hicache COMMAND --help`` explain each command."""

from __future__ import annotations

import argparse
import json
import sys
import time

from .errors import ConfigError, MooncakeHiCacheError

EPILOG = """examples:
  mooncake-hicache bench                          # start a node on the default config, run a KV-page workload
  mooncake-hicache node --config configs/single-host.yaml
  mooncake-hicache check-config configs/single-host.yaml
  mooncake-hicache stats --config configs/single-host.yaml --format prometheus
  mooncake-hicache cluster status --config configs/cluster.yaml
  mooncake-hicache devices                        # RDMA devices, ports, link layer, GIDs, MTU
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mooncake-hicache",
        description="Tiered KV-cache store for SGLang HiCache: pooled DRAM in front of io_uring NVMe.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    n = sub.add_parser("node", help="run this host's node in the foreground (SIGTERM/Ctrl-C stops it cleanly)",
                       description="Run the node that serves the DRAM and NVMe tiers to every process on this host. "
                                   "Stops cleanly on SIGTERM or Ctrl-C: the NVMe region is sealed, so a restart finds "
                                   "every page that reached NVMe (DRAM-only pages are lost).")
    n.add_argument("--config", "-c", help="YAML config (default: $MOONCAKE_HICACHE_CONFIG, else the built-in defaults)")

    c = sub.add_parser("check-config", help="validate a YAML config and print it with every default filled in",
                       description="Validate a config file; exit 0 and print the resolved config if it is valid, "
                                   "exit 2 with a message naming the field and the fix if not.")
    c.add_argument("file", help="the YAML file to check")

    s = sub.add_parser("stats", help="print a running node's figures",
                       description="Connect to a running node (it is not started) and print hit rate per tier, "
                                   "bytes and pages per tier, evictions and checksum failures.")
    s.add_argument("--config", "-c", help="config whose node.socket to query (default: built-in socket path)")
    s.add_argument("--socket", help="node socket path (overrides the config)")
    s.add_argument("--format", choices=("table", "json", "prometheus"), default="table")
    s.add_argument("--interval", type=float, default=0.0,
                   help="also measure bandwidth: sample twice, this many seconds apart")

    cl = sub.add_parser("cluster", help="the pool across hosts: 'cluster status' lists the members",
                        description="Commands about the cluster this host's node belongs to (its config's cluster: "
                                    "section).")
    cl_sub = cl.add_subparsers(dest="cluster_command", metavar="SUBCOMMAND", required=True)
    st = cl_sub.add_parser("status", help="members, epoch, health, pages and capacity of every node",
                           description="Ask this host's node for the membership view, then every member for its "
                                       "figures (over the cluster's authenticated TCP path; the config must hold "
                                       "the cluster secret). Exit 1 when the node is not running.")
    st.add_argument("--config", "-c", help="the node's YAML config (default: $MOONCAKE_HICACHE_CONFIG)")
    st.add_argument("--format", choices=("table", "json"), default="table")
    st.add_argument("--timeout-ms", type=int, default=2000, help="how long to wait for each member (default 2000)")

    dv = sub.add_parser("devices", help="list this host's RDMA devices (ports, state, link layer, GIDs, MTU)",
                        description="List the RDMA devices through pyverbs: each port's state, link layer, MTU, LID "
                                    "and GIDs (for cluster.rdma.devices and cluster.rdma.gid_index). Prints 'no "
                                    "devices' and the reason on a host without RDMA; exit 0 either way.")
    dv.add_argument("--format", choices=("table", "json"), default="table")

    b = sub.add_parser("bench", help="the main job: start a node on the default config and run a KV-page workload",
                       description="Start a private node (in a temporary directory unless --config is given), "
                                   "write, check and read KV pages through it from this process, and print a "
                                   "summary table (with a progress bar while it runs).")
    b.add_argument("--config", "-c", help="YAML config to use instead of the built-in single-host default")
    b.add_argument("--page-size", default="1MiB", help="bytes per KV page (default 1MiB)")
    b.add_argument("--pages", type=int, default=2048, help="pages to write (default 2048)")
    b.add_argument("--batch", type=int, default=128, help="pages per call, as SGLang batches them (default 128)")
    b.add_argument("--json", action="store_true", help="print only the JSON result line")
    return p


def _cmd_node(args) -> int:
    from .node import run_node
    return run_node(args.config)


def _cmd_check_config(args) -> int:
    import yaml
    from .config import load_config
    config = load_config(args.file)
    print(f"# {args.file}: valid (mode resolves to {config.resolved_mode})")
    if config.cluster is not None and config.cluster.transport != "tcp":
        from .cluster.transport import transport_here
        print(f"# cluster.transport on this host: {transport_here(config.cluster)}")
    print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
    return 0


def stats_table(stats: dict, rates: dict | None = None) -> str:
    """A human-readable summary of a stats dict."""
    from .config import format_size
    from .metrics import hit_rates
    rows = []
    hr = hit_rates(stats)
    for tier in ("dram", "nvme"):
        t = stats.get(tier)
        if not t:
            continue
        rows.append((tier, f"{t.get('entries', 0):,}", format_size(t.get("value_bytes", 0)),
                     format_size(t.get("capacity", 0)), f"{100 * hr.get(tier, 0.0):.1f}%",
                     f"{t.get('evictions', t.get('evicted_pages', 0)):,}", f"{t.get('checksum_failures', 0):,}"))
    head = ("tier", "pages", "bytes", "capacity", "hit rate", "evictions", "checksum failures")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    out = ["  ".join(str(h).ljust(w) for h, w in zip(head, widths))]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    t = stats.get("tiering") or {}
    if t:
        out.append(f"gets {t.get('gets', 0):,} (dram {t.get('dram_hits', 0):,}, nvme {t.get('nvme_hits', 0):,}, "
                   f"miss {t.get('misses', 0):,}); puts {t.get('puts', 0):,}; demoted {t.get('demoted', 0):,}; "
                   f"promoted {t.get('promoted', 0):,}")
    if rates:
        out.append("bandwidth: " + ", ".join(f"{k} {v / 1e9:.2f} GB/s" for k, v in rates.items()))
    node = stats.get("node")
    if node:
        out.append("node: " + ", ".join(f"{k} {v}" for k, v in node.items()))
    return "\n".join(out)


def _cmd_stats(args) -> int:
    from . import _native
    from .config import load_config
    from .metrics import to_prometheus
    socket = args.socket or load_config(args.config).node.socket
    try:
        client = _native.NodeClient(socket, 2000)
    except _native.EngineError:
        client = None
    if client is None or not client.healthy:
        print(f"mooncake-hicache: no node answers on {socket}; start one with 'mooncake-hicache node'", file=sys.stderr)
        return 1
    stats = json.loads(client.stats_json())
    rates = None
    if args.interval > 0:
        time.sleep(args.interval)
        later = json.loads(client.stats_json())
        t0, t1 = stats.get("tiering", {}), later.get("tiering", {})
        rates = {k: (t1.get(f"{k}_bytes", 0) - t0.get(f"{k}_bytes", 0)) / args.interval for k in ("put", "get")}
        stats = later
    client.close()
    if args.format == "json":
        print(json.dumps(stats))
    elif args.format == "prometheus":
        print(to_prometheus(stats), end="")
    else:
        print(stats_table(stats, rates))
    return 0


def _cmd_cluster(args) -> int:
    from .cluster.status import cluster_status, status_table
    from .config import load_config
    config = load_config(args.config)
    if config.cluster is None:
        raise ConfigError("cluster", "this config has no cluster: section; pass the config of a cluster member "
                                     "(see configs/cluster.yaml)")
    status = cluster_status(config, args.timeout_ms)
    print(json.dumps(status) if args.format == "json" else status_table(status))
    return 0


def _cmd_devices(args) -> int:
    from .cluster.devices import devices_table, list_devices
    report = list_devices()
    print(json.dumps(report) if args.format == "json" else devices_table(report))
    return 0


def _cmd_bench(args) -> int:
    from .bench_command import run_bench
    return run_bench(args)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"node": _cmd_node, "check-config": _cmd_check_config, "stats": _cmd_stats, "bench": _cmd_bench,
                "cluster": _cmd_cluster, "devices": _cmd_devices}
    try:
        return handlers[args.command](args)
    except ConfigError as e:
        print(f"ConfigError: {e}", file=sys.stderr)
        return 2
    except MooncakeHiCacheError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
