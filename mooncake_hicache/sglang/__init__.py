"""SGLang HiCache integration: :class:`MooncakeHiCacheStorage`, an L3 storage backend for
``--enable-hierarchical-cache`` on the mooncake-hicache store.

Two ways to select it:

* ``--hicache-storage-backend mooncake``: our SGLang plugin (entry point
  ``sglang.srt.plugins`` -> :func:`mooncake_hicache.sglang.plugin.register`) maps the name
  ``mooncake`` to this class when the package is installed, and turns off what SGLang does for
  that name on behalf of its own Mooncake store (:mod:`.hooks`); set
  ``MOONCAKE_HICACHE_DISABLE_SGLANG_PLUGIN=1`` to keep SGLang's own Mooncake store instead;
* ``--hicache-storage-backend dynamic`` with ``{"backend_name": "mooncake", "module_path":
  "mooncake_hicache.sglang", "class_name": "MooncakeHiCacheStorage", "interface_v1": 1}``.

``--hicache-storage-backend-extra-config`` may add ``"config": "path/to.yaml"`` and inline store
settings (see :mod:`mooncake_hicache.sglang.options`). Modules: ``backend`` (the class), ``keys``
(key names), ``pool_view`` (host pages as scatter-gather lists), ``hybrid_pools`` (v2 calls),
``tensor_calls`` (generic calls), ``l3_layout`` (``describe_l3_object_layout``), ``options``
(extra config), ``plugin`` and ``hooks`` (what the plugin changes in SGLang).

The class is imported on first use, so importing this package (as SGLang's plugin loader does)
does not import torch or SGLang's cache modules.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MooncakeHiCacheStorage"]


def __getattr__(name: str) -> Any:
    if name == "MooncakeHiCacheStorage":
        from .backend import MooncakeHiCacheStorage
        return MooncakeHiCacheStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
