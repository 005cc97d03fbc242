"""mooncake-hicache: a tiered KV-cache storage backend for SGLang HiCache.

Public API: :class:`Store` (the store), :func:`load_config` / :class:`Config` (the YAML schema),
:class:`ErrorCode`, :class:`ConfigError`, :class:`StoreError`.
"""

from .config import Config, load_config
from .errors import ConfigError, ErrorCode, MooncakeHiCacheError, StoreError
from .store import Store

__all__ = ["Store", "Config", "load_config", "ErrorCode", "ConfigError", "StoreError", "MooncakeHiCacheError"]
__version__ = "0.1.0"
