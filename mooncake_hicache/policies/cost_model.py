"""What recomputing a token costs: a model shape (presets ``0.5b``, ``8b``, ``70b``) and the prefill
speed of the serving instance (``prefetch.cost_model`` in the configuration).

Prefilling the tokens ``[first, first + n)`` of a request, each attending to every token before it,
takes ``prefill_flops(...)`` FLOPs (2 per parameter per token for the dense layers, plus the
attention score and value products over the positions before the token)::

    2 * params * n  +  4 * layers * q_dim * (first * n + n * (n - 1) / 2)

and ``prefill_flops / (prefill_tflops * 1e12)`` seconds. The attention term grows with the
position, so a page deep in a long prompt costs more to recompute than the first page.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from ..config import COST_MODEL_PRESETS, CostModelConfig

__all__ = ["ModelShape", "PRESETS", "RecomputeModel", "prefill_flops"]


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a model that set its prefill cost and its KV bytes."""

    name: str
    params: float             # parameters (dense FLOPs: 2 per parameter per token)
    layers: int
    q_dim: int                # query heads x head dim
    kv_bytes_per_token: int   # K and V of one token over all layers (whole model, every TP rank)


def _kv_bytes(layers: int, kv_heads: int, head_dim: int, dtype_bytes: int = 2) -> int:
    return layers * kv_heads * head_dim * 2 * dtype_bytes


PRESETS = {
    # Qwen2.5-0.5B: 24 layers, 14 query heads and 2 KV heads of 64; 12 KiB of bf16 KV per token
    "0.5b": ModelShape("0.5b", params=0.49e9, layers=24, q_dim=14 * 64, kv_bytes_per_token=_kv_bytes(24, 2, 64)),
    # Llama-3.1-8B: 32 layers, 32 query heads and 8 KV heads of 128; 128 KiB per token
    "8b": ModelShape("8b", params=8.0e9, layers=32, q_dim=32 * 128, kv_bytes_per_token=_kv_bytes(32, 8, 128)),
    # Llama-3.1-70B: 80 layers, 64 query heads and 8 KV heads of 128; 320 KiB per token
    "70b": ModelShape("70b", params=70.6e9, layers=80, q_dim=64 * 128, kv_bytes_per_token=_kv_bytes(80, 8, 128)),
}
assert tuple(PRESETS) == COST_MODEL_PRESETS, "config.COST_MODEL_PRESETS names the presets defined here"


def prefill_flops(params: float, layers: int, q_dim: int, first: int, tokens: int) -> float:
    """FLOPs to prefill ``tokens`` tokens that start at position ``first`` (see the module doc)."""
    if tokens <= 0:
        return 0.0
    n, a = float(tokens), float(first)
    return 2.0 * params * n + 4.0 * layers * q_dim * (a * n + n * (n - 1.0) / 2.0)


class RecomputeModel:
    """Seconds to recompute tokens on the serving instance. Immutable; any thread."""

    def __init__(self, shape: ModelShape, prefill_tflops: float):
        if prefill_tflops <= 0:
            raise ValueError("prefill_tflops must be positive")
        self.shape = shape
        self.flops_per_s = prefill_tflops * 1e12

    @classmethod
    def from_config(cls, cfg: Optional[CostModelConfig] = None) -> "RecomputeModel":
        cfg = cfg or CostModelConfig()
        base = PRESETS[cfg.preset]
        overrides = {k: v for k, v in (("params", None if cfg.params_b is None else cfg.params_b * 1e9),
                                       ("layers", cfg.layers), ("q_dim", cfg.q_dim)) if v is not None}
        shape = dataclasses.replace(base, name=f"{base.name}+overrides", **overrides) if overrides else base
        return cls(shape, cfg.prefill_tflops)

    def seconds(self, first_token: int, tokens: int) -> float:
        """Seconds to prefill the tokens ``[first_token, first_token + tokens)``."""
        s = self.shape
        return prefill_flops(s.params, s.layers, s.q_dim, first_token, tokens) / self.flops_per_s
