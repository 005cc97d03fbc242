"""The configuration of mooncake-hicache: one YAML schema, loaded and validated with clear errors.

A configuration document has one mapping per section. Every setting has a default, so an empty
document (or no document at all) is valid::

    tiers:
      nvme:
        path: /var/tmp/mooncake-hicache/nvme.data  # data file (created, preallocated) or block device
        capacity: 4GiB        # total bytes of the data file; 0 = whole device (block devices only)
        region_size: 64MiB    # unit of allocation and eviction
        queue_depth: 64       # max I/Os in flight per caller
        direct_io: true       # open with O_DIRECT
        io_backend: auto      # auto | io_uring | threads
        sync_on_seal: true    # fdatasync when a region is sealed
        reinsertion: true     # on region reclaim, re-append pages that were read since written
    logging:
      level: INFO             # DEBUG | INFO | WARNING | ERROR

Sizes are byte counts (``4096``) or a number with a unit: ``KB MB GB TB`` are decimal,
``KiB MiB GiB TiB`` (and the shorthands ``k m g t``) are binary, ``B`` is bytes; units are
case-insensitive and may follow a space (``1.5 GiB``).

Tiers: leaving out the whole ``tiers`` section gives the default NVMe tier. A ``tiers`` mapping
that is present lists exactly the tiers wanted; a tier it leaves out (or sets to ``null``) is not
configured. ``Config.require_tier()`` checks that at least one tier is configured.

Environment variables override the document before it is validated:
``MOONCAKE_HICACHE_<SECTION>__<SUB>__<FIELD>`` (a double underscore between levels, names
case-insensitive), e.g. ``MOONCAKE_HICACHE_TIERS__NVME__CAPACITY=8GiB``. Values are read as YAML,
so ``true`` and ``64`` are typed. ``MOONCAKE_HICACHE_CONFIG`` names the YAML file to load when
``load_config`` is given no source.

Every problem raises ``ConfigError`` whose ``field`` is the dotted path of the offending setting
(``tiers.nvme.capacity``) and whose message says what to change.

Adding a section is adding a frozen dataclass whose fields are declared with ``_setting`` (a
leaf with its parser) or ``_section`` (a nested dataclass), plus an optional ``_check`` method for
rules that involve several fields, and listing it in its parent dataclass.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import stat
from dataclasses import dataclass, field as _dataclass_field
from fractions import Fraction
from typing import Any, Callable, Mapping, Optional, Union

import yaml

from .errors import ConfigError

__all__ = [
    "Config",
    "ConfigError",
    "LoggingConfig",
    "NvmeConfig",
    "TiersConfig",
    "ENV_PREFIX",
    "CONFIG_ENV_VAR",
    "DEFAULT_NVME_PATH",
    "format_size",
    "load_config",
    "parse_size",
]

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

ENV_PREFIX = "MOONCAKE_HICACHE_"
CONFIG_ENV_VAR = ENV_PREFIX + "CONFIG"
DEFAULT_NVME_PATH = "/var/tmp/mooncake-hicache/nvme.data"

IO_BACKENDS = ("auto", "io_uring", "threads")
EVICTION_POLICIES = ("lru", "s3fifo", "prefix_lru")
ADMISSION_POLICIES = ("always", "never", "second_hit")
MODES = ("auto", "node", "in_process")
DEFAULT_SOCKET = "/tmp/mooncake-hicache/node.sock"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

REGION_ALIGNMENT = 4096
MIN_REGION_SIZE = 1 * MiB
MAX_REGION_SIZE = 4 * GiB
MIN_QUEUE_DEPTH = 1
MAX_QUEUE_DEPTH = 1024

# --------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------

_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": KiB, "mib": MiB, "gib": GiB, "tib": TiB,
    "k": KiB, "m": MiB, "g": GiB, "t": TiB,
}
_SIZE_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)$", re.IGNORECASE)
_SIZE_EXAMPLE = "write a byte count or a number with a unit, e.g. 64GiB, 512MiB, 1.5GiB or 4096"


def parse_size(value: Any, field: str) -> int:
    """Return ``value`` as a number of bytes.

    ``value`` is a non-negative int (bytes) or a string such as ``"64GiB"``, ``"512 MiB"``,
    ``"1.5GiB"``, ``"64GB"`` (decimal), ``"4k"`` (binary shorthand) or ``"4096"``. The result
    must be a whole number of bytes. Anything else raises ``ConfigError`` naming ``field``.
    """
    if isinstance(value, bool):
        raise ConfigError(field, f"expected a size, got the boolean {_show(value)}; {_SIZE_EXAMPLE}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(field, f"size must not be negative, got {value}; {_SIZE_EXAMPLE}")
        return value
    if not isinstance(value, str):
        raise ConfigError(field, f"expected a size, got {_show(value)}; {_SIZE_EXAMPLE}")
    text = value.strip()
    if text.startswith("-"):
        raise ConfigError(field, f"size must not be negative, got {_show(value)}; {_SIZE_EXAMPLE}")
    match = _SIZE_RE.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ConfigError(field, f"cannot read {_show(value)} as a size; {_SIZE_EXAMPLE}")
    size = Fraction(match.group(1)) * _SIZE_UNITS[unit]
    if size.denominator != 1:
        raise ConfigError(
            field, f"{_show(value)} is not a whole number of bytes; {_SIZE_EXAMPLE}")
    return int(size)


def format_size(n: int) -> str:
    """Format a byte count for messages: ``512 B``, ``4.0 KiB``, ``64.0 MiB``, ``1.5 GiB``."""
    if abs(n) < KiB:
        return f"{n} B"
    for unit, scale in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------
# Leaf parsers: (value, dotted field path) -> typed value, raising ConfigError
# --------------------------------------------------------------------------------------------

def _show(value: Any) -> str:
    """A short rendering of a user value for messages."""
    if value is None:
        return "null"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_int(value: Any, field: str) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, f"expected an integer, got {_show(value)}; write a whole number such as 64")
    return value


def _parse_bool(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "yes", "on"):
            return True
        if word in ("false", "no", "off"):
            return False
    raise ConfigError(field, f"expected true or false, got {_show(value)}; write true or false")


def _parse_path(value: Any, field: str) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ConfigError(field, f"path must not be empty; give a file or block device path such as {DEFAULT_NVME_PATH}")
    if not isinstance(value, str):
        raise ConfigError(field, f"expected a path string, got {_show(value)}; give a path such as {DEFAULT_NVME_PATH}")
    return os.path.expanduser(value)


def _choice(choices: tuple[str, ...], normalize: Callable[[str], str]) -> Callable[[Any, str], str]:
    def parse(value: Any, field: str) -> str:
        if isinstance(value, str) and normalize(value.strip()) in choices:
            return normalize(value.strip())
        raise ConfigError(field, f"invalid value {_show(value)}; choose one of: {', '.join(choices)}")
    return parse


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------

def _setting(default: Any, parse: Callable[[Any, str], Any]) -> Any:
    """Declare a leaf setting with its default and its parser."""
    return _dataclass_field(default=default, metadata={"parse": parse})


def _section(cls: type, *, optional: bool = False) -> Any:
    """Declare a nested section. An ``optional`` section may be ``null`` and is ``None`` when a
    parent mapping that is present leaves it out; a required section takes its defaults."""
    return _dataclass_field(default_factory=cls, metadata={"section": cls, "optional": optional})


@dataclass(frozen=True)
class NvmeConfig:
    """The NVMe tier: a preallocated data file (or a whole block device) written in regions."""

    path: str = _setting(DEFAULT_NVME_PATH, _parse_path)
    capacity: int = _setting(4 * GiB, parse_size)
    region_size: int = _setting(64 * MiB, parse_size)
    queue_depth: int = _setting(64, _parse_int)
    direct_io: bool = _setting(True, _parse_bool)
    io_backend: str = _setting("auto", _choice(IO_BACKENDS, str.lower))
    sync_on_seal: bool = _setting(True, _parse_bool)
    reinsertion: bool = _setting(True, _parse_bool)

    def _check(self, where: str) -> None:
        at = _joiner(where)
        rs = self.region_size
        if rs % REGION_ALIGNMENT:
            raise ConfigError(at("region_size"), f"region size {rs} bytes is not a multiple of {REGION_ALIGNMENT}; use a power of two such as 64MiB")
        if rs < MIN_REGION_SIZE:
            raise ConfigError(at("region_size"), f"region size {format_size(rs)} is below the minimum of {format_size(MIN_REGION_SIZE)}; raise it (64MiB is a good default)")
        if rs > MAX_REGION_SIZE:
            raise ConfigError(at("region_size"), f"region size {format_size(rs)} is above the maximum of {format_size(MAX_REGION_SIZE)}; lower it (64MiB is a good default)")
        if not MIN_QUEUE_DEPTH <= self.queue_depth <= MAX_QUEUE_DEPTH:
            raise ConfigError(at("queue_depth"), f"queue depth {self.queue_depth} is out of range; choose a value from {MIN_QUEUE_DEPTH} to {MAX_QUEUE_DEPTH}")

        block_device = _check_nvme_path(self.path, at("path"))
        if self.capacity == 0:
            if not block_device:
                raise ConfigError(at("capacity"), f"capacity 0 means 'the whole device' and is allowed only when {at('path')} is a block device; set a size such as 4GiB")
        elif self.capacity < 2 * rs:
            raise ConfigError(at("capacity"), f"capacity {format_size(self.capacity)} is smaller than two regions of {format_size(rs)}; raise {at('capacity')} or lower {at('region_size')}")


@dataclass(frozen=True)
class DramConfig:
    """The DRAM tier: one shared-memory arena cut into slabs of fixed-size slots.

    ``eviction``: ``lru``, ``s3fifo`` or ``prefix_lru`` (LRU that, among equally cold pages, drops
    the deepest pages of a prefix first). ``prefix_lru`` needs each page's depth in its prefix
    chain (``depths=`` on the puts). Under SGLang that takes ``"hicache_storage_pass_prefix_keys":
    true`` in ``--hicache-storage-backend-extra-config`` (SGLang's default is false): without it
    every page is depth 0, ``prefix_lru`` acts as ``lru``, and the SGLang backend says so once in
    its log."""

    capacity: int = _setting(1 * GiB, parse_size)
    slab_size: int = _setting(32 * MiB, parse_size)
    eviction: str = _setting("lru", _choice(EVICTION_POLICIES, str.lower))
    admission: str = _setting("always", _choice(ADMISSION_POLICIES, str.lower))
    write_through: bool = _setting(False, _parse_bool)
    hugepages: bool = _setting(True, _parse_bool)

    def _check(self, where: str) -> None:
        at = _joiner(where)
        if self.slab_size % REGION_ALIGNMENT or self.slab_size == 0:
            raise ConfigError(at("slab_size"), f"slab size {self.slab_size} bytes is not a positive multiple of {REGION_ALIGNMENT}; use e.g. 32MiB (it must hold your largest page)")
        if self.capacity < self.slab_size:
            raise ConfigError(at("capacity"), f"capacity {format_size(self.capacity)} is smaller than one slab of {format_size(self.slab_size)}; raise {at('capacity')} or lower {at('slab_size')}")


@dataclass(frozen=True)
class TiersConfig:
    """The storage tiers. ``None`` means the tier is not configured."""

    dram: Optional[DramConfig] = _section(DramConfig, optional=True)
    nvme: Optional[NvmeConfig] = _section(NvmeConfig, optional=True)


@dataclass(frozen=True)
class NodeConfig:
    """The per-host node that serves the tiers to every process on the host."""

    socket: str = _setting(DEFAULT_SOCKET, _parse_path)
    timeout_ms: int = _setting(5000, _parse_int)
    autostart: bool = _setting(True, _parse_bool)

    def _check(self, where: str) -> None:
        at = _joiner(where)
        if len(os.fsencode(self.socket)) > 107:
            raise ConfigError(at("socket"), f"socket path {self.socket!r} is longer than the 107 bytes a Unix socket allows; choose a shorter path")
        if not 1 <= self.timeout_ms <= 600_000:
            raise ConfigError(at("timeout_ms"), f"timeout {self.timeout_ms} ms is out of range; choose 1 to 600000 (5000 is a good default)")


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics served by the node over HTTP (``GET /metrics``)."""

    port: int = _setting(9731, _parse_int)
    host: str = _setting("127.0.0.1", _parse_path)

    def _check(self, where: str) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(_joiner(where)("port"), f"port {self.port} is out of range; choose 1 to 65535, or 0 to turn metrics off")


@dataclass(frozen=True)
class LoggingConfig:
    """Logging of the Python layer and the native engine."""

    level: str = _setting("INFO", _choice(LOG_LEVELS, str.upper))


@dataclass(frozen=True)
class Config:
    """The whole configuration. Build it with ``load_config``."""

    mode: str = _setting("auto", _choice(MODES, str.lower))
    tiers: TiersConfig = _section(TiersConfig)
    node: NodeConfig = _section(NodeConfig)
    metrics: MetricsConfig = _section(MetricsConfig)
    logging: LoggingConfig = _section(LoggingConfig)

    @property
    def resolved_mode(self) -> str:
        """``node`` or ``in_process``: ``auto`` means node when a DRAM tier is configured (its
        arena is what the node shares with every process on the host), in-process otherwise."""
        if self.mode != "auto":
            return self.mode
        return "node" if self.tiers.dram is not None else "in_process"

    def _check(self, where: str) -> None:
        if self.mode == "node" and self.tiers.dram is None:
            raise ConfigError("mode", "mode 'node' needs a tiers.dram section (its arena carries the bytes between processes); add tiers.dram or set mode: in_process")

    def to_dict(self) -> dict:
        """The configuration as plain dicts, lists and scalars (sizes as ints); ``load_config``
        accepts it back."""
        return dataclasses.asdict(self)

    def validate(self) -> "Config":
        """Check the rules that involve several settings or the file system; return ``self``.
        ``load_config`` calls it; call it again on a ``dataclasses.replace``-d copy."""
        _validate(self, "")
        return self

    def require_tier(self) -> "Config":
        """Raise ``ConfigError`` unless at least one tier is configured; return ``self``."""
        tiers = self.tiers
        if all(getattr(tiers, f.name) is None for f in dataclasses.fields(tiers)):
            raise ConfigError(
                "tiers",
                f"no tier configured; add a tiers.nvme section, e.g. "
                f"tiers: {{nvme: {{path: {DEFAULT_NVME_PATH}, capacity: 4GiB}}}}")
        return self


# --------------------------------------------------------------------------------------------
# Building and validating
# --------------------------------------------------------------------------------------------

def _joiner(where: str) -> Callable[[str], str]:
    return lambda name: f"{where}.{name}" if where else name


def _unknown_key_message(key: Any, known: list[str]) -> str:
    close = difflib.get_close_matches(str(key).lower(), known, n=1, cutoff=0.6)
    if close:
        return f"unknown field {_show(str(key))}; did you mean {_show(close[0])}?"
    return f"unknown field {_show(str(key))}; known fields here are: {', '.join(known)}"


def _build(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass ``cls`` from the mapping ``raw`` found at dotted path ``where``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        what = f"section {where}" if where else "the configuration"
        raise ConfigError(where, f"{what} must be a mapping of settings, got {_show(raw)}; write it as 'key: value' lines")
    at = _joiner(where)
    fields_ = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields_:
            raise ConfigError(at(str(key)), _unknown_key_message(key, list(fields_)))
    kwargs = {}
    for name, f in fields_.items():
        section = f.metadata.get("section")
        if section is not None:
            if name in raw:
                value = raw[name]
                optional = f.metadata["optional"]
                kwargs[name] = None if value is None and optional else _build(section, value, at(name))
            elif f.metadata["optional"]:
                kwargs[name] = None
        elif name in raw:
            kwargs[name] = f.metadata["parse"](raw[name], at(name))
    return cls(**kwargs)


def _validate(obj: Any, where: str) -> None:
    at = _joiner(where)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if "section" in f.metadata and value is not None:
            _validate(value, at(f.name))
    check = getattr(obj, "_check", None)
    if check is not None:
        check(where)


def _check_nvme_path(path: str, field: str) -> bool:
    """Check that ``path`` can hold the data file without creating anything; return whether it
    is an existing block device."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        st = None  # reported below, naming the component that is a file
    except OSError as e:
        raise ConfigError(field, f"cannot inspect {path!r}: {e.strerror}; choose another path")
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(field, f"{path!r} is a directory; give a file path inside it, e.g. {os.path.join(path, 'nvme.data')!r}")
        if stat.S_ISBLK(st.st_mode) or stat.S_ISREG(st.st_mode):
            kind = "block device" if stat.S_ISBLK(st.st_mode) else "file"
            if not os.access(path, os.R_OK | os.W_OK):
                raise ConfigError(field, f"{kind} {path!r} is not readable and writable by this user; fix its permissions or choose another path")
            return stat.S_ISBLK(st.st_mode)
        raise ConfigError(field, f"{path!r} is neither a regular file nor a block device; give a data file path such as {DEFAULT_NVME_PATH}")

    # The file does not exist yet: its nearest existing ancestor must be a writable directory.
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ConfigError(field, f"{ancestor!r} is not a directory, so {path!r} cannot be created; choose a path under a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(field, f"directory {ancestor!r} is not writable; choose a path on a writable file system")
    return False


# --------------------------------------------------------------------------------------------
# Sources: YAML files, dicts, environment
# --------------------------------------------------------------------------------------------

class _StrictLoader(yaml.SafeLoader):
    """A safe loader that rejects duplicate keys instead of keeping the last one."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<' merges may be overridden by explicit keys
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:
                continue  # unhashable key: let the base class report it
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r} (first at line {first.start_mark.line + 1})",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Union[str, os.PathLike], origin: str) -> Any:
    shown = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError("", f"configuration file {shown!r}{origin} was not found; check the path") from None
    except IsADirectoryError:
        raise ConfigError("", f"configuration file {shown!r}{origin} is a directory; give the path of a YAML file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("", f"cannot read configuration file {shown!r}{origin}: {e}; check the file") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        context, context_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
        if context and context_mark is not None and mark is not None and context_mark.line != mark.line:
            problem += f" ({context} started at line {context_mark.line + 1})"
        raise ConfigError("", f"invalid YAML in {shown!r}{where}: {problem}; fix the syntax there") from None


def _plain_copy(obj: Any) -> Any:
    """A deep copy with every mapping turned into a dict, so overrides never touch the caller's."""
    if isinstance(obj, Mapping):
        return {k: _plain_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain_copy(v) for v in obj]
    return obj


def _env_overrides(env: Mapping[str, str]) -> list[tuple[str, list[str], Any]]:
    """Return ``(variable, path, value)`` for each override variable in ``env``."""
    sections = [f.name for f in dataclasses.fields(Config)]
    overrides = []
    for name in sorted(env):
        if not name.upper().startswith(ENV_PREFIX) or name.upper() == CONFIG_ENV_VAR:
            continue
        tail = name[len(ENV_PREFIX):].lower()
        if "__" not in tail and tail not in sections:
            if any(tail.startswith(s + "_") for s in sections):
                raise ConfigError(name, f"environment variable {name} looks like a configuration override; separate levels with double underscores, e.g. {ENV_PREFIX}TIERS__NVME__CAPACITY")
            continue  # not a configuration variable
        parts = tail.split("__")
        if not all(parts):
            raise ConfigError(name, f"environment variable {name} has an empty level; write it as {ENV_PREFIX}<SECTION>__<FIELD>, e.g. {ENV_PREFIX}LOGGING__LEVEL")
        raw = env[name]
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        overrides.append((name, parts, value))
    return overrides


def _apply_override(doc: dict, variable: str, parts: list[str], value: Any) -> str:
    """Set ``value`` at ``parts`` in ``doc`` and return the dotted path. A section missing on the
    way is created from its defaults (so overriding one setting keeps the others); a ``null``
    section is created empty (enabled). Raises ``ConfigError`` naming ``variable`` if the path is
    not in the schema."""
    cls: type = Config
    defaults: Any = Config()
    container: Optional[dict] = doc  # None once the document has a non-mapping on the way
    for i, part in enumerate(parts):
        fields_ = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields_:
            raise ConfigError(variable, f"environment variable {variable} sets {_unknown_key_message(part, list(fields_))}")
        if i == len(parts) - 1:
            if container is not None:
                container[part] = value
            break
        section = fields_[part].metadata.get("section")
        if section is None:
            raise ConfigError(variable, f"{'.'.join(parts[: i + 1])} is a setting, not a section; remove the extra levels from environment variable {variable}")
        default = getattr(defaults, part) if defaults is not None else None
        if container is not None:
            current = container.get(part)
            if current is None:
                missing = part not in container
                current = dataclasses.asdict(default) if missing and default is not None else {}
                container[part] = current
            # a non-mapping section stays as written; building the document reports it
            container = current if isinstance(current, dict) else None
        cls, defaults = section, default
    return ".".join(parts)


def load_config(source: Union[str, os.PathLike, Mapping, None] = None,
                env: Optional[Mapping[str, str]] = None) -> Config:
    """Load, override and validate the configuration.

    ``source`` is the path of a YAML file, a mapping with the same shape, or ``None``: then the
    file named by ``MOONCAKE_HICACHE_CONFIG`` is loaded if set, else the defaults are used.
    ``env`` (default ``os.environ``) supplies ``MOONCAKE_HICACHE_<SECTION>__<FIELD>`` overrides,
    applied before validation. Raises ``ConfigError`` naming the field and the fix.
    """
    env = os.environ if env is None else env
    if source is None:
        config_file = env.get(CONFIG_ENV_VAR)
        if config_file:
            raw = _read_yaml(config_file, f" (from {CONFIG_ENV_VAR})")
        else:
            raw = {}
    elif isinstance(source, Mapping):
        raw = source
    elif isinstance(source, (str, os.PathLike)):
        raw = _read_yaml(source, "")
    else:
        raise ConfigError("", f"cannot load a configuration from {type(source).__name__}; pass a YAML file path, a dict or None")

    if raw is None:  # an empty file
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError("", f"the top level of the configuration must be a mapping of sections ({', '.join(f.name for f in dataclasses.fields(Config))}), got {_show(raw)}")
    doc = _plain_copy(raw)

    origin: dict[str, str] = {}
    for variable, parts, value in _env_overrides(env):
        origin[_apply_override(doc, variable, parts, value)] = variable

    try:
        return _build(Config, doc, "").validate()
    except ConfigError as e:
        variable = next((v for p, v in origin.items() if e.field == p or e.field.startswith(p + ".")), None)
        if variable is None:
            raise
        raise ConfigError(e.field, f"{e.reason} (value set by environment variable {variable})") from None
