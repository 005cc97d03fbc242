"""Typed exceptions and the integer result codes of the batch API.

The batch calls (``batch_put_from``, ``batch_get_into``, ``batch_is_exist``) never raise for a
per-key problem: they return one integer per key, ``>= 0`` on success and one of the negative
codes below on failure, as the Mooncake store's Python API does. Problems with the call itself
(mismatched list lengths, a closed store) raise ``StoreError``; bad configuration raises
``ConfigError`` naming the field and the fix.
"""

from __future__ import annotations

import enum


class MooncakeHiCacheError(Exception):
    """Base class of every exception this package raises."""


class ConfigError(MooncakeHiCacheError, ValueError):
    """A configuration value is wrong. The message names the field and what to change.

    ``field`` is the dotted path of the offending field (``tiers.nvme.capacity``), or ``""``
    when the whole document is wrong.
    """

    def __init__(self, field: str, message: str):
        self.field = field
        self.reason = message
        super().__init__(f"{field}: {message}" if field else message)


class StoreError(MooncakeHiCacheError, RuntimeError):
    """A call on a ``Store`` cannot be carried out as asked (bad arguments, store closed,
    data file in use or of another format). The message says what to change."""


class ErrorCode(enum.IntEnum):
    """Per-key result codes. Values match csrc/status.h; NOT_FOUND and INVALID_PARAMS use the
    numbers of the Mooncake store so callers written against it read them the same way."""

    OK = 0
    INVALID_PARAMS = -600        # empty key, null pointer, zero size, ...
    BUFFER_TOO_SMALL = -601      # the stored value is larger than the caller's buffers
    VALUE_TOO_LARGE = -602       # a value larger than the engine can hold in one region
    KEY_TOO_LONG = -603          # key longer than the limit (see Store.MAX_KEY_LEN)
    UNREGISTERED_BUFFER = -604   # pointer range not inside a register_buffer() range
    NOT_FOUND = -704             # miss (also: a record that failed its checksum)
    IO_ERROR = -800              # the device failed the read or write
    NO_SPACE = -802              # nothing could be evicted to make room
    CLOSED = -900                # the store was closed
    NODE_UNAVAILABLE = -901      # the node is not running or did not answer in time

    @classmethod
    def describe(cls, code: int) -> str:
        try:
            return cls(code).name
        except ValueError:
            return f"UNKNOWN({code})"
