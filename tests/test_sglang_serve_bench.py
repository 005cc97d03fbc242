"""The parts of the server benchmark (``bench/serve.py``) that need no GPU: the skip path, the
server command lines (parsed by SGLang's own argument parser), requests too long for the
context, identical token ids in every pass, tier sizing, the per-run node, the HTTP client
against SGLang's streaming format, and the report."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import serve  # noqa: E402
import serve_env  # noqa: E402
import serve_report  # noqa: E402
import serve_server  # noqa: E402
import serve_workload as wl  # noqa: E402


def test_without_a_gpu_sglang_environment_it_says_skipped_names_what_is_missing_and_exits_nonzero():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "serve.py"), "--models", "mha"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == serve.SKIPPED_EXIT != 0
    assert proc.stdout.startswith("skipped: not a full GPU SGLang environment; missing: ")
    import torch

    if torch.version.cuda is None:
        assert "a CUDA build of torch" in proc.stdout


def test_arguments_are_checked_before_anything_starts(capsys):
    with pytest.raises(SystemExit) as e:
        serve.parse_args(["--backends", "none,redis"])
    assert e.value.code == 2 and "not redis" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        serve.parse_args(["--layouts", "page_head"])
    with pytest.raises(SystemExit):
        serve.parse_args(["--passes", "0"])
    args = serve.parse_args(["--models", "mha,mla", "--tp", "1,2"])
    runs, skipped = serve.plan_runs(args, gpus=1)
    names = [r.name for r in runs]
    assert names == ["mha tp1 none page_first", "mha tp1 file page_first", "mha tp1 mooncake page_first",
                     "mha tp1 mooncake page_first_direct", "mla tp1 none page_first", "mla tp1 file page_first",
                     "mla tp1 mooncake page_first", "mla tp1 mooncake page_first_direct"]
    assert len(skipped) == 8 and all("needs 2 GPUs, found 1" in s for s in skipped)


@pytest.mark.parametrize("backend,layout,tp", [("none", "page_first", 1), ("file", "page_first", 1),
                                               ("mooncake", "page_first", 2), ("mooncake", "page_first_direct", 1)])
def test_server_commands_parse_with_sglangs_own_argument_parser(backend, layout, tp, tmp_path):
    pytest.importorskip("sglang")
    import sglang_helpers as h

    h.import_sglang()
    from sglang.srt.server_args import prepare_server_args

    storage = serve_server.RunStorage(backend, str(tmp_path), dram_bytes=64 << 20, nvme_bytes=256 << 20)
    try:
        spec = serve_server.ServerSpec(wl.model_path("mha", str(tmp_path)), backend, layout, tp, 30123, 64,
                                       32768, 8192, 2, extra_args=("--disable-cuda-graph",))
        cmd = serve_server.server_command(spec, storage.extra_config())
        assert cmd[:3] == [sys.executable, "-m", "sglang.launch_server"]
        args = prepare_server_args(cmd[3:])
        assert (args.tp_size, args.page_size, args.max_total_tokens, args.hicache_size) == (tp, 64, 8192, 2)
        assert (args.hicache_mem_layout, args.hicache_io_backend) == (layout, serve_server.IO_BACKEND[layout])
        assert args.load_format == "dummy" and args.skip_tokenizer_init and args.enable_hierarchical_cache
        assert args.hicache_storage_backend == (None if backend == "none" else backend)
        extra = json.loads(args.hicache_storage_backend_extra_config or "null")
        if backend == "mooncake":
            assert extra == {"config": storage.config_path, "hicache_storage_pass_prefix_keys": True}
        elif backend == "file":
            assert extra == {"file_storage_path": storage.data_dir}
    finally:
        storage.remove()


def test_requests_too_long_for_the_context_are_truncated_or_skipped_and_counted():
    rounds = wl.multiturn(clients=3, rounds=3, request_length=300, output_length=20, vocab=1000)
    lengths = [[len(q.input_ids) for q in batch] for batch in rounds]
    assert lengths == [[300] * 3, [620] * 3, [940] * 3]
    cut, stats = wl.fit_to_context(rounds, context_len=700, policy="truncate")
    assert stats == {"truncated": 3, "skipped": 0, "tokens_cut": 3 * (940 - (700 - 20 - 8))}
    assert [len(q.input_ids) for q in cut[2]] == [672] * 3
    assert all(a.input_ids[:672] == b.input_ids for a, b in zip(rounds[2], cut[2]))  # the prefix stays
    kept, stats = wl.fit_to_context(rounds, context_len=700, policy="skip")
    assert stats["skipped"] == 3 and [len(b) for b in kept] == [3, 3, 0]


def test_every_pass_and_every_backend_get_the_same_token_ids():
    a = wl.multiturn(clients=4, rounds=3, request_length=128, output_length=16, vocab=32000)
    b = wl.multiturn(clients=4, rounds=3, request_length=128, output_length=16, vocab=32000)
    assert a == b
    # Round r of a client extends round r-1 of the same client: a multi-turn conversation.
    assert all(q2.input_ids[:len(q1.input_ids)] == q1.input_ids for q1, q2 in zip(a[0], a[1]))
    assert wl.working_set_tokens(a) == 4 * ((128 * 3 + 16 * 2) // 64) * 64


def test_tiers_are_sized_below_the_working_set_within_the_machine():
    config = wl.GENERATED_MODELS["mha"]
    per_token = wl.kv_bytes_per_token(config, tp=1)
    assert per_token == 16 * 2 * 8 * 128 * 2
    assert wl.kv_bytes_per_token(config, tp=2) == per_token // 2
    assert wl.kv_bytes_per_token(wl.GENERATED_MODELS["mla"], tp=2) == 12 * (512 + 64) * 2  # replicated
    ws_tokens = 140_000
    s = serve_env.plan_sizes(ws_tokens, per_token, 1, mem_free=100 * serve_env.GB, disk_free=50 * serve_env.GB)
    ws = ws_tokens * per_token
    assert s.device_tokens < ws_tokens and s.hicache_size_gb * serve_env.GB < ws and s.dram_bytes < ws
    assert s.nvme_bytes > ws and not s.notes
    small = serve_env.plan_sizes(ws_tokens, per_token, 1, mem_free=4 * serve_env.GB, disk_free=2 * serve_env.GB)
    assert small.hicache_size_gb == 1 and small.dram_bytes <= 0.2 * 4 * serve_env.GB
    assert small.nvme_bytes <= serve_env.GB and any("below the working set" in n for n in small.notes)
    tiny = serve_env.plan_sizes(1000, per_token, 1, mem_free=100 * serve_env.GB, disk_free=50 * serve_env.GB,
                                longest_request=9000)
    assert any("holds the whole working set" in n for n in tiny.notes)
    assert tiny.device_tokens >= 2 * 9000  # the GPU pool always fits the longest requests


def test_each_run_gets_its_own_node_and_stops_it(tmp_path):
    runs = [serve_server.RunStorage("mooncake", str(tmp_path), dram_bytes=64 << 20, nvme_bytes=256 << 20)
            for _ in range(2)]
    try:
        assert runs[0].socket != runs[1].socket and runs[0].data_dir != runs[1].data_dir
        for r in runs:
            r.start(str(tmp_path / "node.log"))
            assert serve_server.node_healthy(r.socket)
        node = runs[0].node
        runs[0].stop()
        assert node.poll() is not None and not serve_server.node_healthy(runs[0].socket)
        assert serve_server.node_healthy(runs[1].socket)  # the other run's node is untouched
        runs[0].start(str(tmp_path / "node.log"))  # restart on the same data file
        assert serve_server.node_healthy(runs[0].socket)
    finally:
        for r in runs:
            r.remove()
    assert not any(os.path.exists(p) for r in runs for p in (r.data_dir, r.sock_dir))


class _FakeSGLang(http.server.BaseHTTPRequestHandler):
    """Stands in for a GPU SGLang server (none can run here): answers /generate with SGLang's
    server-sent events (cumulative output_ids, meta_info with cached_tokens_details; an over-long
    input gets SGLang's in-stream error event)."""

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        n, ids = body["sampling_params"]["max_new_tokens"], body["input_ids"]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        if len(ids) > 100:
            events = [{"error": {"message": "The input (101 tokens) is longer than the model's context length",
                                 "type": "invalid_request_error", "code": 400, "retryable": False}}]
        else:
            meta = {"prompt_tokens": len(ids), "completion_tokens": n, "cached_tokens": 64,
                    "cached_tokens_details": {"device": 0, "host": 0, "storage": 64,
                                              "storage_backend": "MooncakeHiCacheStorage"}}
            events = [{"output_ids": list(range(1, k + 1)), "meta_info": dict(meta, completion_tokens=k)}
                      for k in range(1, n + 1)]
        for e in events:
            self.wfile.write(b"data: " + json.dumps(e).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *args):
        pass


def test_the_client_reads_sglangs_stream_and_counts_refused_requests():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeSGLang)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        ok = serve_server.generate(url, list(range(80)), 5, timeout=10)
        assert ok["output_ids"] == [1, 2, 3, 4, 5] and ok["output_tokens"] == 5 and not ok["rejected"]
        assert (ok["storage_tokens"], ok["storage_backend"], ok["prompt_tokens"]) == (64, "MooncakeHiCacheStorage", 80)
        assert 0 < ok["ttft_s"] <= ok["latency_s"]
        refused = serve_server.generate(url, list(range(101)), 5, timeout=10)
        assert refused["rejected"] and refused["status"] == 400 and "context length" in refused["error"]
    finally:
        server.shutdown()


def _result(ttft, storage, out, rejected=False):
    if rejected:
        return {"rejected": True, "status": 400, "error": "too long", "latency_s": 0.01}
    return {"rejected": False, "ttft_s": ttft, "latency_s": ttft + 0.1, "prompt_tokens": 100, "output_tokens": 4,
            "cached_tokens": storage, "device_tokens": 0, "host_tokens": 0, "storage_tokens": storage,
            "storage_backend": "MooncakeHiCacheStorage", "output_ids": out}


def test_the_report_gives_ttft_percentiles_throughput_l3_hits_and_output_identity():
    first = {f"r{i}": _result(0.1 * (i + 1), 0, [i, 1, 2, 3]) for i in range(10)}
    later = {f"r{i}": _result(0.01 * (i + 1), 64, [i, 1, 2, 3] if i != 3 else [i, 1, 9, 3]) for i in range(10)}
    later["r9"] = _result(0, 0, [], rejected=True)
    s = serve_report.summarize(list(later.values()), wall_s=2.0)
    assert s["requests"] == 10 and s["rejected"] == 1 and s["l3_hit_tokens"] == 9 * 64
    assert s["ttft_p50_ms"] == pytest.approx(50.0) and s["ttft_p99_ms"] == pytest.approx(89.2)
    assert s["throughput_tok_s"] == pytest.approx(9 * 104 / 2.0)
    assert s["storage_backends"] == ["MooncakeHiCacheStorage"]
    same = serve_report.compare_outputs(first, later)
    assert same["compared"] == 9 and same["identical"] == 8 and same["differing"] == [{"rid": "r3", "first_diff_at": 2}]

    doc = {"runs": [{"name": "mha tp1 mooncake page_first", "plan": {"backend": "mooncake"}, "passes": [
        {"name": "pass1", "summary": serve_report.summarize(list(first.values()), 3.0)},
        {"name": "pass2", "summary": s, "outputs_vs_first": same}]}]}
    text = serve_report.table(doc)
    assert "TTFT p50 ms" in text and "8/9" in text and "576" in text
    line = json.loads(serve_report.json_line(doc))
    assert line["runs"][0]["passes"][1]["l3_hit_tokens"] == 576
    verdicts = serve.checks(doc)
    assert (True, "mha tp1 mooncake page_first: SGLang names the storage backend ['MooncakeHiCacheStorage']") in verdicts
    assert (False, "mha tp1 mooncake page_first pass2: 8/9 greedy outputs identical to pass1") in verdicts
