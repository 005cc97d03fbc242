#!/usr/bin/env python3
"""Server mode: real SGLang servers, one per L3 backend, driven by the same long-context workload.

For each backend in ``--backends`` (``none`` = HiCache with no L3 storage, ``file`` = SGLang's
HiCacheFile, ``mooncake`` = ours, selected by the plugin this package installs) it:

1. starts ``python -m sglang.launch_server`` with the model's config and ``--load-format dummy``
   (random weights: no download of weights, same compute), ``--page-size 64``,
   ``--enable-hierarchical-cache`` and the backend's ``--hicache-storage-backend`` flags, and waits
   for ``/health_generate``;
2. runs the workload ``--passes`` times (default 2) with ``/flush_cache`` before each pass, so the
   second pass finds the prefixes only in what survives a flush: the L3 storage (the GPU radix
   cache and the host tier are flushed);
3. stops the server and moves to the next backend with fresh storage.

Workloads:

* multi-turn (default; like SGLang's ``bench_multiturn``): ``--clients`` conversations, each
  ``--rounds`` rounds; round r sends the whole history (previous prompts, the tokens the server
  generated, and a new ``--request-length``-token user turn) and waits for ``--output-length``
  tokens. All clients run concurrently; each round starts when every client finished the last.
* ``--trace FILE``: a Mooncake-format trace replayed at ``--speed`` x its timestamps with
  synthetic token ids that reproduce its shared prefixes: every prefix-chain block gets 512
  deterministic ids, so two requests that share hash ids share tokens. Rounds are time windows.

Reported per backend, pass and round: TTFT (mean, p50, p99; time to the first streamed token),
throughput (input + output tokens per second), and ``cached_tokens / prompt tokens`` as the server
reports it (``--enable-cache-report``). Output: a table, ``serve.json`` and PNG plots (TTFT per
round, cache-hit ratio per round, TTFT CDF) in ``--output``.

Needs a CUDA GPU: without one it prints ``skipped: no GPU (torch.cuda unavailable)`` and exits 0.
The model's config (and tokenizer files) must be reachable: a local directory or a Hugging Face
name with network access.

Examples::

    .venv/bin/python bench/serve.py                                      # 0.5b shape, all three backends
    .venv/bin/python bench/serve.py --model-path /models/Llama-3.1-8B-Instruct --clients 32 --rounds 8
    .venv/bin/python bench/serve.py --backends none,mooncake --mooncake-config configs/single-host.yaml
    .venv/bin/python bench/serve.py --trace bench/traces/conversation_sample.jsonl --max-requests 300 --speed 4
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import replay_model as rm  # noqa: E402

BACKENDS = ("none", "file", "mooncake")
SKIP_MESSAGE = "skipped: no GPU (torch.cuda unavailable)"


def gpu_available() -> Optional[str]:
    """None if a CUDA device is usable, else why not."""
    try:
        import torch
    except Exception as e:
        return f"torch not importable ({type(e).__name__})"
    try:
        if not torch.cuda.is_available():
            return "torch.cuda unavailable"
    except Exception as e:
        return f"torch.cuda failed ({e})"
    return None


# ---- the server --------------------------------------------------------------------------------

class Server:
    """One ``sglang.launch_server`` process (its own process group), its log in ``log_path``."""

    def __init__(self, args, backend: str, storage_dir: str, log_path: str):
        self.url = f"http://127.0.0.1:{args.port}"
        cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", args.model_path,
               "--load-format", "dummy", "--host", "127.0.0.1", "--port", str(args.port),
               "--page-size", str(rm.TOKENS_PER_PAGE), "--enable-cache-report",
               "--mem-fraction-static", str(args.mem_fraction_static),
               "--enable-hierarchical-cache", "--hicache-ratio", str(args.hicache_ratio),
               "--hicache-write-policy", args.hicache_write_policy]
        env = dict(os.environ)
        if backend == "file":
            cmd += ["--hicache-storage-backend", "file", "--hicache-storage-backend-extra-config",
                    json.dumps({"file_storage_path": storage_dir})]
            env.pop("SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR", None)
        elif backend == "mooncake":
            extra = {"config": os.path.abspath(args.mooncake_config)}
            if args.mooncake_nvme_path:
                extra["tiers"] = {"nvme": {"path": args.mooncake_nvme_path}}
            cmd += ["--hicache-storage-backend", "mooncake", "--hicache-storage-backend-extra-config", json.dumps(extra)]
        if args.context_length:
            cmd += ["--context-length", str(args.context_length)]
        cmd += args.server_arg
        self.cmd = cmd
        self.log = open(log_path, "w")
        self.log.write("$ " + " ".join(cmd) + "\n")
        self.log.flush()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float) -> None:
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                status, _ = request("GET", self.url + "/health_generate", None, timeout=10)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(2)
        raise RuntimeError(f"server not ready after {timeout:.0f}s; see {self.log.name}")

    def flush(self) -> None:
        status, body = request("POST", self.url + "/flush_cache", None, timeout=120)
        if status != 200:
            raise RuntimeError(f"/flush_cache answered {status}: {body[:200]!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)   # the group this script started
                self.proc.wait(timeout=60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=30)
        self.log.close()


def request(method: str, url: str, body: Optional[dict], timeout: float = 600):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, u.path, body=data, headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def generate(url: str, input_ids: list, max_new_tokens: int, timeout: float) -> dict:
    """One streamed ``/generate``: TTFT, latency, prompt/output/cached tokens, output ids."""
    u = urllib.parse.urlsplit(url)
    body = json.dumps({"input_ids": input_ids, "stream": True,
                       "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0.0,
                                           "ignore_eos": True}}).encode()
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    t0 = time.perf_counter()
    ttft = None
    last, inc_ids = None, []
    try:
        conn.request("POST", "/generate", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"/generate answered {resp.status}: {resp.read()[:300]!r}")
        for raw in resp:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            chunk = json.loads(payload)
            if ttft is None and chunk.get("output_ids"):
                ttft = time.perf_counter() - t0
            inc_ids.extend(chunk.get("output_ids") or [])
            last = chunk
    finally:
        conn.close()
    latency = time.perf_counter() - t0
    meta = (last or {}).get("meta_info", {})
    n_out = int(meta.get("completion_tokens", 0))
    cum = (last or {}).get("output_ids") or []
    out_ids = cum if len(cum) == n_out else inc_ids[:n_out]
    return {"ttft_s": ttft if ttft is not None else latency, "latency_s": latency,
            "prompt_tokens": int(meta.get("prompt_tokens", len(input_ids))), "output_tokens": n_out,
            "cached_tokens": int(meta.get("cached_tokens", 0)), "output_ids": out_ids}


# ---- workloads ---------------------------------------------------------------------------------

def multiturn(url: str, args, seed: int) -> list:
    """Per round: the results of every client's request in that round."""
    rng = random.Random(seed)
    histories = [[rng.randrange(100, args.vocab) for _ in range(args.request_length)] for _ in range(args.clients)]
    rounds = []
    with cf.ThreadPoolExecutor(max_workers=args.clients) as pool:
        for r in range(args.rounds):
            t0 = time.perf_counter()
            futs = [pool.submit(generate, url, list(h), args.output_length, args.request_timeout) for h in histories]
            res = [f.result() for f in futs]
            dur = time.perf_counter() - t0
            for h, x in zip(histories, res):
                h.extend(x["output_ids"] or [rng.randrange(100, args.vocab) for _ in range(x["output_tokens"])])
                h.extend(rng.randrange(100, args.vocab) for _ in range(args.request_length))
            for x in res:
                x.pop("output_ids", None)
            rounds.append({"round": r, "duration_s": dur, "requests": res})
            print(f"    round {r}: {summarize(res, dur)['line']}", file=sys.stderr, flush=True)
    return rounds


def trace_workload(url: str, args) -> list:
    from replay_trace import Trace
    trace = Trace(args.trace, args.max_requests)
    block_ids: dict = {}

    def block_tokens(node: int) -> list:
        ids = block_ids.get(node)
        if ids is None:
            r = random.Random(node * 7919 + 17)
            ids = block_ids[node] = [r.randrange(100, args.vocab) for _ in range(rm.TOKENS_PER_BLOCK)]
        return ids

    reqs = []
    for q in trace.requests:
        toks: list = []
        for node in q.nodes:
            toks.extend(block_tokens(node))
        reqs.append((q.timestamp_ms, toks[:q.input_length], max(1, min(q.output_length, args.output_length))))
    window = args.window_s
    results: list = []
    lock = threading.Lock()
    t_start = time.perf_counter()
    ts0 = reqs[0][0]

    def run(i, ts, ids, out):
        x = generate(url, ids, out, args.request_timeout)
        x.pop("output_ids", None)
        x["t_s"] = (ts - ts0) / 1000.0
        with lock:
            results.append(x)

    with cf.ThreadPoolExecutor(max_workers=args.max_inflight) as pool:
        futs = []
        for i, (ts, ids, out) in enumerate(reqs):
            if args.speed > 0:
                wait = t_start + (ts - ts0) / 1000.0 / args.speed - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            futs.append(pool.submit(run, i, ts, ids, out))
        for f in futs:
            f.result()
    rounds = []
    n_win = max(1, int(max(x["t_s"] for x in results) // window) + 1)
    for w in range(n_win):
        res = [x for x in results if int(x["t_s"] // window) == w]
        if res:
            rounds.append({"round": w, "duration_s": window / max(args.speed, 1e-9) if args.speed > 0 else None,
                           "requests": res})
    return rounds


# ---- reporting ---------------------------------------------------------------------------------

def _pct(vals, q):
    s = sorted(vals)
    if not s:
        return None
    k = (len(s) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(res: list, duration: Optional[float]) -> dict:
    ttft = [x["ttft_s"] * 1e3 for x in res]
    prompt = sum(x["prompt_tokens"] for x in res)
    cached = sum(x["cached_tokens"] for x in res)
    out = sum(x["output_tokens"] for x in res)
    dur = duration or max((x["latency_s"] for x in res), default=0)
    d = {"requests": len(res), "ttft_mean_ms": sum(ttft) / len(ttft) if ttft else None,
         "ttft_p50_ms": _pct(ttft, 50), "ttft_p99_ms": _pct(ttft, 99),
         "prompt_tokens": prompt, "cached_tokens": cached, "cache_hit": cached / prompt if prompt else None,
         "throughput_tok_s": (prompt + out) / dur if dur else None}
    d["line"] = (f"TTFT mean {d['ttft_mean_ms']:.0f} ms p99 {d['ttft_p99_ms']:.0f} ms, cached "
                 f"{(d['cache_hit'] or 0) * 100:.1f}%, {d['throughput_tok_s'] or 0:.0f} tok/s") if ttft else "no requests"
    return d


def report(doc: dict, outdir: str) -> None:
    rows = []
    for b in doc["backends"]:
        for p in b.get("passes", []):
            for r in p["rounds"]:
                s = r["summary"]
                rows.append([b["backend"], p["pass"], r["round"], s["requests"], f"{s['ttft_mean_ms']:.0f}",
                             f"{s['ttft_p50_ms']:.0f}", f"{s['ttft_p99_ms']:.0f}",
                             f"{(s['cache_hit'] or 0) * 100:.1f}", f"{s['throughput_tok_s'] or 0:.0f}"])
    headers = ["backend", "pass", "round", "reqs", "TTFT mean ms", "p50", "p99", "cached %", "tok/s"]
    w = [max(len(str(x[i])) for x in rows + [headers]) for i in range(len(headers))]
    print("  ".join(h.rjust(n) for h, n in zip(headers, w)))
    print("  ".join("-" * n for n in w))
    for row in rows:
        print("  ".join(str(c).rjust(n) for c, n in zip(row, w)))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for b in doc["backends"]:
        for p in b.get("passes", []):
            xs = [r["round"] for r in p["rounds"]]
            lbl = f"{b['backend']} pass {p['pass']}"
            axes[0].plot(xs, [r["summary"]["ttft_mean_ms"] for r in p["rounds"]], marker="o", label=lbl)
            axes[1].plot(xs, [(r["summary"]["cache_hit"] or 0) * 100 for r in p["rounds"]], marker="o", label=lbl)
            allt = sorted(x["ttft_s"] * 1e3 for r in p["rounds"] for x in r["requests"])
            if allt:
                axes[2].plot(allt, [(i + 1) / len(allt) for i in range(len(allt))], label=lbl)
    axes[0].set(xlabel="round", ylabel="TTFT mean (ms)", title="TTFT per round")
    axes[1].set(xlabel="round", ylabel="cached tokens %", title="cache hit per round")
    axes[2].set(xlabel="TTFT (ms)", ylabel="fraction of requests", title="TTFT CDF", xscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, "serve.png"), dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--model-path", default=rm.MODELS["0.5b"].hf_name, help="model (config + tokenizer); weights are dummy (default %(default)s)")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: none, file, mooncake (default all)")
    p.add_argument("--clients", type=int, default=16, help="concurrent conversations (default 16)")
    p.add_argument("--rounds", type=int, default=6, help="rounds per conversation (default 6)")
    p.add_argument("--request-length", type=int, default=4096, help="new tokens per user turn (default 4096)")
    p.add_argument("--output-length", type=int, default=64, help="tokens generated per request (default 64; caps trace output lengths)")
    p.add_argument("--passes", type=int, default=2, help="workload passes per backend, /flush_cache before each (default 2)")
    p.add_argument("--trace", default=None, help="replay this Mooncake-format trace instead of the multi-turn workload")
    p.add_argument("--max-requests", type=int, default=None, help="with --trace: first N requests")
    p.add_argument("--speed", type=float, default=1.0, help="with --trace: X times faster than its timestamps; 0 = all at once")
    p.add_argument("--window-s", type=float, default=60.0, help="with --trace: seconds of trace time per reported round (default 60)")
    p.add_argument("--max-inflight", type=int, default=64, help="with --trace: requests in flight at most (default 64)")
    p.add_argument("--mooncake-config", default=os.path.join(ROOT, "configs", "single-host.yaml"), help="our YAML config for the mooncake backend")
    p.add_argument("--mooncake-nvme-path", default=None, help="override tiers.nvme.path of that config (fresh file per run recommended)")
    p.add_argument("--hicache-ratio", type=float, default=2.0, help="host tier size as a multiple of the GPU KV pool (default 2)")
    p.add_argument("--hicache-write-policy", default="write_through", help="SGLang --hicache-write-policy (default write_through)")
    p.add_argument("--mem-fraction-static", type=float, default=0.8)
    p.add_argument("--context-length", type=int, default=None)
    p.add_argument("--vocab", type=int, default=32000, help="synthetic token ids are drawn below this (default 32000)")
    p.add_argument("--port", type=int, default=30123)
    p.add_argument("--server-timeout", type=float, default=900, help="seconds to wait for a server to come up")
    p.add_argument("--request-timeout", type=float, default=900)
    p.add_argument("--server-arg", action="append", default=[], help="extra argument for launch_server (repeatable)")
    p.add_argument("--output", default=os.path.join(HERE, "out", "serve"), help="directory for serve.json, serve.png and server logs")
    args = p.parse_args(argv)

    why = gpu_available()
    if why:
        print(f"skipped: no GPU ({why})" if why != "torch.cuda unavailable" else SKIP_MESSAGE)
        return 0

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        print(f"serve: unknown backend(s) {bad}; choose from {', '.join(BACKENDS)}", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)
    doc = {"bench": "serve", "args": vars(args), "backends": []}
    status = 0
    for b in backends:
        storage = tempfile.mkdtemp(prefix=f"serve-{b}-", dir="/var/tmp")
        if b == "mooncake" and not args.mooncake_nvme_path:
            args.mooncake_nvme_path = os.path.join(storage, "nvme.data")
        log = os.path.join(args.output, f"server-{b}.log")
        print(f"[{b}] starting sglang.launch_server (log {log})", file=sys.stderr, flush=True)
        srv = Server(args, b, storage, log)
        entry = {"backend": b, "command": srv.cmd, "passes": []}
        try:
            srv.wait_ready(args.server_timeout)
            for pn in range(args.passes):
                srv.flush()
                print(f"[{b}] pass {pn} (after /flush_cache)", file=sys.stderr, flush=True)
                rounds = trace_workload(srv.url, args) if args.trace else multiturn(srv.url, args, seed=1234)
                for r in rounds:
                    r["summary"] = summarize(r["requests"], r["duration_s"])
                    r["summary"].pop("line", None)
                entry["passes"].append({"pass": pn, "rounds": rounds})
        except Exception as e:
            entry["error"] = str(e)
            print(f"[{b}] failed: {e}", file=sys.stderr)
            status = 1
        finally:
            srv.stop()
            if b == "mooncake" and args.mooncake_nvme_path and args.mooncake_nvme_path.startswith(storage):
                args.mooncake_nvme_path = None
            shutil.rmtree(storage, ignore_errors=True)
        doc["backends"].append(entry)
    with open(os.path.join(args.output, "serve.json"), "w") as f:
        json.dump(doc, f, indent=1)
    if any(b.get("passes") for b in doc["backends"]):
        report(doc, args.output)
    print(f"wrote {os.path.join(args.output, 'serve.json')} and serve.png", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
