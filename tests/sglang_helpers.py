"""Helpers for the SGLang integration tests: import the real ``sglang`` wheel on a CPU-only
machine, and build SGLang's real host KV pools (``MHATokenToKVPoolHost``, ``MLATokenToKVPoolHost``)
and storage configs on CPU.

The ``sglang`` wheel is installed with ``--no-deps`` (its GPU dependencies are not installable
here). One of its model-config modules (InternVL) imports ``torchvision`` at import time, which
``sglang.srt.mem_cache.memory_pool`` pulls in; PyPI's torchvision wheels are built against CUDA
torch and cannot load with the CPU torch. When torchvision is missing, ``import_sglang`` puts a
tiny stand-in in ``sys.modules`` (``torchvision.transforms`` with ``InterpolationMode``) after
telling ``transformers`` that torchvision is absent, so nothing vision-related uses it.
"""

from __future__ import annotations

import enum
import importlib.machinery
import importlib.util
import sys
import types
import warnings

PAGE_SIZE = 4


def _torchvision_stand_in() -> None:
    try:
        import torchvision  # noqa: F401
        return
    except Exception:
        pass
    # transformers caches "is torchvision available?"; ask it before the stand-in exists.
    from transformers.utils import import_utils
    import_utils.is_torchvision_available()

    class InterpolationMode(enum.Enum):
        NEAREST = "nearest"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"

    def module(name: str) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__spec__ = importlib.machinery.ModuleSpec(name, None)
        return m

    tv, tr, fn = module("torchvision"), module("torchvision.transforms"), module("torchvision.transforms.functional")
    fn.InterpolationMode = tr.InterpolationMode = InterpolationMode
    tr.functional, tv.transforms = fn, tr
    sys.modules.update({"torchvision": tv, "torchvision.transforms": tr, "torchvision.transforms.functional": fn})


def import_sglang() -> None:
    """Import the parts of SGLang the tests use (raises ImportError if it is not installed)."""
    if importlib.util.find_spec("sglang") is None or importlib.util.find_spec("torch") is None:
        raise ImportError("sglang and torch are needed for the SGLang integration tests")
    _torchvision_stand_in()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Only CUDA ... support AWQ/GGUF" on CPU
        import sglang.srt.mem_cache.memory_pool  # noqa: F401
        import sglang.srt.mem_cache.pool_host.mha  # noqa: F401
        import sglang.srt.mem_cache.pool_host.mla  # noqa: F401
        import sglang.srt.mem_cache.storage.backend_factory  # noqa: F401


def mha_host_pool(layout: str, pages: int, *, layers: int = 2, heads: int = 2, head_dim: int = 16,
                  dtype=None, page_size: int = PAGE_SIZE):
    """A real ``MHATokenToKVPoolHost`` on CPU holding at least ``pages`` pages, built from a real
    (small) CPU device pool the way SGLang's memory-pool assembler does."""
    import torch
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool
    from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost

    dtype = dtype or torch.bfloat16
    device_pool = MHATokenToKVPool(8 * page_size, page_size, dtype, heads, head_dim, layers, "cpu", False,
                                   start_layer=0, end_layer=layers)
    info = device_pool.get_device_pool_infos()[0].buffer_info
    return MHATokenToKVPoolHost(info, 2.0, 0, page_size, layout, pin_memory=False, device="cpu",
                                device_capacity_tokens=device_pool.size, start_layer=0, end_layer=layers,
                                host_token_capacity=(pages + 1) * page_size)


def mla_host_pool(layout: str, pages: int, *, layers: int = 2, kv_lora_rank: int = 32, rope_dim: int = 16,
                  dtype=None, page_size: int = PAGE_SIZE):
    """A real ``MLATokenToKVPoolHost`` on CPU holding at least ``pages`` pages."""
    import torch
    from sglang.srt.mem_cache.memory_pool import MLATokenToKVPool
    from sglang.srt.mem_cache.pool_host.mla import MLATokenToKVPoolHost

    dtype = dtype or torch.bfloat16
    device_pool = MLATokenToKVPool(8 * page_size, page_size, dtype, kv_lora_rank, rope_dim, layers, "cpu", False,
                                   start_layer=0, end_layer=layers)
    info = device_pool.get_device_pool_infos()[0].buffer_info
    return MLATokenToKVPoolHost(info, 2.0, 0, page_size, layout, pin_memory=False, device="cpu",
                                device_capacity_tokens=device_pool.size, start_layer=0, end_layer=layers,
                                target_layer_num=layers, host_token_capacity=(pages + 1) * page_size)


def host_pool(kind: str, layout: str, pages: int, **kw):
    return (mla_host_pool if kind == "mla" else mha_host_pool)(layout, pages, **kw)


def storage_config(*, mla: bool = False, tp_rank: int = 0, tp_size: int = 1, model: str = "org/test-model",
                   layout: str = "page_first", extra: dict | None = None, metrics: bool = False, pp_rank: int = 0,
                   pp_size: int = 1):
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig

    return HiCacheStorageConfig(
        tp_rank=tp_rank, tp_size=tp_size, pp_rank=pp_rank, pp_size=pp_size, attn_cp_rank=0, attn_cp_size=1,
        is_mla_model=mla, enable_storage_metrics=metrics, is_page_first_layout=layout == "page_first",
        model_name=model, extra_config=dict(extra or {}))


def fill(pool, seed: int) -> None:
    """Fill every byte of the host pool's tensors with deterministic pseudo-random bytes."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    for t in pool_tensors(pool):
        flat = t.view(-1).view(torch.uint8) if t.is_contiguous() else None
        if flat is not None:
            flat.copy_(torch.randint(0, 256, flat.shape, generator=gen, dtype=torch.uint8))


def pool_tensors(pool):
    kv = pool.kv_buffer
    return [kv] if not isinstance(kv, (list, tuple)) else list(kv)


def page_indices(pool, pages) -> "torch.Tensor":  # noqa: F821
    """Host token indices of the given page numbers (each page's ``page_size`` slots, in order)."""
    import torch

    ps = pool.page_size
    return torch.cat([torch.arange(p * ps, (p + 1) * ps, dtype=torch.int64) for p in pages])


def page_bytes(pool, page: int) -> bytes:
    """SGLang's own flat copy of one host page (what its generic storage path stores)."""
    import torch

    return bytes(pool.get_data_page(page * pool.page_size, flat=True).contiguous().view(torch.uint8).numpy())


def zero_pages(pool, pages) -> None:
    import torch

    for p in pages:
        flat = pool.get_data_page(p * pool.page_size, flat=True)
        pool.set_from_flat_data_page(p * pool.page_size, torch.zeros_like(flat))


def hash_keys(n: int, salt: str = "") -> list:
    """``n`` chained 64-hex page keys, like SGLang's get_hash_str chains."""
    import hashlib

    keys, prev = [], salt.encode()
    for i in range(n):
        prev = hashlib.sha256(prev + i.to_bytes(8, "little")).hexdigest().encode()
        keys.append(prev.decode())
    return keys
