"""Typed exceptions and the integer result codes of the batch API.

The batch calls (``batch_put_from``, ``batch_get_into``, ``batch_is_exist``) never raise for a
per-key problem: they return one integer per key, ``>= 0`` on success and one of the negative
codes below on failure, as the Mooncake store's Python API does. Problems with the call itself
(mismatched list lengths, a closed store) raise ``StoreError``; bad configuration raises
``ConfigError`` naming the field and the fix.
"""

from __future__ import annotations

import enum

from . import _native


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


def _describe(cls, code: int) -> str:
    """The member name of ``code`` (``"NOT_FOUND"``), or ``"UNKNOWN(<code>)"``."""
    try:
        return cls(code).name
    except ValueError:
        return f"UNKNOWN({code})"


def _mooncake_name(cls, code: int):
    """The Mooncake store's ErrorCode name that has ``code``'s number and meaning, or ``None``
    when Mooncake has no such result (the number is then one Mooncake does not use)."""
    return _native.STATUS_MOONCAKE_NAMES.get(cls(code).name)


# Per-key result codes, built from the extension's table (csrc/common/status.h,
# MCH_STATUS_CODES), the one place the numbers are written. Every code with a counterpart in the
# Mooncake store's ErrorCode table has that counterpart's number (NOT_FOUND is Mooncake's
# OBJECT_NOT_FOUND, -704; NO_SPACE its NO_AVAILABLE_HANDLE, -200; ...), so callers written
# against Mooncake read them the same way.
ErrorCode = enum.IntEnum("ErrorCode", [(name, value) for name, value, _ in _native.STATUS_CODES],
                         module=__name__, qualname="ErrorCode")
ErrorCode.__doc__ = "Per-key result codes:\n\n" + "\n".join(
    f"* ``{name}`` ({value}): {doc}" for name, value, doc in _native.STATUS_CODES)
ErrorCode.describe = classmethod(_describe)
ErrorCode.mooncake_name = classmethod(_mooncake_name)
