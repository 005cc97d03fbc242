#!/usr/bin/env python3
"""Server mode: real SGLang servers on a GPU, one per L3 backend and layout, driven by the same
requests, compared on TTFT, throughput, L3 hits and output identity.

For each run (model x TP size x backend x layout; ``none`` = HiCache without L3 storage,
``file`` = SGLang's HiCacheFile, ``mooncake`` = ours through the plugin this package installs):

1. its own storage: a fresh data directory, and for ``mooncake`` its own node (fresh socket,
   fresh NVMe file, started by this script and stopped at the end of the run);
2. ``python -m sglang.launch_server`` with ``--load-format dummy --skip-tokenizer-init`` (random
   weights, token ids in and out: nothing to download), HiCache on, every tier sized from the
   workload's working set and the machine (GPU pool, SGLang's host tier ``--hicache-size`` and
   our DRAM tier below the working set, our NVMe tier above it), until ``/health_generate``;
3. ``--passes`` passes of the same requests with ``/flush_cache`` before each, so a later pass
   finds its prefixes only in L3; every pass sends exactly the token ids of the first;
4. with ``--restart`` (``mooncake`` runs): the server and the node are stopped and started again
   on the same NVMe file, and one more pass shows which hits survive a restart.

Requests longer than the model's context (input + output) are truncated (``--long-requests
truncate``, keeping the shared prefix) or skipped, and counted; a request SGLang refuses anyway
is counted as rejected. Nothing aborts the run but a server that does not come up.

Output: a table, one JSON line, ``serve.json`` and every server's and node's log in ``--output``.
Checks printed at the end (exit 1 if one fails): SGLang names our class as the storage backend
of ``mooncake`` runs, later passes hit L3 with ``file`` and ``mooncake`` (not with ``none``),
the greedy outputs of a later pass equal the first pass's, hits survive a restart.

Needs a GPU SGLang environment (CUDA torch, sglang 0.5.23 with its kernels): anywhere else it
prints ``skipped: ...`` with what is missing and exits 3.

Examples::

    .venv/bin/python bench/serve.py                                  # mha model, TP1, none/file/mooncake
    .venv/bin/python bench/serve.py --models mha,mla --tp 1,2 --restart
    .venv/bin/python bench/serve.py --models /models/Llama-3.1-8B-Instruct --clients 32 --rounds 6
    .venv/bin/python bench/serve.py --trace bench/traces/conversation_sample.jsonl --max-requests 300 --speed 4
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import os
import sys
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import serve_env as env  # noqa: E402
import serve_report as report  # noqa: E402
import serve_workload as wl  # noqa: E402
from serve_server import IO_BACKEND, RunStorage, Server, ServerSpec, generate, server_command  # noqa: E402

BACKENDS = ("none", "file", "mooncake")
SKIPPED_EXIT = 3


def _csv(kind, choices=None):
    def parse(text: str):
        items = [kind(x.strip()) for x in text.split(",") if x.strip()]
        bad = [x for x in items if choices is not None and x not in choices]
        if not items or bad:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(map(str, choices or ['values']))}"
                                             + (f"; not {', '.join(map(str, bad))}" if bad else ""))
        return items
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    a = p.add_argument
    a("--models", type=_csv(str), default=["mha"], help="mha, mla (generated dummy models) or model directories (default mha)")
    a("--tp", type=_csv(int), default=[1], help="TP sizes, e.g. 1,2 (default 1)")
    a("--backends", type=_csv(str, BACKENDS), default=list(BACKENDS), help="none, file, mooncake (default all)")
    a("--layouts", type=_csv(str, tuple(IO_BACKEND)), default=["page_first", "page_first_direct"],
      help="host layouts for mooncake runs, each with its IO backend (page_first: kernel, page_first_direct: "
           "direct); none and file run with the first (default page_first,page_first_direct)")
    a("--clients", type=int, default=16, help="concurrent conversations (default 16)")
    a("--rounds", type=int, default=4, help="rounds per conversation (default 4)")
    a("--request-length", type=int, default=2048, help="new tokens per user turn (default 2048)")
    a("--output-length", type=int, default=64, help="tokens generated per request (default 64)")
    a("--passes", type=int, default=2, help="passes of the same requests, /flush_cache before each (default 2)")
    a("--restart", action="store_true", help="mooncake runs: restart server and node, then one more pass")
    a("--trace", default=None, help="replay this Mooncake-format trace instead of the multi-turn workload")
    a("--max-requests", type=int, default=None, help="with --trace: its first N requests")
    a("--speed", type=float, default=1.0, help="with --trace: X times its timestamps; 0 = all at once")
    a("--window-s", type=float, default=60.0, help="with --trace: seconds of trace time per round")
    a("--long-requests", choices=("truncate", "skip"), default="truncate",
      help="requests longer than the context: truncate (default) or skip; both are counted")
    a("--context-length", type=int, default=None, help="model context (default: the model's max_position_embeddings)")
    a("--vocab", type=int, default=32000, help="synthetic token ids are drawn below this (default 32000)")
    a("--storage-dir", default="/var/tmp", help="where each run's NVMe file / file-backend directory goes")
    a("--port", type=int, default=30123)
    a("--server-timeout", type=float, default=900, help="seconds to wait for a server to come up")
    a("--request-timeout", type=float, default=600)
    a("--server-arg", action="append", default=[], help="extra launch_server argument (repeatable)")
    a("--output", default=os.path.join(HERE, "out", "serve"), help="serve.json and logs (default bench/out/serve)")
    args = p.parse_args(argv)
    for name in ("clients", "rounds", "request_length", "output_length", "passes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


@dataclasses.dataclass(frozen=True)
class RunPlan:
    model: str
    tp: int
    backend: str
    layout: str

    @property
    def name(self) -> str:
        return f"{os.path.basename(self.model.rstrip('/'))} tp{self.tp} {self.backend} {self.layout}"


def plan_runs(args: argparse.Namespace, gpus: int):
    """The runs to make, and the names of those this machine cannot (too few GPUs)."""
    runs, skipped = [], []
    for model in args.models:
        for tp in args.tp:
            for backend in args.backends:
                for layout in (args.layouts if backend == "mooncake" else args.layouts[:1]):
                    run = RunPlan(model, tp, backend, layout)
                    (runs if tp <= gpus else skipped).append(run)
    return runs, [f"{r.name} (needs {r.tp} GPUs, found {gpus})" for r in skipped]


def build_requests(args, context_len: int):
    if args.trace:
        rounds = wl.from_trace(args.trace, args.max_requests, args.output_length, args.vocab, args.speed, args.window_s)
    else:
        rounds = wl.multiturn(args.clients, args.rounds, args.request_length, args.output_length, args.vocab)
    return wl.fit_to_context(rounds, context_len, args.long_requests)


def run_pass(url: str, rounds: List[List[wl.Request]], timeout: float) -> Dict[str, dict]:
    """Every request, round after round (a round's requests at once, or at their trace times)."""
    results: Dict[str, dict] = {}
    width = max((len(b) for b in rounds), default=1)
    start = time.perf_counter()
    with cf.ThreadPoolExecutor(max_workers=min(width, 256)) as pool:
        for batch in rounds:
            futures = {}
            for q in batch:
                delay = start + q.at_s - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                futures[q.rid] = pool.submit(generate, url, q.input_ids, q.max_new_tokens, timeout)
            for rid, fut in futures.items():
                results[rid] = fut.result()
    return results


class Run:
    """One run's storage and server; ``passes()`` runs the workload on them."""

    def __init__(self, plan: RunPlan, args, model_path: str, sizes: env.Sizes, context_len: int, port: int):
        self.plan, self.args = plan, args
        self.storage = RunStorage(plan.backend, args.storage_dir, dram_bytes=sizes.dram_bytes, nvme_bytes=sizes.nvme_bytes)
        spec = ServerSpec(model_path, plan.backend, plan.layout, plan.tp, port, wl.PAGE_SIZE, context_len,
                          sizes.device_tokens, sizes.hicache_size_gb, extra_args=tuple(args.server_arg))
        self.cmd = server_command(spec, self.storage.extra_config())
        self.log_base = os.path.join(args.output, plan.name.replace(" ", "_"))
        self.server: Optional[Server] = None

    def start(self) -> None:
        self.storage.start(self.log_base + ".node.log")
        self.server = Server(self.cmd, self.args.port, self.log_base + ".server.log")
        self.server.wait_ready(self.args.server_timeout)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.storage.stop()

    def one_pass(self, name: str, rounds, first: Optional[Dict[str, dict]], flush: bool = True):
        """One pass of ``rounds``: ``(report entry, results by request id)``."""
        if flush:
            self.server.flush()
        t0 = time.perf_counter()
        results = run_pass(self.server.url, rounds, self.args.request_timeout)
        entry = {"name": name, "summary": report.summarize(list(results.values()), time.perf_counter() - t0)}
        if first is not None:
            entry["outputs_vs_first"] = report.compare_outputs(first, results)
        print(f"  [{self.plan.name}] {name}: {json.dumps(entry['summary'], default=str)}", file=sys.stderr, flush=True)
        return entry, results


def run_one(plan: RunPlan, args, model_path: str, sizes: env.Sizes, context_len: int, rounds, fit) -> dict:
    run = Run(plan, args, model_path, sizes, context_len, args.port)
    entry = {"name": plan.name, "plan": dataclasses.asdict(plan), "command": run.cmd, "sizes": dataclasses.asdict(sizes),
             "fit": fit, "passes": []}
    print(f"[{plan.name}] starting (logs {run.log_base}.*)", file=sys.stderr, flush=True)
    try:
        run.start()
        first = None
        for n in range(args.passes):
            p, results = run.one_pass(f"pass{n + 1}", rounds, first)
            entry["passes"].append(p)
            first = first or results
        if args.restart and plan.backend == "mooncake":
            run.stop()
            run.start()  # same NVMe file: the node's warm restart
            entry["passes"].append(run.one_pass("after restart", rounds, first, flush=False)[0])
    except Exception as e:  # a server that does not come up ends this run, not the benchmark
        entry["error"] = f"{type(e).__name__}: {e}"
        print(f"[{plan.name}] failed: {entry['error']}", file=sys.stderr, flush=True)
    finally:
        run.stop()
        run.storage.remove()
    return entry


def checks(doc: dict) -> List[tuple]:
    """``(holds, text)`` for what every run must show."""
    out = []
    for r in doc["runs"]:
        name, backend = r["name"], r["plan"]["backend"]
        if r.get("error"):
            out.append((False, f"{name}: {r['error']}"))
            continue
        later = r["passes"][1:]
        backends = {b for p in r["passes"] for b in p["summary"]["storage_backends"]}
        if backend == "mooncake":
            out.append((backends == {"MooncakeHiCacheStorage"}, f"{name}: SGLang names the storage backend {sorted(backends)}"))
        for p in later:
            hits = p["summary"]["l3_hit_tokens"]
            want = "no L3 hits" if backend == "none" else "L3 hits"
            out.append(((hits == 0) if backend == "none" else hits > 0, f"{name} {p['name']}: {want} ({hits} tokens)"))
            same = p.get("outputs_vs_first") or {}
            out.append((same.get("identical") == same.get("compared"),
                        f"{name} {p['name']}: {same.get('identical')}/{same.get('compared')} greedy outputs identical to pass1"))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    problems = env.missing(min(args.tp))
    if problems:
        print("skipped: not a full GPU SGLang environment; missing: " + "; ".join(problems))
        return SKIPPED_EXIT
    runs, skipped = plan_runs(args, env.gpu_count())
    for s in skipped:
        print(f"skipped run: {s}")
    if not runs:
        print("skipped: no run fits this machine")
        return SKIPPED_EXIT
    os.makedirs(args.output, exist_ok=True)
    doc = {"bench": "serve", "args": vars(args), "runs": []}
    for model in args.models:
        model_path = wl.model_path(model, args.output)
        config = wl.read_config(model_path)
        context_len = wl.context_length(config, args.context_length)
        rounds, fit = build_requests(args, context_len)
        print(f"[{model}] requests: {sum(map(len, rounds))} in {len(rounds)} rounds; over-long: {fit}", file=sys.stderr)
        ws_tokens = wl.working_set_tokens(rounds)
        longest = max((len(q.input_ids) + q.max_new_tokens for b in rounds for q in b), default=0)
        for plan in [r for r in runs if r.model == model]:
            sizes = env.plan_sizes(ws_tokens, wl.kv_bytes_per_token(config, plan.tp), plan.tp,
                                   mem_free=env.mem_available(), disk_free=env.disk_free(args.storage_dir),
                                   longest_request=longest)
            for note in sizes.notes:
                print(f"[{plan.name}] note: {note}", file=sys.stderr)
            doc["runs"].append(run_one(plan, args, model_path, sizes, context_len, rounds, fit))
    with open(os.path.join(args.output, "serve.json"), "w") as f:
        json.dump(doc, f, indent=1, default=str)
    print(report.table(doc))
    results = checks(doc)
    for holds, text in results:
        print(("holds  " if holds else "FAILS  ") + text)
    print(report.json_line(doc))
    return 0 if all(h for h, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
