"""``PoolConnection``: what a ``Store`` talks to in cluster mode (a config with a ``cluster:``
section). The host's node is reached as on a single host (``NodeConnection``: the Unix socket
and the shared arena, started when none runs, restarted in the background when it dies; its
client object stays the same, so the pool keeps using it); around its client a
``_native.PoolClient`` routes every batch to the members that hold the keys (docs/cluster.md):
the local node over shared memory, the others over authenticated TCP, one request per member
per batch. The view comes from the local node; ranks never talk to etcd.

Same methods as ``NodeConnection``, so ``Store`` and the SGLang backend need nothing new.
Thread-safe as the classes it wraps.
"""

from __future__ import annotations

import json

from .. import _native
from ..config import Config
from ..errors import ConfigError, ErrorCode
from ..node import NodeConnection
from .transport import choose_transport

# Calls that go to the pool; anything else (healthy, last_error, node_info, ping) is the local
# node client's.
POOL_METHODS = frozenset({"batch_put", "batch_put_sg", "batch_get", "batch_get_sg", "batch_exists", "prefetch",
                          "remove", "remove_all", "get_bytes", "value_size"})


class PoolConnection(NodeConnection):
    def __init__(self, config: Config):
        super().__init__(config)
        c = config.cluster
        transport = choose_transport(c, who="this rank")
        try:
            self._pool = _native.PoolClient(self._client, replicas=c.replicas, write_quorum=c.write_quorum,
                                            spill_depth=c.spill_depth, connect_timeout_ms=c.connect_timeout_ms,
                                            request_timeout_ms=c.request_timeout_ms, secret=c.read_secret(),
                                            **transport.native_kwargs(c.rdma.gid_index))
        except _native.EngineError as e:
            super().close()
            raise ConfigError("cluster.transport", e.args[-1]) from None
        self._pool.refresh_view()

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        self._revive_if_needed()
        return getattr(self._pool if name in POOL_METHODS else self._client, name)

    @property
    def pool(self):
        """The ``_native.PoolClient`` (its ``view``, ``probe()``, ``pool_stats_json()``)."""
        return self._pool

    def register_buffer(self, ptr: int, size: int) -> None:
        """With RDMA: registers the range with the NICs so the members read and write it
        directly (one-sided); nothing without RDMA."""
        self._pool.register_buffer(ptr, size)

    def unregister_buffer(self, ptr: int) -> None:
        self._pool.unregister_buffer(ptr)

    def stats_json(self) -> str:
        """The local node's figures plus ``pool`` (this client's view of the cluster)."""
        self._revive_if_needed()
        stats = json.loads(self._client.stats_json())
        stats["pool"] = json.loads(self._pool.pool_stats_json())
        return json.dumps(stats)

    def take_notes(self, with_levels: bool = False) -> list:
        return self._pool.take_notes(with_levels=with_levels) + self._client.take_notes(with_levels=with_levels)

    def remove_prefix(self, prefix) -> int:
        """Not across the pool yet: a removal by prefix on this host's node alone would leave the
        namespace's pages on the other members, so it answers UNSUPPORTED and removes nothing."""
        return int(ErrorCode.UNSUPPORTED)

    def close(self) -> None:
        self._pool.close()
        super().close()
