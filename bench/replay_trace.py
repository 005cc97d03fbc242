"""Mooncake-format traces for the replay: loading, page keys, the infinite-cache ceiling.

A trace is JSON lines ``{"timestamp": ms, "input_length": n, "output_length": m, "hash_ids": [...]}``
with one hash id per 512-token block of the input (the last block may be partial). Equal ids at
the same position mean a shared prefix.

Page keys: each block is 8 pages of 64 tokens; as SGLang's sha256 chain does, a page key depends
on the whole prefix before it::

    key_i = sha256(key_{i-1} || block_id (8 bytes LE) || page index in block (1 byte)).hexdigest()

starting from ``sha256(namespace)``. Only *full* 64-token pages are cached (SGLang stores whole
pages), so a request has ``input_length // 64`` pages.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Optional

from replay_model import PAGES_PER_BLOCK, TOKENS_PER_BLOCK, TOKENS_PER_PAGE


@dataclass
class Request:
    index: int
    timestamp_ms: float
    input_length: int
    output_length: int
    n_pages: int            # full 64-token pages of the input
    nodes: list             # chain node id per block


class Trace:
    """The requests of a trace plus the page keys of every prefix chain node it contains."""

    def __init__(self, path: str, max_requests: Optional[int] = None, namespace: bytes = b"mooncake-hicache-replay"):
        self.path = path
        self.requests: list[Request] = []
        self.node_keys: list[list[str]] = []   # node id -> its 8 page keys
        self._node_ids: dict = {}              # (parent node, block id) -> node id
        self._node_digest: list[bytes] = []    # node id -> digest of its last page (chain state)
        root = hashlib.sha256(namespace).digest()
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if max_requests is not None and len(self.requests) >= max_requests:
                    break
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                    ts, n_in = float(rec["timestamp"]), int(rec["input_length"])
                    n_out, ids = int(rec.get("output_length", 0)), [int(h) for h in rec["hash_ids"]]
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{path}:{lineno}: not a Mooncake trace record ({e}); "
                                     "expected timestamp, input_length, output_length, hash_ids") from None
                if len(ids) * TOKENS_PER_BLOCK < n_in:
                    raise ValueError(f"{path}:{lineno}: {len(ids)} hash_ids cannot cover input_length {n_in}")
                nodes, parent, state = [], -1, root
                for bid in ids:
                    node = self._node_ids.get((parent, bid))
                    if node is None:
                        node = len(self.node_keys)
                        self._node_ids[(parent, bid)] = node
                        keys = []
                        prefix = bid.to_bytes(8, "little", signed=True)
                        for p in range(PAGES_PER_BLOCK):
                            state = hashlib.sha256(state + prefix + bytes((p,))).digest()
                            keys.append(state.hex())
                        self.node_keys.append(keys)
                        self._node_digest.append(state)
                    else:
                        state = self._node_digest[node]
                    nodes.append(node)
                    parent = node
                self.requests.append(Request(len(self.requests), ts, n_in, n_out, n_in // TOKENS_PER_PAGE, nodes))
        if not self.requests:
            raise ValueError(f"{path}: no requests")
        del self._node_ids, self._node_digest

    def page_keys(self, req: Request) -> list[str]:
        keys: list[str] = []
        for node in req.nodes:
            keys.extend(self.node_keys[node])
        del keys[req.n_pages:]
        return keys

    @property
    def duration_s(self) -> float:
        return (self.requests[-1].timestamp_ms - self.requests[0].timestamp_ms) / 1000.0

    def ceiling_pages(self) -> list[int]:
        """Per request, the leading pages an infinite cache would hold (every page ever stored)."""
        seen: set = set()
        out = []
        for req in self.requests:
            keys = self.page_keys(req)
            lead = 0
            for k in keys:
                if k not in seen:
                    break
                lead += 1
            out.append(lead)
            seen.update(keys[lead:])
        return out

    def summary(self) -> dict:
        total = sum(r.input_length for r in self.requests)
        return {"path": os.path.abspath(self.path), "requests": len(self.requests),
                "duration_s": round(self.duration_s, 3), "input_tokens": total,
                "pages": sum(r.n_pages for r in self.requests), "unique_blocks": len(self.node_keys)}
