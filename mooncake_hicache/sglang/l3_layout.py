"""``describe_l3_object_layout``: the L3 object layout SGLang's KV routers ask storage backends for.

SGLang 0.5.23 defines the reply's shape (``sglang.srt.mem_cache.hicache_storage``:
``disabled_l3_layout``, ``merge_l3_layouts``) and one producer, its own Mooncake store: an
envelope ``{enabled, backend, page_size, hicache_object_layout: {pools, key_prefix,
is_mla_backend, pp_rank, pp_size}, reason}`` where a page's object key is
``{key_prefix}_{hash}{suffix}`` for each of its pool's ``suffixes``. External lookup needs keys
that one scheduler can enumerate, so only rank-replicated (MLA) pools are described; a model with
rank-specific pools (MHA KV, Mamba state, an MHA draft) gets ``enabled: false`` with a reason,
as SGLang's store does.

Our keys have exactly that shape (see :mod:`.keys`), so this module describes them; ``backend``
is ``mooncake-hicache`` so that nobody mistakes our keys for keys in a Mooncake master.
SGLang 0.5.23's scheduler (``Scheduler._hicache_l3_layout``) only asks its own ``MooncakeStore``
class and reports ``enabled: false``, ``reason: "Mooncake storage is not attached"`` for every
other backend, ours included; this method serves callers that ask the backend directly.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from sglang.srt.mem_cache.hicache_storage import PoolHitPolicy, PoolName, disabled_l3_layout

BACKEND = "mooncake-hicache"


def _policy(name: str, specs: Mapping[str, Any]) -> PoolHitPolicy:
    spec = specs.get(name)
    if spec is not None:
        return PoolHitPolicy(spec.hit_policy)
    trailing = (str(PoolName.MAMBA), str(PoolName.SWA))
    return PoolHitPolicy.TRAILING_PAGES if name in trailing else PoolHitPolicy.ALL_PAGES


def _pool_entry(view: Any, specs: Mapping[str, Any], swa_trailing_pages: Optional[int]) -> Optional[dict]:
    """The reply's entry for one pool, or None when its trailing window is unknown."""
    policy = _policy(view.name, specs)
    entry = {"pool": view.name, "suffixes": [n.suffix for n in view.names], "hit_policy": policy.value}
    if policy == PoolHitPolicy.TRAILING_PAGES:
        spec = specs.get(view.name)
        source = str(spec.indices_from_pool) if spec is not None and spec.indices_from_pool else view.name
        window = {str(PoolName.MAMBA): 1, str(PoolName.SWA): swa_trailing_pages}.get(source)
        if not window or window <= 0:
            return None
        entry["trailing_pages"] = window
    return entry


def describe(views: Mapping[str, Any], *, is_mla: bool, pp_rank: int, pp_size: int,
             sidecar_pool_specs: Sequence[Any], swa_trailing_pages: Optional[int], page_size: Optional[int]) -> dict:
    """The layout of the pools in ``views`` (``PoolView`` by pool name)."""
    kv = views.get(str(PoolName.KV))
    pools: list = []
    inner = {"pools": pools, "key_prefix": kv.names[0].prefix if kv is not None else None,
             "is_mla_backend": is_mla, "pp_rank": pp_rank, "pp_size": pp_size}
    layout = {"enabled": True, "backend": BACKEND, "page_size": page_size, "hicache_object_layout": inner}
    if not is_mla:
        layout.update(enabled=False, reason="External L3 lookup requires rank-replicated/MLA pools")
        return layout
    specs = {str(spec.pool_name): spec for spec in sidecar_pool_specs}
    for name, view in views.items():
        if view.anchor_only:
            continue
        if not view.replicated:
            layout.update(enabled=False, reason="Auxiliary L3 pools are not rank-replicated/MLA")
            return layout
        entry = _pool_entry(view, specs, swa_trailing_pages)
        if entry is None:
            return disabled_l3_layout(f"Unknown or non-positive trailing-page window for pool {name}",
                                      backend=BACKEND, page_size=page_size)
        pools.append(entry)
    if not pools:
        layout.update(enabled=False, reason="No physical L3 pools are registered")
    return layout
