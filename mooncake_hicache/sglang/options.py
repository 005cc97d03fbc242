"""What the SGLang backend reads from ``--hicache-storage-backend-extra-config``.

SGLang hands every storage backend one dict (``HiCacheStorageConfig.extra_config``), parsed from
the JSON string (or ``@file`` in JSON/YAML/TOML) given on its command line. Three kinds of keys
share it:

* keys SGLang reads itself (``prefetch_threshold``, ``interface_v1``, ``backend_name``, ...):
  :data:`SGLANG_KEYS`, ignored here. One of them matters to us: ``hicache_storage_pass_prefix_keys``
  (SGLang's default false) makes SGLang pass each page's prefix chain, from which the backend
  computes the depths the ``prefix_lru`` eviction policy needs;
* keys of this backend: ``config`` (path of a mooncake-hicache YAML file), ``extra_backend_tag``
  (a namespace put in front of every key, to isolate tenants sharing one store) and
  ``prefetch_on_exists`` (the old switch of prefetch: ``false`` is read as ``prefetch.policy:
  none``; choose the policy in the ``prefetch`` section instead, docs/prefetch.md);
* inline store settings: any top-level section of the store's YAML schema (``mode``, ``tiers``,
  ``node``, ``metrics``, ``logging``), deep-merged over the YAML file's content.

Anything else is logged and ignored (keys meant for another backend, e.g. SGLang's own Mooncake
store, must not stop the server).

The NVMe path may contain ``{tp_rank}``, ``{tp_size}``, ``{pp_rank}``, ``{dp_rank}`` and
``{cp_rank}``: with the in-process store each rank opens its own data file.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import os
from typing import Any, Mapping, Optional

import yaml

from ..config import CONFIG_ENV_VAR, Config
from ..errors import ConfigError

log = logging.getLogger("mooncake_hicache.sglang")

# Keys SGLang itself reads from the extra config (sglang 0.5.23: cache_controller,
# hybrid_cache_controller.parse_storage_backend_extra_config, backend_factory's dynamic path,
# unified_radix_cache, and the file backend's own keys that SGLang may inject).
SGLANG_KEYS = frozenset({
    "prefetch_threshold",
    "prefetch_timeout_base",
    "prefetch_timeout_per_ki_token",
    "hicache_storage_pass_prefix_keys",
    "interface_v1",
    "backend_name",
    "module_path",
    "class_name",
    "tp_lcm_size",
    "file_storage_path",
    "enable_metadata_cache",
    "metadata_ttl",
})

BACKEND_KEYS = frozenset({"config", "extra_backend_tag", "prefetch_on_exists"})

RANK_PLACEHOLDERS = ("tp_rank", "tp_size", "pp_rank", "dp_rank", "cp_rank")


def store_sections() -> list[str]:
    """Top-level sections of the store's configuration schema."""
    return [f.name for f in dataclasses.fields(Config)]


@dataclasses.dataclass(frozen=True)
class BackendOptions:
    """The parts of the extra config this backend uses."""

    store_config: Optional[dict]
    """The dict for ``Store.from_config`` (``None``: the store's defaults and environment)."""
    key_tag: str = ""
    prefetch_on_exists: bool = True
    config_path: Optional[str] = None


def deep_merge(base: dict, override: Mapping) -> dict:
    """``base`` with ``override`` merged in: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(dict(out[key]), value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError("config", f"mooncake-hicache configuration file {path!r} (extra-config key 'config') was not found; check the path (relative paths start at the server's working directory {os.getcwd()!r})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("config", f"cannot read mooncake-hicache configuration file {path!r}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError("config", f"invalid YAML in {path!r}: {e}") from None
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise ConfigError("config", f"{path!r} must hold a mapping of sections ({', '.join(store_sections())}), got {type(doc).__name__}")
    return dict(doc)


def _parse_bool(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.strip().lower() in ("true", "yes", "on", "1")
    raise ConfigError(field, f"expected true or false, got {value!r}")


def _inline_sections(extra: Mapping[str, Any]) -> dict:
    """The store sections given inline; unknown keys are logged (with a did-you-mean) and dropped."""
    sections = store_sections()
    inline: dict = {}
    for key, value in extra.items():
        if key in SGLANG_KEYS or key in BACKEND_KEYS:
            continue
        if key in sections:
            inline[key] = value
            continue
        close = difflib.get_close_matches(str(key), sections + sorted(BACKEND_KEYS), n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        log.warning("mooncake-hicache: ignoring extra-config key %r%s: it is neither a SGLang setting nor one of "
                    "ours (%s, or a store section: %s)", key, hint, ", ".join(sorted(BACKEND_KEYS)), ", ".join(sections))
    return inline


def _config_path(extra: Mapping[str, Any], env: Mapping[str, str]) -> Optional[str]:
    """The YAML file to read: extra-config key ``config``, else ``$MOONCAKE_HICACHE_CONFIG``."""
    config_path = extra.get("config")
    if config_path is not None and not isinstance(config_path, (str, os.PathLike)):
        raise ConfigError("config", f"extra-config key 'config' must be the path of a YAML file, got {config_path!r}")
    if config_path is None and env.get(CONFIG_ENV_VAR):
        config_path = env[CONFIG_ENV_VAR]
    return os.fspath(config_path) if config_path is not None else None


def _key_tag(extra: Mapping[str, Any]) -> str:
    tag = extra.get("extra_backend_tag")
    if tag is None:
        return ""
    if not isinstance(tag, (str, int)) or isinstance(tag, bool) or "/" in str(tag) or not str(tag):
        raise ConfigError("extra_backend_tag", f"extra_backend_tag must be a short non-empty string without '/', got {tag!r}")
    return str(tag)


def parse_extra_config(extra_config: Optional[Mapping[str, Any]], ranks: Optional[Mapping[str, int]] = None,
                       env: Optional[Mapping[str, str]] = None) -> BackendOptions:
    """Split SGLang's extra config into the store's configuration and this backend's options.

    ``ranks`` fills the rank placeholders of ``tiers.nvme.path``. Raises ``ConfigError`` for a
    bad ``config`` file or a bad backend option; the store validates its own settings."""
    extra = dict(extra_config or {})
    inline = _inline_sections(extra)
    config_path = _config_path(extra, os.environ if env is None else env)
    store_config = None
    if config_path is not None or inline:
        store_config = deep_merge(_read_yaml(config_path) if config_path is not None else {}, inline)
    if store_config is not None and ranks:
        store_config = _fill_rank_placeholders(store_config, ranks)
    prefetch = _parse_bool(extra.get("prefetch_on_exists", True), "prefetch_on_exists")
    if "prefetch_on_exists" in extra:
        store_config = _map_prefetch_on_exists(prefetch, store_config)
    return BackendOptions(store_config=store_config, key_tag=_key_tag(extra),
                          prefetch_on_exists=prefetch, config_path=config_path)


def _map_prefetch_on_exists(prefetch: bool, store_config: Optional[dict]) -> Optional[dict]:
    """The old boolean, as a prefetch policy: false is ``prefetch.policy: none``, true the default
    (``prefix_order``). A policy set in the store configuration wins."""
    section = (store_config or {}).get("prefetch")
    policy = section.get("policy") if isinstance(section, Mapping) else None
    if policy is not None:
        log.warning("mooncake-hicache: extra-config key prefetch_on_exists is ignored: prefetch.policy (%s) "
                    "decides; remove prefetch_on_exists", policy)
        return store_config
    log.info("mooncake-hicache: extra-config key prefetch_on_exists: %s is read as prefetch.policy: %s; "
             "write that instead", str(prefetch).lower(), "prefix_order" if prefetch else "none")
    if prefetch:
        return store_config
    return deep_merge(store_config or {}, {"prefetch": {"policy": "none"}})


def _fill_rank_placeholders(doc: dict, ranks: Mapping[str, int]) -> dict:
    tiers = doc.get("tiers")
    nvme = tiers.get("nvme") if isinstance(tiers, Mapping) else None
    path = nvme.get("path") if isinstance(nvme, Mapping) else None
    if not isinstance(path, str) or "{" not in path:
        return doc
    try:
        filled = path.format(**{k: ranks.get(k, 0) for k in RANK_PLACEHOLDERS})
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError("tiers.nvme.path", f"cannot fill {path!r}: {e!r}; the placeholders allowed are "
                          + ", ".join("{" + k + "}" for k in RANK_PLACEHOLDERS)) from None
    doc = dict(doc)
    doc["tiers"] = dict(tiers)
    doc["tiers"]["nvme"] = dict(nvme)
    doc["tiers"]["nvme"]["path"] = filled
    return doc
