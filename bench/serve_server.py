"""One benchmark run's processes: its L3 storage (our node, or SGLang's file directory), the
``sglang.launch_server`` process, and the HTTP client that talks to it.

Every run owns its storage: ``RunStorage`` makes a fresh directory for the data (the NVMe file,
or the ``file`` backend's files) and a fresh short directory for our node's socket, writes the
node's YAML there, starts the node itself (``autostart: false``, so no node survives from an
earlier run and no server starts one on its own) and stops it at the end. ``restart()`` stops
and starts the server and the node on the same data, for the restart check.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from typing import List, Optional

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IO_BACKEND = {"page_first": "kernel", "page_first_direct": "direct", "layer_first": "kernel"}


@dataclasses.dataclass(frozen=True)
class ServerSpec:
    """What one SGLang server runs with."""

    model_path: str
    backend: str                 # none | file | mooncake
    layout: str                  # --hicache-mem-layout (the IO backend follows from it)
    tp: int
    port: int
    page_size: int
    context_length: int
    device_tokens: int
    hicache_size_gb: int
    write_policy: str = "write_through"
    extra_args: tuple = ()


def _stop_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the process group this script started, SIGKILL it after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


class RunStorage:
    """The L3 storage of one run: ``extra_config()`` for SGLang, ``start()``/``stop()``."""

    def __init__(self, backend: str, data_root: str, *, dram_bytes: int, nvme_bytes: int,
                 write_through: bool = False):
        self.backend = backend
        self.data_dir = tempfile.mkdtemp(prefix=f"serve-{backend}-", dir=data_root)
        # A Unix socket path holds at most 107 bytes: keep the node's directory short.
        self.sock_dir = tempfile.mkdtemp(prefix="mchs-", dir="/tmp") if backend == "mooncake" else None
        self.node: Optional[subprocess.Popen] = None
        self.config_path = None
        if backend == "mooncake":
            self.config_path = os.path.join(self.sock_dir, "node.yaml")
            self.config = node_config(self.sock_dir, self.data_dir, dram_bytes, nvme_bytes, write_through)
            with open(self.config_path, "w") as f:
                yaml.safe_dump(self.config, f)

    @property
    def socket(self) -> Optional[str]:
        return self.config["node"]["socket"] if self.backend == "mooncake" else None

    def extra_config(self) -> Optional[dict]:
        if self.backend == "mooncake":
            # prefix depths for prefix_lru; harmless for the other policies
            return {"config": self.config_path, "hicache_storage_pass_prefix_keys": True}
        if self.backend == "file":
            return {"file_storage_path": self.data_dir}
        return None

    def start(self, log_path: str, timeout: float = 60.0) -> None:
        if self.backend != "mooncake":
            return
        log = open(log_path, "ab")
        self.node = subprocess.Popen([sys.executable, "-m", "mooncake_hicache", "node", "--config", self.config_path],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not node_healthy(self.socket):
            if self.node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"our node did not start (exit {self.node.poll()}); see {log_path}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.node is not None:
            _stop_group(self.node, 60)
            self.node = None

    def remove(self) -> None:
        self.stop()
        for d in (self.data_dir, self.sock_dir):
            if d:
                shutil.rmtree(d, ignore_errors=True)


def node_config(sock_dir: str, data_dir: str, dram_bytes: int, nvme_bytes: int, write_through: bool) -> dict:
    return {"mode": "node",
            "tiers": {"dram": {"capacity": int(dram_bytes), "slab_size": "32MiB", "eviction": "lru",
                               "write_through": bool(write_through)},
                      "nvme": {"path": os.path.join(data_dir, "nvme.data"), "capacity": int(nvme_bytes),
                               "region_size": "64MiB"}},
            "node": {"socket": os.path.join(sock_dir, "node.sock"), "autostart": False, "timeout_ms": 5000},
            "metrics": {"port": 0}}


def node_healthy(socket_path: str) -> bool:
    try:
        from mooncake_hicache import _native

        return bool(_native.NodeClient(socket_path, 1000).healthy)
    except Exception:  # not up yet (or gone): not healthy
        return False


def server_command(spec: ServerSpec, extra_config: Optional[dict]) -> List[str]:
    """``python -m sglang.launch_server ...`` for ``spec`` (every flag exists in sglang 0.5.23)."""
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", spec.model_path,
           "--load-format", "dummy", "--skip-tokenizer-init", "--random-seed", "1234",
           "--host", "127.0.0.1", "--port", str(spec.port), "--tp-size", str(spec.tp),
           "--page-size", str(spec.page_size), "--context-length", str(spec.context_length),
           "--max-total-tokens", str(spec.device_tokens), "--enable-cache-report",
           "--enable-hierarchical-cache", "--hicache-size", str(spec.hicache_size_gb),
           "--hicache-write-policy", spec.write_policy,
           "--hicache-mem-layout", spec.layout, "--hicache-io-backend", IO_BACKEND[spec.layout]]
    if spec.backend in ("file", "mooncake"):
        cmd += ["--hicache-storage-backend", spec.backend,
                "--hicache-storage-backend-extra-config", json.dumps(extra_config)]
    return cmd + list(spec.extra_args)


class Server:
    """One ``sglang.launch_server`` process (its own process group), its log in ``log_path``."""

    def __init__(self, cmd: List[str], port: int, log_path: str):
        self.cmd = cmd
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if k != "MOONCAKE_HICACHE_DISABLE_SGLANG_PLUGIN"}
        with open(log_path, "a") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                         start_new_session=True)

    def wait_ready(self, timeout: float) -> None:
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if request("GET", self.url + "/health_generate", None, timeout=10)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(2)
        raise RuntimeError(f"server not ready after {timeout:.0f}s; see {self.log_path}")

    def flush(self) -> None:
        status, body = request("POST", self.url + "/flush_cache", None, timeout=120)
        if status != 200:
            raise RuntimeError(f"/flush_cache answered {status}: {body[:200]!r}")

    def stop(self) -> None:
        _stop_group(self.proc, 60)


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


def _events(resp):
    """The JSON payloads of SGLang's server-sent events, up to ``data: [DONE]``."""
    for raw in resp:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return
        yield json.loads(payload)


def _rejected(status: int, message: str, t0: float) -> dict:
    return {"rejected": True, "status": status, "error": message[:300], "latency_s": time.perf_counter() - t0}


def generate(url: str, input_ids, max_new_tokens: int, timeout: float) -> dict:
    """One streamed, greedy ``/generate`` of token ids. Returns TTFT and latency, the token
    counts and cache breakdown SGLang reports (``meta_info``: ``cached_tokens`` and
    ``cached_tokens_details`` with ``device``/``host``/``storage``/``storage_backend``), and
    the output token ids; a request SGLang refuses (HTTP 400, or an ``error`` event in the
    stream, e.g. longer than the context) comes back as ``{"rejected": True, ...}``."""
    u = urllib.parse.urlsplit(url)
    body = json.dumps({"input_ids": list(input_ids), "stream": True,
                       "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0.0,
                                           "ignore_eos": True}}).encode()
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    t0 = time.perf_counter()
    ttft, last = None, None
    try:
        conn.request("POST", "/generate", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            return _rejected(resp.status, resp.read().decode(errors="replace"), t0)
        for chunk in _events(resp):
            if "error" in chunk:
                err = chunk["error"]
                return _rejected(int(err.get("code", 400)), str(err.get("message", err)), t0)
            if ttft is None and chunk.get("output_ids"):
                ttft = time.perf_counter() - t0
            last = chunk
    finally:
        conn.close()
    latency = time.perf_counter() - t0
    meta = (last or {}).get("meta_info", {})
    details = meta.get("cached_tokens_details") or {}
    n_out = int(meta.get("completion_tokens", 0))
    return {"rejected": False, "ttft_s": ttft if ttft is not None else latency, "latency_s": latency,
            "prompt_tokens": int(meta.get("prompt_tokens", len(input_ids))), "output_tokens": n_out,
            "cached_tokens": int(meta.get("cached_tokens", 0)),
            "device_tokens": int(details.get("device", 0)), "host_tokens": int(details.get("host", 0)),
            "storage_tokens": int(details.get("storage", 0) or 0),
            "storage_backend": details.get("storage_backend"),
            "output_ids": list((last or {}).get("output_ids") or [])[-n_out:] if n_out else []}
