"""Policies by name: the built-in ones, or a user's class as ``package.module:ClassName``."""

from __future__ import annotations

import importlib
from typing import Dict, Type

from ..errors import ConfigError
from .base import PolicyContext, PrefetchPolicy
from .cost_aware import CostAwarePolicy
from .no_prefetch import NoPrefetchPolicy
from .prefix_order import PrefixOrderPolicy

__all__ = ["BUILTIN_POLICIES", "load_policy", "policy_class"]

BUILTIN_POLICIES: Dict[str, Type[PrefetchPolicy]] = {
    cls.name: cls for cls in (PrefixOrderPolicy, NoPrefetchPolicy, CostAwarePolicy)}

FIELD = "prefetch.policy"


def policy_class(name: str) -> Type[PrefetchPolicy]:
    """The class for ``name``: a built-in policy, or ``package.module:ClassName`` imported (raises
    ConfigError naming ``prefetch.policy`` when it cannot be found or is not a PrefetchPolicy)."""
    if name in BUILTIN_POLICIES:
        return BUILTIN_POLICIES[name]
    module_name, _, class_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(FIELD, f"cannot import module {module_name!r} of policy {name!r}: {e}; "
                                 "install it or put its directory on PYTHONPATH") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError(FIELD, f"module {module_name!r} has no {class_name!r}; check the name after ':'")
    if not (isinstance(cls, type) and issubclass(cls, PrefetchPolicy)):
        raise ConfigError(FIELD, f"{name!r} is not a subclass of mooncake_hicache.policies.PrefetchPolicy; "
                                 "derive your policy from it (docs/prefetch.md)")
    return cls


def load_policy(name: str, context: PolicyContext) -> PrefetchPolicy:
    """An instance of the policy ``name``, built as ``cls(context)``."""
    return policy_class(name)(context)
