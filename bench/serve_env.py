"""Can this machine run real SGLang servers, and how big may each tier be?

``missing()`` lists what a GPU SGLang server needs and this environment lacks (a CPU torch
build, the ``--no-deps`` SGLang install of the test suite, missing GPU kernels, too few GPUs);
``plan_sizes()`` sizes SGLang's host tier and our DRAM and NVMe tiers from the workload's working
set and the machine's free memory and disk, each tier below the working set so every level of the
hierarchy (GPU, host, our DRAM, our NVMe) is used.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import shutil
from typing import List

GB = 1_000_000_000  # SGLang's --hicache-size is in (decimal) gigabytes
MiB = 1 << 20

# Python modules a GPU SGLang server imports beyond the CPU test install.
SERVER_MODULES = {
    "sglang": "pip install 'sglang[all]==0.5.23'",
    "sgl_kernel": "SGLang's CUDA kernels (pip install sgl-kernel, matching the torch/CUDA build)",
    "flashinfer": "the FlashInfer attention backend (pip install flashinfer-python)",
    "uvloop": "pip install uvloop",
    "fastapi": "pip install fastapi",
    "uvicorn": "pip install uvicorn",
    "zmq": "pip install pyzmq",
    "orjson": "pip install orjson",
    "mooncake_hicache._native": "this package, built (bash scripts/setup.sh or pip install -e .)",
}


def _torch_problems(tp: int) -> List[str]:
    try:
        import torch
    except Exception as e:  # any import failure means no usable torch
        return [f"torch ({type(e).__name__}: {e})"]
    if getattr(torch.version, "cuda", None) is None:
        return [f"a CUDA build of torch (this is {torch.__version__}, a CPU build)"]
    try:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception as e:
        return [f"a working CUDA device (torch.cuda failed: {e})"]
    if count < tp:
        return [f"{tp} GPU(s) for --tp {tp} (found {count})"]
    return []


def _module_problems() -> List[str]:
    problems = []
    for name, how in SERVER_MODULES.items():
        try:
            if importlib.util.find_spec(name.split(".")[0]) is None:
                raise ImportError(name)
            importlib.import_module(name)
        except Exception as e:
            problems.append(f"{name} ({how}; {type(e).__name__})")
    return problems


def missing(tp: int = 1) -> List[str]:
    """What this environment lacks to run a GPU SGLang server with ``tp`` GPUs; empty if nothing."""
    return _torch_problems(tp) + _module_problems()


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def mem_available() -> int:
    """Bytes of memory available to new allocations (``MemAvailable`` in /proc/meminfo)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


@dataclasses.dataclass(frozen=True)
class Sizes:
    working_set_bytes: int      # per rank
    device_tokens: int          # --max-total-tokens (GPU KV pool)
    hicache_size_gb: int        # --hicache-size (SGLang's host tier, per rank)
    dram_bytes: int             # our DRAM tier (one per host)
    nvme_bytes: int             # our NVMe tier (one per host)
    notes: tuple = ()


def _mib(n: float) -> int:
    return max(MiB, int(n) // MiB * MiB)


def plan_sizes(working_set_tokens: int, bytes_per_token: int, tp: int, *, mem_free: int, disk_free: int,
               longest_request: int = 0, device_fraction: float = 0.125, host_fraction: float = 0.5,
               dram_fraction: float = 0.25, nvme_factor: float = 2.0) -> Sizes:
    """Tier sizes: the GPU pool, SGLang's host tier and our DRAM tier each a fraction of the
    working set (so each level misses and the next one is asked), our NVMe tier larger than it
    (so a second pass can be served from it), all within what the machine has free. The GPU pool
    holds at least two of the longest requests (``longest_request`` tokens, output included)."""
    ws = working_set_tokens * bytes_per_token
    notes = []
    device_tokens = -(-max(4096, 2 * longest_request, int(working_set_tokens * device_fraction)) // 64) * 64
    host_cap = mem_free * 0.4 / max(tp, 1)  # SGLang's host pools of all ranks share the host's RAM
    host = min(ws * host_fraction, host_cap)
    hicache_gb = max(1, int(host // GB))
    if hicache_gb * GB >= ws:
        notes.append(f"host tier ({hicache_gb} GB, SGLang's minimum step) holds the whole working set "
                     f"({ws / GB:.2f} GB per rank): raise --clients/--rounds/--request-length so L3 is needed")
    dram = _mib(min(ws * tp * dram_fraction, mem_free * 0.2))
    nvme = _mib(min(ws * tp * nvme_factor + 256 * MiB, disk_free * 0.5))
    if nvme < ws * tp:
        notes.append(f"only {nvme / GB:.1f} GB of disk for the NVMe tier, below the working set "
                     f"({ws * tp / GB:.1f} GB): second-pass hits will be partial")
    return Sizes(ws, device_tokens, hicache_gb, dram, nvme, tuple(notes))


def disk_free(path: str) -> int:
    os.makedirs(path, exist_ok=True)
    return shutil.disk_usage(path).free
