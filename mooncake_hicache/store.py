"""``Store``: the project's main object.

Its method names and result conventions follow the Mooncake store's Python API
(``MooncakeDistributedStore``), so code written against one runs against the other:

* batch calls return one ``int`` per key: ``>= 0`` on success (bytes read for gets), a negative
  :class:`~mooncake_hicache.errors.ErrorCode` otherwise (``NOT_FOUND`` for a miss);
* zero-copy calls (``batch_put_from``, ``batch_get_into`` and their ``_multi_buffers`` forms)
  take raw addresses that must lie inside a range given to :meth:`Store.register_buffer`;
* ``put``/``get`` move Python ``bytes`` and need no registration.

Where the tiers live depends on ``mode`` (see ``Config.resolved_mode``):

* ``node`` (the default with a DRAM tier): one node process per host owns the DRAM arena and the
  NVMe file; every ``Store`` on the host is a client that copies straight between its buffers and
  the node's shared-memory arena. The first ``Store`` starts the node if none is running.
* ``in_process``: the tiers live in this process (DRAM + NVMe via ``TieredStore``, or the NVMe
  engine alone when no DRAM tier is configured).

With a ``cluster:`` section the same node-mode ``Store`` reads and writes the whole pool: pages
live on the members that weighted rendezvous hashing picks, reached over shared memory (this
host's node) or TCP (the others); see docs/cluster.md.

Every call is thread-safe and releases the GIL while it waits.

Example::

    from mooncake_hicache import Store
    with Store.from_config({"tiers": {"nvme": {"path": "/var/tmp/demo.data", "capacity": "1GiB"}}}) as s:
        s.put("k", b"hello")
        assert s.get("k") == b"hello"
"""

from __future__ import annotations

import bisect
import functools
import logging
import os
import threading
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from . import _native
from .config import Config, load_config
from .errors import ErrorCode, StoreError
from .node import NodeConnection
from .tiers import Tier, backend_stats, log_notes, open_tiers

log = logging.getLogger("mooncake_hicache")

ConfigSource = Union[str, os.PathLike, Mapping[str, Any], Config, None]


class _BufferRegistry:
    """Address ranges given to ``register_buffer``; thread-safe (one lock, held briefly)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._starts: list[int] = []
        self._ends: list[int] = []

    def add(self, ptr: int, size: int) -> None:
        with self._lock:
            i = bisect.bisect_left(self._starts, ptr)
            if (i > 0 and self._ends[i - 1] > ptr) or (i < len(self._starts) and self._starts[i] < ptr + size):
                raise StoreError(f"buffer 0x{ptr:x}+{size} overlaps a registered buffer; unregister it first")
            self._starts.insert(i, ptr)
            self._ends.insert(i, ptr + size)

    def remove(self, ptr: int) -> bool:
        with self._lock:
            i = bisect.bisect_left(self._starts, ptr)
            if i < len(self._starts) and self._starts[i] == ptr:
                del self._starts[i], self._ends[i]
                return True
            return False

    def check(self, ptrs: Sequence[int], sizes: Sequence[int]) -> int:
        """0 if every (ptr, size) lies in one registered range, else the ErrorCode to return."""
        with self._lock:
            starts, ends = self._starts, self._ends
            for p, n in zip(ptrs, sizes):
                if not p or n < 0:
                    return ErrorCode.INVALID_PARAMS
                i = bisect.bisect_right(starts, p) - 1
                if i < 0 or p + n > ends[i]:
                    return ErrorCode.UNREGISTERED_BUFFER
        return 0


class Store:
    """A tiered KV-page store. Build it with :meth:`from_config`; close it with :meth:`close`
    (or use it as a context manager)."""

    MAX_KEY_LEN: int = _native.MAX_KEY_LEN
    """Longest key accepted, in bytes (UTF-8)."""

    def __init__(self, config: Config):
        config.require_tier()
        self.config = config
        self.mode = config.resolved_mode
        if self.mode == "node" and config.cluster is not None:
            from .cluster.pool import PoolConnection
            self._backend = PoolConnection(config)  # the host's node plus the other members
        elif self.mode == "node":
            self._backend = NodeConnection(config)  # the client side of the per-host node
        else:
            self._backend = open_tiers(config)
        self._buffers = _BufferRegistry()
        self._closed = False
        self._log_notes()

    @classmethod
    def from_config(cls, source: ConfigSource = None) -> "Store":
        """Open a store. ``source`` is a YAML path, a dict of the same shape, a ``Config``, or
        ``None`` for the defaults (plus ``MOONCAKE_HICACHE_*`` environment overrides).
        Raises ``ConfigError`` for bad settings, ``StoreError`` when the data file is in use by
        another process or was written by another format version."""
        config = source if isinstance(source, Config) else load_config(source)
        logging.getLogger("mooncake_hicache").setLevel(config.logging.level)
        return cls(config)

    # ---- buffers -------------------------------------------------------------------------

    def register_buffer(self, ptr: int, size: int) -> int:
        """Allow zero-copy calls on ``[ptr, ptr + size)``. Returns 0."""
        if not ptr or size <= 0:
            raise StoreError(f"register_buffer needs a non-null pointer and a positive size, got 0x{ptr:x}, {size}")
        self._buffers.add(int(ptr), int(size))
        if hasattr(type(self._backend), "register_buffer"):  # the pool's RDMA registration
            try:
                self._backend.register_buffer(int(ptr), int(size))
            except _native.EngineError as e:
                self._buffers.remove(int(ptr))
                raise StoreError(f"register_buffer: {e.args[-1]}") from None
        return 0

    def unregister_buffer(self, ptr: int) -> int:
        """Forget a range given to ``register_buffer`` (by its start). Returns 0, or
        INVALID_PARAMS if it was not registered."""
        if not self._buffers.remove(int(ptr)):
            return int(ErrorCode.INVALID_PARAMS)
        if hasattr(type(self._backend), "unregister_buffer"):
            self._backend.unregister_buffer(int(ptr))
        return 0

    # ---- zero-copy batch API -------------------------------------------------------------

    def batch_put_from(self, keys: Sequence[str], ptrs: Sequence[int], sizes: Sequence[int], *,
                       depths: Optional[Sequence[int]] = None, keep_existing: bool = False) -> list[int]:
        """Store ``sizes[i]`` bytes at ``ptrs[i]`` under ``keys[i]``. Returns 0 or a negative
        ErrorCode per key. ``depths`` (optional) gives each page's position in its prefix chain,
        which the ``prefix_lru`` eviction policy uses.

        A key that is stored already gets the new value: every later get sees it, on every tier,
        also after eviction and restart (Mooncake's ``upsert``). With ``keep_existing=True`` a
        stored key keeps its value instead and reports 0 without a copy (Mooncake's ``put``; for
        content-addressed keys, whose value never changes)."""
        ptrs, sizes = _as_list(ptrs), _as_list(sizes)
        keys = self._check_lists(keys, ptrs, sizes)
        return self._flat_call(self._put_fn("batch_put", keep_existing), keys, ptrs, sizes, depths)

    def batch_get_into(self, keys: Sequence[str], ptrs: Sequence[int], sizes: Sequence[int]) -> list[int]:
        """Read each key's value into the buffer ``(ptrs[i], sizes[i])``. Returns the bytes read,
        ``NOT_FOUND`` for a miss (or a record that failed its checksum), ``BUFFER_TOO_SMALL``,
        or another negative ErrorCode, per key."""
        ptrs, sizes = _as_list(ptrs), _as_list(sizes)
        keys = self._check_lists(keys, ptrs, sizes)
        return self._flat_call(self._backend.batch_get, keys, ptrs, sizes)

    def batch_put_from_multi_buffers(self, keys: Sequence[str], all_ptrs: Sequence[Sequence[int]],
                                     all_sizes: Sequence[Sequence[int]], *,
                                     depths: Optional[Sequence[int]] = None,
                                     keep_existing: bool = False) -> list[int]:
        """Scatter-gather put: key ``i``'s value is the concatenation of the buffers
        ``all_ptrs[i][j], all_sizes[i][j]``, stored as one record. ``keep_existing`` as in
        :meth:`batch_put_from`."""
        all_ptrs, all_sizes = _as_list(all_ptrs), _as_list(all_sizes)
        keys = self._check_lists(keys, all_ptrs, all_sizes)
        return self._sg_call(self._put_fn("batch_put_sg", keep_existing), keys, all_ptrs, all_sizes, depths)

    def batch_get_into_multi_buffers(self, keys: Sequence[str], all_ptrs: Sequence[Sequence[int]],
                                     all_sizes: Sequence[Sequence[int]]) -> list[int]:
        """Scatter-gather get: key ``i``'s value is spread over its buffers in order."""
        all_ptrs, all_sizes = _as_list(all_ptrs), _as_list(all_sizes)
        keys = self._check_lists(keys, all_ptrs, all_sizes)
        return self._sg_call(self._backend.batch_get_sg, keys, all_ptrs, all_sizes)

    def batch_is_exist(self, keys: Sequence[str]) -> list[int]:
        """1 if the key is stored, 0 if not, a negative ErrorCode for a bad key."""
        return [1 if c > 0 else c for c in self.batch_locate(keys)]

    def batch_locate(self, keys: Sequence[str]) -> list[int]:
        """Where each key is: a :class:`~mooncake_hicache.tiers.Tier` code (``DRAM`` 1, ``NVME`` 2,
        ``ABSENT`` 0; in a pool also ``REMOTE_DRAM`` 3 and ``REMOTE_NVME`` 4, the cheapest holder
        counting), or a negative ErrorCode for a bad key. Touches no data, as ``batch_is_exist``."""
        keys = self._check_lists(keys)
        codes = self._backend.batch_exists(keys)
        if isinstance(self._backend, _native.NvmeEngine):  # the NVMe engine alone answers 1 for "stored"
            return [int(Tier.NVME) if c == 1 else c for c in codes]
        return codes

    def prefetch(self, keys: Sequence[str], batch_pages: int = 0) -> int:
        """Start copying the NVMe-only pages among ``keys`` into DRAM in the background, in the
        order given and ``batch_pages`` pages a step (0: the tier's default, 16), so a following
        ``batch_get_into`` reads DRAM. Returns how many pages were queued."""
        keys = self._check_lists(keys)
        fn = getattr(self._backend, "prefetch", None)
        if fn is None:
            return 0
        return fn(keys, int(batch_pages)) if batch_pages else fn(keys)

    # ---- single-key convenience ----------------------------------------------------------

    def put(self, key: str, value: Union[bytes, bytearray, memoryview], *, keep_existing: bool = False) -> int:
        """Store ``value`` under ``key`` (copies; no registration needed). Returns 0 or a
        negative ErrorCode. A stored key gets the new value unless ``keep_existing`` (see
        :meth:`batch_put_from`)."""
        self._check_open()
        mv = memoryview(value).cast("B")
        if not mv.contiguous:
            raise StoreError("put needs a contiguous buffer")
        import ctypes
        put = self._put_fn("batch_put", keep_existing)
        if len(mv) == 0:
            return put([_as_key(key)], [1], [0])[0]
        holder = (ctypes.c_char * len(mv)).from_buffer_copy(mv) if mv.readonly else (ctypes.c_char * len(mv)).from_buffer(mv)
        return put([_as_key(key)], [ctypes.addressof(holder)], [len(mv)])[0]

    def get(self, key: str) -> bytes:
        """The value stored under ``key``, or ``b""`` when it is missing (as Mooncake's ``get``)."""
        self._check_open()
        out = self._backend.get_bytes(_as_key(key))
        return out if isinstance(out, bytes) else b""

    def is_exist(self, key: str) -> int:
        """1 if ``key`` is stored, 0 if not."""
        return self.batch_is_exist([key])[0]

    def get_size(self, key: str) -> int:
        """Length of the value stored under ``key``, or a negative ErrorCode."""
        self._check_open()
        return self._backend.value_size(_as_key(key))

    def remove(self, key: str) -> int:
        """Delete ``key`` (also across restarts). Returns 0 or NOT_FOUND."""
        self._check_open()
        return self._backend.remove(_as_key(key))

    def remove_prefix(self, prefix: Union[str, bytes]) -> int:
        """Delete every key that starts with ``prefix`` (a namespace, such as one SGLang server's
        pages), on every tier and across restarts, as :meth:`remove` does. Returns how many keys
        were removed, or a negative ErrorCode (``UNSUPPORTED`` for a DRAM-only store that keeps
        no keys: set ``tiers.dram.keep_keys: true``)."""
        self._check_open()
        key = _as_key(prefix)
        if not key:
            raise StoreError("remove_prefix needs a non-empty prefix; remove_all() removes every key")
        if len(key.encode() if isinstance(key, str) else key) > self.MAX_KEY_LEN:
            raise StoreError(f"the prefix is longer than a key may be ({self.MAX_KEY_LEN} bytes), so no key starts with it")
        return self._backend.remove_prefix(key)

    def remove_all(self, force: bool = False) -> int:
        """Delete every key. Returns 0 or a negative ErrorCode. ``force`` is Mooncake's argument
        (skip lease checks); it is accepted for compatibility and changes nothing here: a removal
        never waits for readers, whose pinned copies stay valid until they finish."""
        self._check_open()
        return self._backend.remove_all()

    # ---- lifecycle and figures -----------------------------------------------------------

    @property
    def prefetcher(self):
        """The prefetch policy layer of this store (``config.prefetch``; a
        :class:`~mooncake_hicache.policies.Prefetcher`), built on first use."""
        found = self.__dict__.get("_prefetcher")
        if found is None:
            from .policies import Prefetcher
            found = self.__dict__.setdefault("_prefetcher", Prefetcher(self, self.config.prefetch))
        return found

    def stats(self) -> dict:
        """Live figures as a plain dict with one section per part: ``dram``, ``nvme``,
        ``tiering`` (hits per tier, demotions, promotions), ``node`` (in node mode), ``prefetch``
        (once the prefetch policy has been used). Keys include entries, value_bytes, hits,
        misses, checksum_failures, evictions, index_bytes_per_entry and recovery_seconds."""
        self._check_open()
        self._log_notes()
        try:
            out = backend_stats(self._backend)
        except _native.EngineError as e:  # the node is not reachable
            raise StoreError(f"cannot read the store's figures: {e.args[-1]}") from None
        if "_prefetcher" in self.__dict__:
            out["prefetch"] = self.__dict__["_prefetcher"].stats()
        return out

    def close(self) -> None:
        """Seal the open region, flush, release the data file. Idempotent."""
        if not self._closed:
            self._closed = True
            self._log_notes()
            self._backend.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_backend", None) is None:
            return  # the constructor failed: nothing to close
        try:
            self.close()
        except Exception:
            pass

    # ---- helpers -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed; open a new one with Store.from_config")

    def _check_lists(self, keys: Iterable[Key], *lists: Iterable[Any]) -> list[Key]:
        """The keys as a list of str/bytes the native layer takes, after checking that every
        other list has one entry per key. Any iterable works (a generator is read once); a plain
        string or bytes object is refused rather than taken as one-letter keys."""
        self._check_open()
        keys = _key_list(keys)
        for other in lists:
            if len(other) != len(keys):
                raise StoreError(f"got {len(keys)} keys but a list of {len(other)} pointers/sizes; pass one entry per key")
        return keys

    def _put_fn(self, name: str, keep_existing: bool):
        return functools.partial(getattr(self._backend, name), keep_existing=bool(keep_existing))

    def _call(self, fn, keys, ptrs, sizes, depths, live):
        """Run ``fn`` on the keys at indexes ``live``; depths go along when given (backends
        without a DRAM tier have no use for them)."""
        args = [[keys[i] for i in live], [ptrs[i] for i in live], [sizes[i] for i in live]]
        if depths is not None and not isinstance(self._backend, _native.NvmeEngine):
            if len(depths) != len(keys):
                raise StoreError(f"got {len(keys)} keys but {len(depths)} depths; pass one depth per key")
            args.append([int(depths[i]) for i in live])
        return fn(*args)

    def _flat_call(self, fn, keys: list[str], ptrs: Sequence[int], sizes: Sequence[int], depths=None) -> list[int]:
        # Keys whose buffers are not registered get their code here and are left out of the call.
        codes = [self._buffers.check((p,), (n,)) for p, n in zip(ptrs, sizes)]
        live = [i for i, c in enumerate(codes) if c == 0]
        if live:
            for i, r in zip(live, self._call(fn, keys, ptrs, sizes, depths, live)):
                codes[i] = r
        return [int(c) for c in codes]

    def _sg_call(self, fn, keys: list[str], all_ptrs, all_sizes, depths=None) -> list[int]:
        codes = []
        for i, (p, n) in enumerate(zip(all_ptrs, all_sizes)):
            if len(p) != len(n):
                raise StoreError(f"key {i}: {len(p)} pointers but {len(n)} sizes; pass one size per buffer")
            codes.append(self._buffers.check(p, n) if p else int(ErrorCode.INVALID_PARAMS))
        live = [i for i, c in enumerate(codes) if c == 0]
        if live:
            ptrs = [list(p) for p in all_ptrs]
            sizes = [list(n) for n in all_sizes]
            for i, r in zip(live, self._call(fn, keys, ptrs, sizes, depths, live)):
                codes[i] = r
        return [int(c) for c in codes]

    def _log_notes(self) -> None:
        log_notes(self._backend, log)


Key = Union[str, bytes]


def _as_list(items: Iterable[Any]) -> Sequence[Any]:
    return items if isinstance(items, (list, tuple)) else list(items)


def _key_list(keys: Iterable[Any]) -> list[Key]:
    if isinstance(keys, (str, bytes, bytearray)):
        raise StoreError(f"expected a list of keys, got one {type(keys).__name__}; to pass a single key "
                         f"write [key]")
    try:
        keys = _as_list(keys)
    except TypeError:
        raise StoreError(f"expected a list of keys, got {type(keys).__name__}") from None
    if all(type(k) is str and k.isascii() for k in keys):  # the common case: no per-key call
        return keys if isinstance(keys, list) else list(keys)
    return [_as_key(k, i) for i, k in enumerate(keys)]


def _as_key(key: Any, index: Optional[int] = None) -> Key:
    """``key`` as the native layer takes it: a str (stored as its UTF-8 bytes) or bytes (stored
    as they are, so a key need not be text)."""
    which = "key" if index is None else f"key {index}"
    if isinstance(key, str):
        try:
            key.encode("utf-8")
        except UnicodeEncodeError as e:
            raise StoreError(f"{which} {key[:40]!r} cannot be stored as UTF-8 ({e.reason} at {e.start}); "
                             f"pass it as bytes instead") from None
        return key
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise StoreError(f"keys must be str or bytes, got {type(key).__name__} for {which}")
