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


# ---- SGLang's real HiCache controller on CPU ----------------------------------------------------
#
# The controller tests build SGLang's HybridCacheController (what UnifiedRadixCache uses) the way
# hybrid_pool_assembler.build_kv_only_stack does, from a real ServerArgs published into SGLang's
# runtime context. The one departure: the host pool is allocated with pin_memory=False (pinning
# needs CUDA); SGLang's own build_kv_host_pool always pins.

_MODEL_CONFIGS = {
    "mha": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
            "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "num_hidden_layers": 2, "vocab_size": 1000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
            "torch_dtype": "bfloat16"},
    "mla": {"architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "hidden_size": 64,
            "intermediate_size": 128, "moe_intermediate_size": 32, "num_attention_heads": 4, "num_key_value_heads": 4,
            "num_hidden_layers": 2, "vocab_size": 1000, "kv_lora_rank": 32, "q_lora_rank": None,
            "qk_rope_head_dim": 16, "qk_nope_head_dim": 16, "v_head_dim": 16, "n_routed_experts": 4,
            "n_shared_experts": 1, "num_experts_per_tok": 2, "topk_group": 1, "n_group": 1, "first_k_dense_replace": 2,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "torch_dtype": "bfloat16", "rope_theta": 10000.0},
}
LAYERS = 2
MHA_HEADS, HEAD_DIM = 2, 16
KV_LORA_RANK, ROPE_DIM = 32, 16


def model_dir(root, kind: str, name: str = "") -> str:
    """A directory holding only a small model's config.json (what SGLang's ServerArgs reads)."""
    import json
    import os

    path = os.path.join(str(root), f"{kind}-model{name}")
    os.makedirs(path, exist_ok=True)
    # Ranks of one test call this concurrently: write a private file and rename it into place, so
    # no rank ever reads a half-written config.json.
    tmp = os.path.join(path, f".config.json.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(_MODEL_CONFIGS[kind], f)
    os.replace(tmp, os.path.join(path, "config.json"))
    return path


def publish_server_args(model_path: str, *, backend: str = "mooncake", layout: str = "page_first",
                        io_backend: str = "kernel", extra: dict | None = None, tp_size: int = 1, rank: int = 0,
                        page_size: int = PAGE_SIZE, served_model_name: str | None = None):
    """Build SGLang's real ServerArgs for a HiCache server, resolve it (layout rewrites included)
    and publish it as this process's runtime config, as a scheduler process does."""
    import json

    from sglang.srt import runtime_context as rc
    from sglang.srt.server_args import ServerArgs

    args = ServerArgs(model_path=model_path, device="cpu", skip_tokenizer_init=True, page_size=page_size,
                      tp_size=tp_size, enable_hierarchical_cache=True, hicache_storage_backend=backend,
                      hicache_mem_layout=layout, hicache_io_backend=io_backend, hicache_ratio=2.0,
                      served_model_name=served_model_name,
                      hicache_storage_backend_extra_config=json.dumps(extra or {}))
    rc.publish(args, role="scheduler", ranks=rc.SpawnRanks(world_rank=rank, dp_rank=None, gpu_id=0))
    return args


def init_gloo(store_dir: str, rank: int, world_size: int):
    """torch.distributed over gloo for this process (a file store in ``store_dir``)."""
    import os

    import torch

    torch.distributed.init_process_group("gloo", init_method="file://" + os.path.join(store_dir, "gloo"),
                                         rank=rank, world_size=world_size)
    return torch.distributed.group.WORLD


def _device_pool(kind: str, tokens: int, page_size: int):
    import torch
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, MLATokenToKVPool

    if kind == "mla":
        return MLATokenToKVPool(tokens, page_size, torch.bfloat16, KV_LORA_RANK, ROPE_DIM, LAYERS, "cpu", False,
                                start_layer=0, end_layer=LAYERS)
    return MHATokenToKVPool(tokens, page_size, torch.bfloat16, MHA_HEADS, HEAD_DIM, LAYERS, "cpu", False,
                            start_layer=0, end_layer=LAYERS)


def _host_pool(kind: str, device_pool, host_tokens: int):
    """The host pool SGLang's build_kv_host_pool makes, with the published layout and the
    allocator SGLang picks for the published backend, but without pinning."""
    from sglang.srt.mem_cache.pool_host.common import get_allocator_type
    from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost
    from sglang.srt.mem_cache.pool_host.mla import MLATokenToKVPoolHost
    from sglang.srt.runtime_context import get_memory

    mem = get_memory()
    info = device_pool.get_device_pool_infos()[0].buffer_info
    kw = dict(pin_memory=False, device="cpu", allocator_type=get_allocator_type(), host_token_capacity=host_tokens,
              device_capacity_tokens=device_pool.size, start_layer=0, end_layer=LAYERS)
    if kind == "mla":
        return MLATokenToKVPoolHost(info, mem.hicache_ratio, 0, device_pool.page_size, mem.hicache_mem_layout,
                                    target_layer_num=LAYERS, **kw)
    return MHATokenToKVPoolHost(info, mem.hicache_ratio, 0, device_pool.page_size, mem.hicache_mem_layout, **kw)


def build_controller(kind: str, tp_group, *, pages: int = 512, prefetch_threshold: int = PAGE_SIZE,
                     side_entries=()):
    """SGLang's HybridCacheController for an MHA or MLA model on CPU, its storage backend created
    by SGLang from the published --hicache-storage-backend and extra config (plugins loaded)."""
    import threading

    from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator
    from sglang.srt.mem_cache.hicache_storage import PoolName
    from sglang.srt.mem_cache.hybrid_cache.hybrid_cache_controller import HybridCacheController
    from sglang.srt.mem_cache.hybrid_cache.hybrid_pool_assembler import build_pool_entry
    from sglang.srt.mem_cache.pool_host import HostPoolGroup
    from sglang.srt.runtime_context import get_memory, get_serving

    mem = get_memory()
    device = _device_pool(kind, pages * PAGE_SIZE // 2, PAGE_SIZE)
    allocator = PagedTokenToKVPoolAllocator(device.size, PAGE_SIZE, device.dtype, "cpu", device, need_sort=False)
    host = _host_pool(kind, device, pages * PAGE_SIZE)
    layers = {i: i for i in range(LAYERS)}
    group = HostPoolGroup([build_pool_entry(name=PoolName.KV, host_pool=host, device_pool=device,
                                            layer_mapping=layers, transfer_layer_id_max=LAYERS, is_anchor=True),
                           *side_entries])
    extra, _, _, _, _ = HybridCacheController.parse_storage_backend_extra_config(
        mem.hicache_storage_backend_extra_config)
    return HybridCacheController(
        allocator, group, PAGE_SIZE, tp_group, load_cache_event=threading.Event(),
        write_policy=mem.hicache_write_policy, io_backend=mem.hicache_io_backend,
        storage_backend=mem.hicache_storage_backend, prefetch_threshold=prefetch_threshold,
        model_name=get_serving().served_model_name, storage_backend_extra_config=extra,
        transfer_layer_id_max=LAYERS, host_memory_mode=mem.hicache_host_memory_mode)


def token_kv(pool, slot: int):
    """One host slot's KV as ``[K/V, layer, head, dim]`` (MLA: ``[1, layer, 1, latent]``), read
    through the layout's own tensor shape: the logical view the checks compare."""
    kv, ps = pool.kv_buffer, pool.page_size
    layout = pool.layout
    if kv.dim() in (5, 6) and kv.shape[0] == 2:  # MHA
        if layout == "layer_first":
            return kv[:, :, slot]
        if layout == "page_first":
            return kv[:, slot]
        if layout == "page_first_direct":
            return kv[:, slot // ps, :, slot % ps]
        if layout == "page_head":
            return kv[:, slot // ps, :, slot % ps].transpose(1, 2)
    else:  # MLA
        if layout == "layer_first":
            return kv[:, slot].unsqueeze(0)
        if layout == "page_first":
            return kv[slot].unsqueeze(0)
        if layout == "page_first_direct":
            return kv[slot // ps, :, slot % ps].unsqueeze(0)
    raise ValueError(f"no logical view for layout {layout}")


def expected_kv(pool, tokens: int, seed: int):
    """Deterministic KV for ``tokens`` token positions: ``[token, K/V, layer, head, dim]`` of int16
    bit patterns (compared bit for bit, never as floats)."""
    import torch

    shape = tuple(token_kv(pool, 0).shape)
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-(1 << 15), 1 << 15, (tokens, *shape), generator=gen, dtype=torch.int16)


def write_slots(pool, slots, data) -> None:
    """Put ``data[i]`` (int16 bits) into host slot ``slots[i]`` through the logical view."""
    import torch

    for i, slot in enumerate(slots.tolist()):
        token_kv(pool, slot).view(torch.int16).copy_(data[i])


def first_wrong_slice(pool, slots, data):
    """None if every (page, layer, K/V, head) slice of the slots holds ``data``, else the first
    wrong one as ``(page, layer, kv, head)``."""
    import torch

    got = torch.stack([token_kv(pool, s).view(torch.int16) for s in slots.tolist()])  # [tok, kv, L, H, D]
    ps = pool.page_size
    same = (got == data).all(dim=-1)  # [tok, kv, L, H]
    same = same.view(len(slots) // ps, ps, *same.shape[1:]).all(dim=1)  # [page, kv, L, H]
    if bool(same.all()):
        return None
    page, kv, layer, head = (int(x) for x in (~same).nonzero()[0])
    return page, layer, kv, head


def storage_hashes(tokens, page_size: int = PAGE_SIZE):
    """SGLang's storage page hashes of ``tokens`` (what the radix tree and the prefetch use)."""
    from sglang.srt.mem_cache.utils import get_storage_hash_str

    return get_storage_hash_str(list(tokens), None, page_size=page_size)


def backup_through_controller(cc, host_slots, tokens, timeout: float = 60.0, extra_pools=None) -> int:
    """What UnifiedRadixCache.write_backup_storage does: queue a storage write of host pages;
    SGLang's backup thread runs it. Returns the tokens the backup thread reports written."""
    hashes = storage_hashes(tokens)
    op_id = cc.write_storage(host_slots, list(tokens), hashes, None, extra_pools=extra_pools)
    op = cc.ack_backup_queue.get(timeout=timeout)
    assert op.id == op_id
    return op.completed_tokens


def prefetch_through_controller(cc, rid: str, tokens, threshold: int = PAGE_SIZE, timeout: float = 60.0,
                                extra_pools=None):
    """One storage prefetch as SGLang runs it: ``prefetch`` -> prefetch thread (batch_exists and
    the cross-rank MIN all-reduce) -> the scheduler's part (UnifiedRadixCache: allocate host
    slots for the rank-agreed hit, hand the operation to ``prefetch_buffer``) -> prefetch-IO
    thread (batch_get_v1) -> acks through the sync thread (MIN all-reduce of the loaded tokens).
    Returns ``(hit_tokens, host_slots or None, loaded_tokens)``."""
    from sglang.srt.mem_cache.base_prefix_cache import CacheRequestHandle

    op = cc.prefetch(CacheRequestHandle(rid=rid, attempt_id=0), list(tokens), None, None, extra_pools=extra_pools)
    hit = cc.prefetch_hit_queue.get(timeout=timeout)
    assert hit is op
    if op.storage_hit_count < max(threshold, cc.page_size) or op.is_terminated():
        return op.storage_hit_count, None, 0
    slots, alloc_len = cc.allocate_storage_hit(op, op.storage_hit_count, allow_partial=True, min_tokens=threshold,
                                               evict_host=lambda n: 0)
    assert slots is not None, "no host room for the prefetch"
    op.storage_hit_count = alloc_len
    op.hash_value = op.hash_value[:alloc_len // cc.page_size]
    op.host_indices = slots
    cc.prefetch_buffer.put(op)
    while True:
        ack = cc.ack_prefetch_queue.get(timeout=timeout)
        assert ack.operation is op
        if ack.completed_tokens is not None:
            op.completed_tokens = ack.completed_tokens
        if ack.completed_req:
            return alloc_len, slots, op.completed_tokens


def run_ranks(target, world_size: int, *args, timeout: float = 120.0) -> None:
    """Run ``target(rank, world_size, *args)`` in ``world_size`` forked processes (SGLang is
    already imported here) and raise with a child's traceback if any fails. A child still running
    shortly before ``timeout`` prints every thread's stack to stderr and exits, so a hang is shown
    where it happens."""
    import faulthandler
    import multiprocessing
    import os
    import traceback

    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()

    def child(rank: int) -> None:
        code = 1
        faulthandler.dump_traceback_later(max(1.0, timeout - 5.0), exit=True)
        try:
            import torch

            torch.set_num_threads(1)
            target(rank, world_size, *args)
            errors.put((rank, None))
            code = 0
        except BaseException:
            errors.put((rank, traceback.format_exc()))
        finally:
            errors.close()
            errors.join_thread()  # the report must leave before os._exit
            os._exit(code)

    procs = [ctx.Process(target=child, args=(r,)) for r in range(world_size)]
    for p in procs:
        p.start()
    reports = {}
    try:
        for _ in procs:
            rank, error = errors.get(timeout=timeout)
            reports[rank] = error
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
    failed = {r: e for r, e in reports.items() if e}
    if failed or len(reports) < world_size:
        raise AssertionError("rank processes failed: " + ("\n".join(f"rank {r}:\n{e}" for r, e in failed.items())
                                                          or f"only {sorted(reports)} reported"))


def start_node(directory: str, *, dram: str = "64MiB", nvme: str = "256MiB"):
    """A mooncake-hicache node (DRAM + NVMe) in a child process, its files in ``directory`` (keep
    it short: a Unix socket path holds at most 107 bytes). Returns ``(store_config, process)``;
    ``store_config`` is what a backend's extra config needs to use it."""
    import os
    import subprocess
    import sys
    import time

    import yaml

    from mooncake_hicache import _native

    cfg = {"mode": "node",
           "tiers": {"dram": {"capacity": dram, "slab_size": "4MiB", "hugepages": False},
                     "nvme": {"path": os.path.join(directory, "nvme.data"), "capacity": nvme, "region_size": "8MiB"}},
           "node": {"socket": os.path.join(directory, "n.sock"), "autostart": False, "timeout_ms": 2000},
           "metrics": {"port": 0}}
    with open(os.path.join(directory, "node.yaml"), "w") as f:
        yaml.safe_dump(cfg, f)
    with open(os.path.join(directory, "node.log"), "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "mooncake_hicache", "node", "--config",
                                 os.path.join(directory, "node.yaml")],
                                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            if _native.NodeClient(cfg["node"]["socket"], 1000).healthy:
                return cfg, proc
        except Exception:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_node(proc)
            with open(os.path.join(directory, "node.log")) as f:
                raise RuntimeError("the node did not start: " + f.read()[-2000:])
        time.sleep(0.05)


def stop_node(proc) -> None:
    import signal
    import subprocess

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
