"""The requests of the server benchmark (``bench/serve.py``) and the model they are sized for.

Everything here is decided before any server starts and is the same for every backend and every
pass: the token ids of each request are fixed up front, so a second pass (and a pass after a
restart) sends exactly the first pass's token ids, and each backend sees the same requests.

Models: ``mha`` and ``mla`` are generated model directories holding only a ``config.json``
(a Llama-shaped MHA model and a DeepSeek-V2-shaped MLA model); SGLang runs them with
``--load-format dummy`` (random weights, real compute) and ``--skip-tokenizer-init`` (token ids
in, token ids out), so nothing is downloaded. Any other value is a model directory or name whose
``config.json`` is read for the KV size per token.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from typing import Dict, List, Optional, Tuple

PAGE_SIZE = 64  # SGLang's --page-size for HiCache storage

GENERATED_MODELS: Dict[str, dict] = {
    "mha": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
            "intermediate_size": 5632, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
            "num_hidden_layers": 16, "vocab_size": 32000, "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "torch_dtype": "bfloat16", "tie_word_embeddings": False},
    "mla": {"architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "hidden_size": 2048,
            "intermediate_size": 5632, "moe_intermediate_size": 512, "num_attention_heads": 16,
            "num_key_value_heads": 16, "num_hidden_layers": 12, "vocab_size": 32000, "kv_lora_rank": 512,
            "q_lora_rank": None, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128,
            "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2, "topk_group": 1, "n_group": 1,
            "first_k_dense_replace": 12, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0, "torch_dtype": "bfloat16", "tie_word_embeddings": False},
}
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4, "float8_e4m3fn": 1}


@dataclasses.dataclass(frozen=True)
class Request:
    rid: str
    round: int
    input_ids: Tuple[int, ...]
    max_new_tokens: int
    at_s: float = 0.0  # trace mode: when to send it, seconds after the pass starts


def model_path(model: str, root: str) -> str:
    """A directory SGLang can serve ``model`` from: generated for ``mha``/``mla``, else as given."""
    config = GENERATED_MODELS.get(model)
    if config is None:
        return model
    path = os.path.join(root, f"dummy-{model}")
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    return path


def read_config(path: str) -> dict:
    """``config.json`` of a local model directory (a hub name must be downloaded first)."""
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{config_file} not found: give a local model directory (or --model mha/mla)")
    with open(config_file, encoding="utf-8") as f:
        return json.load(f)


def is_mla(config: dict) -> bool:
    return bool(config.get("kv_lora_rank"))


def kv_bytes_per_token(config: dict, tp: int) -> int:
    """Bytes of KV cache one token takes on one TP rank (MLA: replicated, the same on every rank)."""
    width = _DTYPE_BYTES.get(str(config.get("torch_dtype", "bfloat16")).replace("torch.", ""), 2)
    layers = int(config["num_hidden_layers"])
    if is_mla(config):
        return layers * (int(config["kv_lora_rank"]) + int(config["qk_rope_head_dim"])) * width
    heads = int(config.get("num_key_value_heads") or config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // int(config["num_attention_heads"]))
    return layers * 2 * -(-heads // tp) * head_dim * width


def context_length(config: dict, override: Optional[int]) -> int:
    return int(override or config.get("max_position_embeddings") or 4096)


def multiturn(clients: int, rounds: int, request_length: int, output_length: int, vocab: int,
              seed: int = 1234) -> List[List[Request]]:
    """SGLang ``bench_multiturn``-style conversations: round r of a client sends its whole history
    (earlier user turns and ``output_length`` stand-in assistant tokens each) plus a new
    ``request_length``-token turn. The assistant tokens are fixed here, not the server's output,
    so the requests do not depend on what a server generated."""
    rng = random.Random(seed)
    histories: List[List[int]] = [[] for _ in range(clients)]
    out: List[List[Request]] = []
    for r in range(rounds):
        batch = []
        for c, history in enumerate(histories):
            if r:
                history.extend(rng.randrange(100, vocab) for _ in range(output_length))
            history.extend(rng.randrange(100, vocab) for _ in range(request_length))
            batch.append(Request(f"c{c}r{r}", r, tuple(history), output_length))
        out.append(batch)
    return out


def from_trace(path: str, max_requests: Optional[int], output_length: int, vocab: int, speed: float,
               window_s: float) -> List[List[Request]]:
    """A Mooncake-format trace: every 512-token prefix block gets deterministic ids (equal hash
    ids give equal tokens); rounds are ``window_s`` windows of trace time."""
    from replay_trace import Trace  # bench/replay_trace.py

    trace = Trace(path, max_requests)
    blocks: Dict[int, List[int]] = {}
    t0 = trace.requests[0].timestamp_ms if trace.requests else 0.0
    rounds: Dict[int, List[Request]] = {}
    for q in trace.requests:
        ids: List[int] = []
        for node in q.nodes:
            if node not in blocks:
                r = random.Random(node * 7919 + 17)
                blocks[node] = [r.randrange(100, vocab) for _ in range(512)]
            ids.extend(blocks[node])
        t_s = (q.timestamp_ms - t0) / 1000.0
        window = int(t_s // window_s)
        at = t_s / speed if speed > 0 else 0.0
        rounds.setdefault(window, []).append(
            Request(f"t{q.index}", window, tuple(ids[:q.input_length]), max(1, min(q.output_length, output_length)), at))
    return [rounds[w] for w in sorted(rounds)]


def fit_to_context(rounds: List[List[Request]], context_len: int, policy: str,
                   margin: int = 8) -> Tuple[List[List[Request]], Dict[str, int]]:
    """Requests whose input plus output would not fit the model's context: ``truncate`` keeps the
    first tokens that fit (the shared prefix stays shared), ``skip`` drops the request. Returns
    the requests and ``{"truncated": n, "skipped": n, "tokens_cut": n}``."""
    if policy not in ("truncate", "skip"):
        raise ValueError(f"policy must be truncate or skip, got {policy!r}")
    stats = {"truncated": 0, "skipped": 0, "tokens_cut": 0}
    fitted: List[List[Request]] = []
    for batch in rounds:
        kept = []
        for q in batch:
            limit = context_len - q.max_new_tokens - margin
            if len(q.input_ids) <= limit:
                kept.append(q)
            elif policy == "skip" or limit < PAGE_SIZE:
                stats["skipped"] += 1
            else:
                stats["truncated"] += 1
                stats["tokens_cut"] += len(q.input_ids) - limit
                kept.append(dataclasses.replace(q, input_ids=q.input_ids[:limit]))
        fitted.append(kept)
    return fitted, stats


def working_set_tokens(rounds: List[List[Request]]) -> int:
    """Tokens in distinct full pages over every request (what a cache would have to hold to serve
    every repeated prefix)."""
    pages = set()
    for batch in rounds:
        for q in batch:
            h = hashlib.sha256()
            for start in range(0, len(q.input_ids) - PAGE_SIZE + 1, PAGE_SIZE):
                h.update(json.dumps(q.input_ids[start:start + PAGE_SIZE]).encode())
                pages.add(h.digest())
    return len(pages) * PAGE_SIZE
