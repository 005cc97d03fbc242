"""Names of stored pages: who may read a page is decided by its key alone.

One stored value per page and pool (and per head shard when SGLang splits heads). Its key::

    {prefix}_{hash}{suffix}

    prefix = [tag/]model@fingerprint/rankscope
    suffix = [.pp{r}of{n}][.cp{r}of{n}][.dcp{r}of{n}-tp{n}-lp{p}].{pool}.{format}

* ``hash``: SGLang's 64-hex page hash (a chain over the page's token ids).
* ``tag``: ``extra_backend_tag`` from the extra config (a tenant namespace), when given.
* ``model``: SGLang's model name for storage (the served model name, plus the host pool's own
  storage format tag when it has one), ``/`` written as ``-``.
* ``fingerprint``: 12 hex digits of a SHA-256 over what makes two models' KV differ although they
  are served under one name: the model path and revision SGLang runs (read from SGLang's
  published runtime config when the process has one), the KV pool's dtype, page size and per-token
  geometry (heads x head dim, or the MLA latent width). It leaves out the layer count and the
  layout, so every pipeline stage of a model shares one prefix (the stage is in the suffix) and
  pools of the same byte order read each other's pages.
* ``rankscope``: ``mla`` for rank-replicated pools (MLA KV: every TP rank reads the pages the
  storage-writer rank writes), else ``tp{rank}of{size}``.
* ``format``: the page byte order and dtype: ``lm`` (layer-major pages: ``layer_first`` and
  ``page_first_direct``, whose flat pages are the same bytes), ``tm`` (token-major:
  ``page_first``), other layout names as they are; a server restarted with a layout of another
  byte order misses instead of reading wrong bytes.

The shape ``{prefix}_{hash}{suffix}`` is the one SGLang's own Mooncake store uses for its
``describe_l3_object_layout`` (``key_prefix`` + per-pool ``suffixes``), so ours can be described
the same way, and clearing one backend is removing the keys that start with its ``prefix_``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any, List, Mapping, Optional

log = logging.getLogger("mooncake_hicache.sglang")

# Layouts whose flat page (get_data_page(i, flat=True)) has the same bytes: layer-major pages.
LAYER_MAJOR = ("layer_first", "page_first_direct")
# Host-pool attributes that describe one token's KV in one layer.
_GEOMETRY_ATTRS = ("head_num", "head_dim", "v_head_dim", "kv_lora_rank", "qk_rope_head_dim", "kv_cache_dim")


def model_identity() -> Mapping[str, Optional[str]]:
    """The model path and revision SGLang runs, from its published runtime config; empty when
    this process has none (the backend used outside a server)."""
    try:
        from sglang.srt.runtime_context import get_model

        model = get_model()
        path, revision = model.model_path, getattr(model, "revision", None)
    except Exception:  # not published in this process (tests, tools): no path to add
        return {}
    if isinstance(path, str) and os.path.isdir(path):
        path = os.path.realpath(path)
    return {"model_path": path, "revision": revision}


def pool_geometry(pool: Any) -> Mapping[str, Any]:
    """What one page of ``pool`` holds per layer: dtype, page size and per-token shape."""
    geometry: dict = {"dtype": str(getattr(pool, "dtype", "")).replace("torch.", ""),
                      "page_size": int(getattr(pool, "page_size", 0) or 0)}
    for attr in _GEOMETRY_ATTRS:
        value = getattr(pool, attr, None)
        if isinstance(value, int):
            geometry[attr] = value
    return geometry


def fingerprint(identity: Mapping[str, Any], geometry: Mapping[str, Any]) -> str:
    """12 hex digits that change whenever the model identity or the page geometry does."""
    text = json.dumps({"model": dict(identity), "page": dict(geometry)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def format_tag(pool: Any) -> str:
    """Byte order and dtype of ``pool``'s pages: ``lm.bfloat16``, ``tm.float16``, ..."""
    layout = getattr(pool, "layout", None) or "flat"
    layout = "lm" if layout in LAYER_MAJOR else ("tm" if layout == "page_first" else str(layout))
    dtype = str(getattr(pool, "dtype", "")).replace("torch.", "") or "raw"
    return f"{layout}.{dtype}"


def model_key(name: Optional[str]) -> str:
    if not name:
        log.warning("mooncake-hicache: SGLang passed no model name; pages are stored under 'unnamed-model' "
                    "and would be shared with any other unnamed model of the same fingerprint using this store")
        name = "unnamed-model"
    return "-".join(str(name).split("/"))


@dataclasses.dataclass(frozen=True)
class RankScope:
    """The parallel ranks of one backend instance (from SGLang's ``HiCacheStorageConfig``)."""

    tp_rank: int = 0
    tp_size: int = 1
    pp_rank: int = 0
    pp_size: int = 1
    cp_rank: int = 0
    cp_size: int = 1
    dcp_rank: int = 0
    dcp_size: int = 1
    logical_page_size: Optional[int] = None

    @classmethod
    def of(cls, config: Any) -> "RankScope":
        def num(attr: str, default: int) -> int:
            return int(getattr(config, attr, default) or default)

        return cls(tp_rank=num("tp_rank", 0), tp_size=num("tp_size", 1), pp_rank=num("pp_rank", 0),
                   pp_size=num("pp_size", 1), cp_rank=num("attn_cp_rank", 0), cp_size=num("attn_cp_size", 1),
                   dcp_rank=num("dcp_rank", 0), dcp_size=num("dcp_size", 1),
                   logical_page_size=getattr(config, "logical_page_size", None))

    def rank_part(self, replicated: bool, tp_rank: Optional[int] = None, tp_size: Optional[int] = None) -> str:
        if replicated:
            return "mla"
        return f"tp{self.tp_rank if tp_rank is None else tp_rank}of{self.tp_size if tp_size is None else tp_size}"

    def stage_part(self) -> str:
        parts = []
        if self.pp_size > 1:
            parts.append(f".pp{self.pp_rank}of{self.pp_size}")
        if self.cp_size > 1:
            parts.append(f".cp{self.cp_rank}of{self.cp_size}")
        if self.dcp_size > 1:
            parts.append(f".dcp{self.dcp_rank}of{self.dcp_size}-tp{self.tp_size}-lp{self.logical_page_size}")
        return "".join(parts)


@dataclasses.dataclass(frozen=True)
class KeySpace:
    """Builds the keys of one backend instance (see the module docstring)."""

    tag: str
    model: str
    fingerprint: str
    ranks: RankScope

    def prefix(self, replicated: bool, tp_rank: Optional[int] = None, tp_size: Optional[int] = None) -> str:
        tag = f"{self.tag}/" if self.tag else ""
        return f"{tag}{self.model}@{self.fingerprint}/{self.ranks.rank_part(replicated, tp_rank, tp_size)}"

    def suffix(self, pool_name: str, pool: Any) -> str:
        return f"{self.ranks.stage_part()}.{pool_name}.{format_tag(pool)}"


@dataclasses.dataclass(frozen=True)
class ObjectName:
    """Where one object of a page is stored: ``{prefix}_{hash}{suffix}``."""

    prefix: str
    suffix: str

    def key(self, page_hash: str) -> str:
        return f"{self.prefix}_{page_hash}{self.suffix}"


def object_keys(names: List[ObjectName], hashes: List[str]) -> List[str]:
    """Keys of every object of every page, page by page: ``[page0/obj0, page0/obj1, ...]``."""
    return [name.key(h) for h in hashes for name in names]
