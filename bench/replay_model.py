"""Model shapes, default tier sizes and the modeled-TTFT constants of the trace replay.

This module is the *one* place where the replay's assumptions live (``bench/replay.py`` and
``bench/serve.py`` import it); change a number here and every report follows.

Bytes per token
    ``layers x kv_heads x head_dim x 2 (K and V) x dtype_bytes``. A 64-token page of
    ``0.5b`` (Qwen2.5-0.5B shape, bf16) is 768 KiB; of ``8b`` (Llama-3.1-8B shape) 8 MiB.

Scale
    ``--scale S`` divides the bytes of every page by ``S`` (rounded up to 4 KiB, the DRAM slot and
    NVMe record granule) and sizes every tier so that it holds the *same number of pages* as the
    real tier would: capacity_scaled = (real capacity / real page bytes) x scaled bytes per stored
    page (an NVMe record adds its 4 KiB header). Hit rates therefore do not depend on ``S``; only
    the bytes moved (and so the run time) do.

Modeled TTFT (per request, seconds)::

    compute(u, c)  = (2 * params * u  +  4 * layers * q_dim * (u * c + u * (u - 1) / 2))
                     / (GPU_PEAK_FLOPS * MFU)          # u tokens prefilled after c cached ones
    load           = sum over tiers of  hit_tokens[tier] * real_bytes_per_token / GBps[tier]
    TTFT           = TTFT_OVERHEAD_S + min(load + compute(input - hits, hits),  compute(input, 0))

The ``min`` is a scheduler that loads a cached prefix only when that is faster than recomputing
it (SGLang's prefetch ``timeout`` policy approximates this). ``GBps[tier]`` is measured in the same
run by a calibration pass at the model's *real* page size (``calibrate`` in replay_backends.py), or
given with ``--tier-gbps dram=12,nvme=7`` to model other hardware.
"""

from __future__ import annotations

from dataclasses import dataclass

from mooncake_hicache.policies.cost_model import prefill_flops

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

TOKENS_PER_PAGE = 64        # SGLang's page size for HiCache storage
TOKENS_PER_BLOCK = 512      # Mooncake trace block (one hash_id)
PAGES_PER_BLOCK = TOKENS_PER_BLOCK // TOKENS_PER_PAGE
BATCH_PAGES = 128           # SGLang's STORAGE_BATCH_SIZE: pages per storage call
GRANULE = 4 * KiB           # DRAM slot and NVMe value granule
NVME_RECORD_HEADER = 4 * KiB  # per-record header block on NVMe (docs/architecture.md)

# ---- modeled-TTFT constants -------------------------------------------------------------------
GPU_PEAK_FLOPS = 989e12     # H100 SXM dense BF16
MFU = 0.5                   # fraction of peak a long prefill reaches
TTFT_OVERHEAD_S = 0.005     # scheduling, tokenization, launch: per request


@dataclass(frozen=True)
class ModelShape:
    name: str
    hf_name: str            # the model whose shape this is (and serve.py's default --model-path)
    layers: int
    kv_heads: int
    head_dim: int
    q_heads: int
    params: float           # parameters, for 2 * params FLOPs per token
    dtype_bytes: int = 2
    default_scale: int = 64
    default_dram: int = 32 * GiB   # real (unscaled) DRAM tier capacity
    nvme_ratio: int = 4            # NVMe tier = this many times DRAM

    @property
    def bytes_per_token(self) -> int:
        return self.layers * self.kv_heads * self.head_dim * 2 * self.dtype_bytes

    @property
    def page_bytes(self) -> int:
        return self.bytes_per_token * TOKENS_PER_PAGE

    @property
    def q_dim(self) -> int:
        return self.q_heads * self.head_dim


MODELS = {
    "0.5b": ModelShape("0.5b", "Qwen/Qwen2.5-0.5B-Instruct", layers=24, kv_heads=2, head_dim=64,
                       q_heads=14, params=0.49e9, default_scale=64, default_dram=32 * GiB),
    "8b": ModelShape("8b", "meta-llama/Llama-3.1-8B-Instruct", layers=32, kv_heads=8, head_dim=128,
                     q_heads=32, params=8.0e9, default_scale=512, default_dram=256 * GiB),
}
assert MODELS["0.5b"].bytes_per_token == 12 * KiB and MODELS["8b"].bytes_per_token == 128 * KiB


def round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def scaled_page_bytes(model: ModelShape, scale: float) -> int:
    """Bytes of one page at ``scale``: the real page divided by ``scale``, rounded up to 4 KiB."""
    return max(GRANULE, round_up(int(model.page_bytes / scale), GRANULE))


def compute_s(model: ModelShape, uncached: int, cached: int) -> float:
    """Seconds to prefill ``uncached`` tokens that follow ``cached`` tokens already in KV (the
    FLOP count of ``mooncake_hicache.policies.cost_model.prefill_flops``)."""
    return prefill_flops(model.params, model.layers, model.q_dim, cached, uncached) / (GPU_PEAK_FLOPS * MFU)


def ttft_s(model: ModelShape, input_tokens: int, hit_tokens_by_tier: dict, gbps_by_tier: dict) -> float:
    """Modeled time to first token (see the module docstring)."""
    hits = sum(hit_tokens_by_tier.values())
    recompute = compute_s(model, input_tokens, 0)
    if hits <= 0:
        return TTFT_OVERHEAD_S + recompute
    load = 0.0
    for tier, tokens in hit_tokens_by_tier.items():
        if tokens:
            bw = gbps_by_tier.get(tier) or 0.0
            load += tokens * model.bytes_per_token / (bw * 1e9) if bw > 0 else float("inf")
    return TTFT_OVERHEAD_S + min(load + compute_s(model, input_tokens - hits, hits), recompute)


def constants() -> dict:
    """The TTFT model's constants, for the JSON report."""
    return {"gpu_peak_flops": GPU_PEAK_FLOPS, "mfu": MFU, "overhead_s": TTFT_OVERHEAD_S,
            "formula": "overhead + min(load(hits at tier GB/s) + compute(uncached | cached), compute(all))",
            "compute": "(2*params*u + 4*layers*q_dim*(u*c + u*(u-1)/2)) / (peak*mfu)"}
