"""SGLang general plugin: serve ``--hicache-storage-backend mooncake`` with mooncake-hicache.

SGLang (``sglang.srt.plugins.load_plugins``) loads every entry point of the group
``sglang.srt.plugins`` in each of its processes and calls it with no arguments; the return value
is ignored and an exception is logged, not raised. Ours is declared in pyproject.toml:

    [project.entry-points."sglang.srt.plugins"]
    mooncake_hicache = "mooncake_hicache.sglang.plugin:register"

``SGLANG_PLUGINS=name,...`` (SGLang's allow-list) or ``MOONCAKE_HICACHE_DISABLE_SGLANG_PLUGIN=1``
(ours) leave the name ``mooncake`` to SGLang's built-in Mooncake store.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("mooncake_hicache.sglang")

DISABLE_ENV = "MOONCAKE_HICACHE_DISABLE_SGLANG_PLUGIN"
BACKEND_NAME = "mooncake"
MODULE_PATH = "mooncake_hicache.sglang"
CLASS_NAME = "MooncakeHiCacheStorage"


def _disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def register() -> bool:
    """Map SGLang's storage backend name ``mooncake`` to ``MooncakeHiCacheStorage``.
    Returns whether it did (False when turned off by ``MOONCAKE_HICACHE_DISABLE_SGLANG_PLUGIN``)."""
    if _disabled():
        log.info("mooncake-hicache: %s is set; --hicache-storage-backend %s stays with SGLang's built-in Mooncake store",
                 DISABLE_ENV, BACKEND_NAME)
        return False
    # Importing the factory registers SGLang's built-in backends; registering after that
    # replaces its 'mooncake' entry (SGLang logs that it overwrites it).
    from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory

    StorageBackendFactory.register_backend(BACKEND_NAME, MODULE_PATH, CLASS_NAME)
    log.info("mooncake-hicache: --hicache-storage-backend %s is served by %s.%s (set %s=1 for SGLang's built-in "
             "Mooncake store)", BACKEND_NAME, MODULE_PATH, CLASS_NAME, DISABLE_ENV)
    return True
