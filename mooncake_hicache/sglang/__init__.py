"""SGLang HiCache integration: :class:`MooncakeHiCacheStorage`, an L3 storage backend for
``--enable-hierarchical-cache`` on the mooncake-hicache store.

Two ways to select it:

* ``--hicache-storage-backend mooncake``: our SGLang plugin (entry point
  ``sglang.srt.plugins`` -> :func:`mooncake_hicache.sglang.plugin.register`) maps the name
  ``mooncake`` to this class when the package is installed; set
  ``MOONCAKE_HICACHE_DISABLE_SGLANG_PLUGIN=1`` to keep SGLang's own Mooncake store instead;
* ``--hicache-storage-backend dynamic`` with ``{"backend_name": "mooncake", "module_path":
  "mooncake_hicache.sglang", "class_name": "MooncakeHiCacheStorage", "interface_v1": 1}``.

``--hicache-storage-backend-extra-config`` may add ``"config": "path/to.yaml"`` and inline store
settings (see :mod:`mooncake_hicache.sglang.options`).

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
