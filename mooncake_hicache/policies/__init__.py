"""Prefetch policies: which of the leading pages a store holds SGLang is told are hits, and which of
them move into this host's DRAM before SGLang reads them (docs/prefetch.md).

* :mod:`.base` -- the interface: ``PrefetchPolicy``, ``PrefetchRequest``, ``PrefetchPlan``;
* :mod:`.prefix_order`, :mod:`.no_prefetch`, :mod:`.cost_aware` -- the built-in policies
  ``prefix_order`` (the default), ``none`` and ``cost_aware``;
* :mod:`.cost_model` -- what recomputing tokens costs (model presets, prefill speed);
* :mod:`.estimator` -- per-tier transfer costs learned from the store's completed gets;
* :mod:`.run_lengths` -- how far recent requests' stored prefixes reached (the value of going on);
* :mod:`.registry` -- policies by name, or a user's class as ``package.module:ClassName``;
* :mod:`.prefetcher` -- ``Prefetcher``: asks the policy on each existence question and carries
  out its plan (``Store.prefetcher``).
"""

from ..tiers import Tier
from .base import PolicyContext, PrefetchPlan, PrefetchPolicy, PrefetchRequest, SGLangPrefetchSettings
from .cost_aware import CostAwarePolicy
from .cost_model import PRESETS, ModelShape, RecomputeModel
from .estimator import TransferEstimator
from .no_prefetch import NoPrefetchPolicy
from .prefetcher import Prefetcher
from .prefix_order import PrefixOrderPolicy
from .registry import BUILTIN_POLICIES, load_policy, policy_class

__all__ = [
    "BUILTIN_POLICIES", "CostAwarePolicy", "ModelShape", "NoPrefetchPolicy", "PRESETS", "PolicyContext",
    "PrefetchPlan", "PrefetchPolicy", "PrefetchRequest", "Prefetcher", "PrefixOrderPolicy", "RecomputeModel",
    "SGLangPrefetchSettings", "Tier", "TransferEstimator", "load_policy", "policy_class",
]
