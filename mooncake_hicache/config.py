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
    prefetch:                 # docs/prefetch.md
      policy: prefix_order    # prefix_order | none | cost_aware | package.module:ClassName
      batch_pages: 16         # pages promoted NVMe -> DRAM per step (a step lands together)
      concurrency: 1          # promotion steps running at once
      cost_model: {preset: 8b, prefill_tflops: 494.5}   # cost_aware: what recomputing costs
      estimates: {dram_gbps: 10, nvme_gbps: 8, smoothing: 0.1, probe_every: 32, probe_pages: 1}

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
import logging
import os
import pwd
import re
import socket
import stat
from dataclasses import dataclass, field as _dataclass_field
from fractions import Fraction
from typing import Any, Callable, Mapping, Optional, Union

import yaml

from . import _native
from .errors import ConfigError
from .memory_limits import memory_limit
from .runtime_dir import default_socket_path

log = logging.getLogger("mooncake_hicache.config")

__all__ = [
    "ClusterConfig",
    "ClusterMember",
    "Config",
    "ConfigError",
    "LoggingConfig",
    "NvmeConfig",
    "PrefetchConfig",
    "TiersConfig",
    "ENV_PREFIX",
    "CONFIG_ENV_VAR",
    "DEFAULT_NVME_PATH",
    "default_socket_path",
    "EtcdConfig",
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
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

REGION_ALIGNMENT = 4096
MIN_REGION_SIZE = 1 * MiB
MAX_REGION_SIZE = _native.MAX_REGION_SIZE  # lengths and block offsets are 32-bit on disk
MAX_SLAB_SIZE = _native.MAX_SLAB_SIZE      # DRAM slot lengths are 32-bit
DEFAULT_CLEAN_RESERVE = 0.1  # share of the DRAM arena kept clean (free or on NVMe)
MAX_CLEAN_RESERVE = 0.9      # clean pages still serve hits; above this the demoter writes nearly every put
MIN_DEMOTE_BATCH = 1 * MiB
MAX_DEMOTE_BATCH = 1 * GiB
NVME_REGION_OVERHEAD = _native.NVME_REGION_OVERHEAD  # a region's record header, summary and trailer
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


def _parse_share(value: Any, field: str) -> float:
    """A share of a whole: 0.1 or '10%'."""
    number = value
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or number != number:
        raise ConfigError(field, f"expected a share such as 0.1 or '10%', got {_show(value)}")
    return float(number)


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


_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


def _parse_bind_host(value: Any, field: str) -> str:
    """An address to listen on: an IPv4/IPv6 address or a host name, taken as written (never
    expanded like a path)."""
    import ipaddress
    text = value.strip() if isinstance(value, str) else None
    if text:
        try:
            ipaddress.ip_address(text)
            return text
        except ValueError:
            if _HOSTNAME_RE.match(text):
                return text
    raise ConfigError(field, f"invalid host {_show(value)}; give a host name or an IP address to listen on, such as 127.0.0.1 (no port, no scheme)")


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
    # Keep each page's key also without an NVMe tier (with one they are always kept: a demoted
    # page is written under its key). remove_prefix (SGLang's clear()) needs them; they cost about
    # the key's length + 10 bytes of node memory per page.
    keep_keys: bool = _setting(False, _parse_bool)
    # The clean reserve (docs/architecture.md, "Reads never wait for writes"): the share of the
    # arena a background demoter keeps free or already on NVMe, writing the coldest pages there
    # in batches of up to demote_batch bytes, so gets and puts take slots without waiting for an
    # NVMe write. 0 turns it off. Ignored without an NVMe tier or with admission 'never'.
    clean_reserve: float = _setting(DEFAULT_CLEAN_RESERVE, _parse_share)
    demote_batch: int = _setting(64 * MiB, parse_size)

    def _check(self, where: str) -> None:
        at = _joiner(where)
        if not 0 <= self.clean_reserve <= MAX_CLEAN_RESERVE:
            raise ConfigError(at("clean_reserve"), f"clean reserve {self.clean_reserve:g} is out of range; choose a share from 0 (off) to {MAX_CLEAN_RESERVE:g} of the arena, such as 0.1")
        if not MIN_DEMOTE_BATCH <= self.demote_batch <= MAX_DEMOTE_BATCH:
            raise ConfigError(at("demote_batch"), f"demote batch {format_size(self.demote_batch)} is out of range; choose a size from {format_size(MIN_DEMOTE_BATCH)} to {format_size(MAX_DEMOTE_BATCH)}, such as 64MiB")
        if self.slab_size % REGION_ALIGNMENT or self.slab_size == 0:
            raise ConfigError(at("slab_size"), f"slab size {self.slab_size} bytes is not a positive multiple of {REGION_ALIGNMENT}; use e.g. 32MiB (it must hold your largest page)")
        if self.slab_size > MAX_SLAB_SIZE:
            raise ConfigError(at("slab_size"), f"slab size {format_size(self.slab_size)} is above the maximum of {format_size(MAX_SLAB_SIZE)}; lower it to the size of your largest page (32MiB is a good default)")
        if self.capacity < self.slab_size:
            raise ConfigError(at("capacity"), f"capacity {format_size(self.capacity)} is smaller than one slab of {format_size(self.slab_size)}; raise {at('capacity')} or lower {at('slab_size')}")
        limit = memory_limit()
        if self.capacity > limit.usable:
            raise ConfigError(at("capacity"), f"capacity {format_size(self.capacity)} does not fit in {limit.what}: {format_size(limit.bytes)}, of which at most {format_size(limit.usable)} may go to the arena (the rest is the node's own); lower {at('capacity')} or raise the limit")


@dataclass(frozen=True)
class TiersConfig:
    """The storage tiers. ``None`` means the tier is not configured."""

    dram: Optional[DramConfig] = _section(DramConfig, optional=True)
    nvme: Optional[NvmeConfig] = _section(NvmeConfig, optional=True)

    def _check(self, where: str) -> None:
        at = _joiner(where)
        if self.dram is None or self.nvme is None:
            return
        largest = self.nvme.region_size - NVME_REGION_OVERHEAD  # the largest value a region stores
        if self.dram.slab_size > largest:
            raise ConfigError(at("dram.slab_size"), f"slab size {format_size(self.dram.slab_size)} admits pages larger than a region of {format_size(self.nvme.region_size)} ({at('nvme.region_size')}) can store (at most {largest} bytes), so such pages would be lost when they leave DRAM; lower {at('dram.slab_size')} to {largest} or less (e.g. half the region size), or raise {at('nvme.region_size')}")


def _parse_mode(value: Any, field: str) -> int:
    """A permission mode, written in octal: 0600 (YAML reads an unquoted 0600 as octal), '0660'."""
    mode = value
    if isinstance(value, str) and re.fullmatch(r"\s*(0o?)?[0-7]{3,4}\s*", value):
        mode = int(value.strip().replace("0o", ""), 8)
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ConfigError(field, f"{_show(value)} is not a permission mode; write it in octal as a quoted string such as '0600' or '0660'")
    if mode & 0o600 != 0o600:
        raise ConfigError(field, f"mode {mode:04o} does not let the node's own user read and write the socket; include 0600, e.g. '0600' or '0660'")
    return mode


def _parse_uids(value: Any, field: str) -> tuple:
    """User ids or user names; names are looked up now."""
    items = [] if value is None else value
    if not isinstance(items, (list, tuple)):
        raise ConfigError(field, f"expected a list of user ids or names, e.g. [1001, sglang], got {_show(value)}")
    uids = []
    for i, item in enumerate(items):
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            uids.append(item)
            continue
        try:
            uids.append(pwd.getpwnam(str(item)).pw_uid)
        except KeyError:
            raise ConfigError(f"{field}[{i}]", f"no user named {_show(item)} on this host; give a user id or an existing user name") from None
    return tuple(uids)


@dataclass(frozen=True)
class NodeConfig:
    """The per-host node that serves the tiers to every process on the host."""

    # Default: this user's runtime directory (runtime_dir.default_socket_path).
    socket: str = _dataclass_field(default_factory=lambda: default_socket_path(os.environ),
                                   metadata={"parse": _parse_path})
    timeout_ms: int = _setting(5000, _parse_int)
    autostart: bool = _setting(True, _parse_bool)
    max_connections: int = _setting(1024, _parse_int)
    socket_mode: int = _setting(0o600, _parse_mode)
    # Users besides the node's own that may be on the other end of the socket: clients the node
    # serves, and (for a client) the user the node may run as.
    allowed_uids: tuple = _setting((), _parse_uids)

    def _check(self, where: str) -> None:
        at = _joiner(where)
        if len(os.fsencode(self.socket)) > 107:
            raise ConfigError(at("socket"), f"socket path {self.socket!r} is longer than the 107 bytes a Unix socket allows; choose a shorter path")
        if not 1 <= self.timeout_ms <= 600_000:
            raise ConfigError(at("timeout_ms"), f"timeout {self.timeout_ms} ms is out of range; choose 1 to 600000 (5000 is a good default)")
        if not 1 <= self.max_connections <= 65536:
            raise ConfigError(at("max_connections"), f"{self.max_connections} connections is out of range; choose 1 to 65536 (1024 is a good default)")


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics served by the node over HTTP (``GET /metrics``)."""

    port: int = _setting(9731, _parse_int)
    host: str = _setting("127.0.0.1", _parse_bind_host)
    max_connections: int = _setting(16, _parse_int)  # open at once; more wait in the listen backlog
    timeout_s: int = _setting(5, _parse_int)         # an idle connection is closed after it

    def _check(self, where: str) -> None:
        at = _joiner(where)
        if not 0 <= self.port <= 65535:
            raise ConfigError(at("port"), f"port {self.port} is out of range; choose 1 to 65535, or 0 to turn metrics off")
        if not 1 <= self.max_connections <= 1024:
            raise ConfigError(at("max_connections"), f"{self.max_connections} connections is out of range; choose 1 to 1024 (16 is a good default)")
        if not 1 <= self.timeout_s <= 600:
            raise ConfigError(at("timeout_s"), f"{self.timeout_s} s is out of range; choose 1 to 600 (5 is a good default)")


@dataclass(frozen=True)
class LoggingConfig:
    """Logging of the Python layer and the native engine."""

    level: str = _setting("INFO", _choice(LOG_LEVELS, str.upper))


# --------------------------------------------------------------------------------------------
# The cluster section (pooled DRAM across hosts; docs/cluster.md)
# --------------------------------------------------------------------------------------------

TRANSPORTS = ("tcp", "rdma", "auto")  # auto: RDMA when a device has an active port, else TCP
MAX_GID_INDEX = 255
REDACTED = "<redacted>"  # what Config.to_dict() shows in place of an inline secret
MIN_SECRET_BYTES = 16
MAX_REPLICAS = 8
MAX_SPILL_DEPTH = 4
DEFAULT_ETCD_PREFIX = "/mooncake-hicache/"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ID_RULE = "use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
_SECRET_HOWTO = ("e.g. 'head -c 32 /dev/urandom | base64 > /etc/mooncake-hicache/cluster.secret; "
                 "chmod 600 /etc/mooncake-hicache/cluster.secret' and set cluster.secret_file to it")
_WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "*")


def _parse_id(value: Any, field: str) -> str:
    if isinstance(value, str) and _ID_RE.match(value.strip()):
        return value.strip()
    raise ConfigError(field, f"invalid id {_show(value)}; {_ID_RULE}")


def _parse_host(value: Any, field: str) -> str:
    if isinstance(value, str) and value.strip() and not any(c.isspace() for c in value.strip()) \
            and "://" not in value:
        return value.strip()
    raise ConfigError(field, f"invalid host {_show(value)}; give a host name or an IP address such as 10.0.0.1 (no scheme, no port)")


def _parse_port(value: Any, field: str) -> int:
    port = _parse_int(value, field)
    if not 1 <= port <= 65535:
        raise ConfigError(field, f"port {port} is out of range; choose 1 to 65535")
    return port


def _positive_number(what: str, example: str, most: float = float("inf")) -> Callable[[Any, str], float]:
    """A parser of numbers in (0, most] (ints, floats, or strings of them)."""
    def parse(value: Any, field: str) -> float:
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not 0 < number <= most \
                or number == float("inf"):
            bound = "a positive number" if most == float("inf") else f"a number above 0 and at most {most:g}"
            raise ConfigError(field, f"{what} must be {bound}, got {_show(value)}; write e.g. {example}")
        return float(number)
    return parse


_parse_weight = _positive_number("weight", "1 or 2.5")


def _parse_positive_size(value: Any, field: str) -> int:
    size = parse_size(value, field)
    if size == 0:
        raise ConfigError(field, "capacity must be larger than 0; give the bytes this node contributes, e.g. 64GiB")
    return size


def _parse_secret_path(value: Any, field: str) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str) and value.strip():
        return os.path.expanduser(value.strip())
    raise ConfigError(field, f"expected the path of the secret file, got {_show(value)}; {_SECRET_HOWTO}")


def _optional(parse: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    return lambda value, field: None if value is None else parse(value, field)


@dataclass(frozen=True)
class ClusterMember:
    """One entry of ``cluster.members``: a node and its placement weight: ``capacity`` (the bytes
    it contributes; then every member gives one) or ``weight`` (a relative number, default 1)."""

    id: str
    host: str
    port: int
    weight: Optional[float] = None
    capacity: Optional[int] = None

    @property
    def placement_weight(self) -> float:
        if self.capacity is not None:
            return float(self.capacity)
        return 1.0 if self.weight is None else self.weight


_MEMBER_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "id": _parse_id, "host": _parse_host, "port": _parse_port,
    "weight": _optional(_parse_weight), "capacity": _optional(_parse_positive_size),
}


def _parse_member(raw: Any, field: str) -> ClusterMember:
    if not isinstance(raw, Mapping):
        raise ConfigError(field, f"a member must be a mapping such as {{id: node-a, host: 10.0.0.1, port: 7700}}, got {_show(raw)}")
    for key in raw:
        if key not in _MEMBER_PARSERS:
            raise ConfigError(f"{field}.{key}", _unknown_key_message(key, list(_MEMBER_PARSERS)))
    for key in ("id", "host", "port"):
        if raw.get(key) is None:
            raise ConfigError(f"{field}.{key}", f"every member needs {key!r}; add it, e.g. {{id: node-a, host: 10.0.0.1, port: 7700}}")
    member = ClusterMember(**{k: parse(raw.get(k), f"{field}.{k}") for k, parse in _MEMBER_PARSERS.items()})
    if member.weight is not None and member.capacity is not None:
        raise ConfigError(field, "give weight or capacity, not both")
    return member


def _parse_members(value: Any, field: str) -> tuple:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ConfigError(field, f"members must be a list of {{id, host, port}} mappings, got {_show(value)}")
    members = tuple(_parse_member(raw, f"{field}[{i}]") for i, raw in enumerate(value))
    seen: dict[str, int] = {}
    for i, m in enumerate(members):
        if m.id in seen:
            raise ConfigError(f"{field}[{i}].id", f"member id {m.id!r} is listed twice (also at {field}[{seen[m.id]}]); give every node its own id")
        seen[m.id] = i
    with_capacity = [i for i, m in enumerate(members) if m.capacity is not None]
    if with_capacity and len(with_capacity) < len(members):
        i = next(i for i, m in enumerate(members) if m.capacity is None)
        raise ConfigError(f"{field}[{i}]", f"member {members[i].id!r} has no capacity while {members[with_capacity[0]].id!r} has one; give every member a capacity (the bytes it contributes), or every member a weight")
    return members


def _parse_endpoint(value: Any, field: str) -> str:
    from urllib.parse import urlsplit
    text = value.strip() if isinstance(value, str) else ""
    try:
        url = urlsplit(text)
        port = url.port
    except ValueError:
        url, port = None, None
    if url is None or url.scheme not in ("http", "https") or not url.hostname or port is None \
            or url.path not in ("", "/") or url.query or url.username:
        raise ConfigError(field, f"invalid etcd endpoint {_show(value)}; write it as http://HOST:PORT, e.g. http://10.0.0.9:2379")
    return f"{url.scheme}://{url.netloc}"


def _parse_endpoints(value: Any, field: str) -> tuple:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise ConfigError(field, f"give one or more etcd endpoints, e.g. [http://10.0.0.9:2379], got {_show(value)}")
    return tuple(_parse_endpoint(item, f"{field}[{i}]") for i, item in enumerate(items))


def _parse_etcd_prefix(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.startswith("/") or any(c.isspace() for c in value):
        raise ConfigError(field, f"invalid key prefix {_show(value)}; write a path such as {DEFAULT_ETCD_PREFIX} (starts with '/', no spaces)")
    return value if value.endswith("/") else value + "/"


def _parse_transport(value: Any, field: str) -> str:
    word = value.strip().lower() if isinstance(value, str) else value
    if word in TRANSPORTS:
        return word
    raise ConfigError(field, f"invalid value {_show(value)}; choose one of: {', '.join(TRANSPORTS)}")


def _parse_device_names(value: Any, field: str) -> tuple:
    items = value.split(",") if isinstance(value, str) else value
    if items is None:
        return ()
    if not isinstance(items, (list, tuple)):
        raise ConfigError(field, f"give a list of RDMA device names such as [mlx5_0, mlx5_1], got {_show(value)}; 'mooncake-hicache devices' lists them")
    names = []
    for i, item in enumerate(items):
        name = item.strip() if isinstance(item, str) else ""
        if not name or any(c.isspace() or c == "/" for c in name):
            raise ConfigError(f"{field}[{i}]", f"invalid device name {_show(item)}; give a name such as mlx5_0 ('mooncake-hicache devices' lists them)")
        if name in names:
            raise ConfigError(f"{field}[{i}]", f"device {name!r} is listed twice")
        names.append(name)
    return tuple(names)


@dataclass(frozen=True)
class RdmaConfig:
    """The RDMA data path (``cluster.transport`` rdma or auto): the devices to use (default: every
    device with an active port) and the GID index (default: the port's first non-zero GID).
    Whether the devices exist is checked when the node or a rank starts
    (``cluster/transport.py``), naming the devices there are."""

    devices: tuple = _setting((), _parse_device_names)
    gid_index: int = _setting(-1, _parse_int)

    def _check(self, where: str) -> None:
        if not -1 <= self.gid_index <= MAX_GID_INDEX:
            raise ConfigError(_joiner(where)("gid_index"), f"GID index {self.gid_index} is out of range; choose 0 to {MAX_GID_INDEX}, or -1 for the port's first non-zero GID ('mooncake-hicache devices' shows the GIDs)")


def _parse_quorum(value: Any, field: str) -> int:
    if isinstance(value, str) and value.strip().lower() == "all":
        return 0
    quorum = _parse_int(value, field)
    if quorum < 0:
        raise ConfigError(field, f"write quorum {quorum} is negative; write 'all' or a number of holders from 1 to cluster.replicas")
    return quorum


def _parse_secret(value: Any, field: str) -> str:
    # Never shows the value: it is a secret.
    if not isinstance(value, str):
        raise ConfigError(field, f"the secret must be a string (quote it in YAML); better, put it in a file: {_SECRET_HOWTO}")
    if value == REDACTED:
        raise ConfigError(field, f"{REDACTED!r} is the placeholder printed in place of the secret; put the real secret here, or use cluster.secret_file")
    return value


def _secret_bytes(text: bytes, field: str) -> bytes:
    secret = text.strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(field, f"the secret has {len(secret)} bytes, fewer than {MIN_SECRET_BYTES}; use a longer random secret, {_SECRET_HOWTO}")
    return secret


def _read_secret_file(path: str, field: str) -> bytes:
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            text = f.read(1 << 16)
    except OSError as e:
        raise ConfigError(field, f"cannot read secret file {path!r}: {e.strerror}; create it, {_SECRET_HOWTO}") from None
    if st.st_mode & 0o077:
        raise ConfigError(field, f"secret file {path!r} is readable by other users (mode {stat.S_IMODE(st.st_mode):o}); run 'chmod 600 {path}'")
    return _secret_bytes(text, field)


@dataclass(frozen=True)
class EtcdConfig:
    """Dynamic membership through etcd: each node registers under a lease and watches the prefix."""

    endpoints: tuple = _setting(("http://127.0.0.1:2379",), _parse_endpoints)
    prefix: str = _setting(DEFAULT_ETCD_PREFIX, _parse_etcd_prefix)
    lease_ttl_s: int = _setting(5, _parse_int)

    def _check(self, where: str) -> None:
        if not 2 <= self.lease_ttl_s <= 300:
            raise ConfigError(_joiner(where)("lease_ttl_s"), f"lease TTL {self.lease_ttl_s} s is out of range; choose 2 to 300 (a dead node leaves the view this long after it stops; 5 is a good default)")


@dataclass(frozen=True)
class ClusterConfig:
    """The pool across hosts: this node, the members (static list or etcd), replicas, transport,
    timeouts and the shared secret. Absent (``None``): a single host, as without a cluster."""

    node_id: Optional[str] = _setting(None, _optional(_parse_id))
    listen_host: str = _setting("127.0.0.1", _parse_host)
    listen_port: int = _setting(0, _parse_int)
    advertise_host: Optional[str] = _setting(None, _optional(_parse_host))
    capacity: Optional[int] = _setting(None, _optional(_parse_positive_size))
    members: tuple = _setting((), _parse_members)
    etcd: Optional[EtcdConfig] = _section(EtcdConfig, optional=True)
    replicas: int = _setting(1, _parse_int)
    write_quorum: int = _setting(0, _parse_quorum)
    transport: str = _setting("tcp", _parse_transport)
    rdma: RdmaConfig = _section(RdmaConfig)
    connect_timeout_ms: int = _setting(1000, _parse_int)
    request_timeout_ms: int = _setting(5000, _parse_int)
    grace_window_ms: int = _setting(30000, _parse_int)
    spill_depth: int = _setting(1, _parse_int)
    secret: Optional[str] = _dataclass_field(default=None, repr=False, metadata={"parse": _optional(_parse_secret)})
    secret_file: Optional[str] = _setting(None, _optional(_parse_secret_path))

    @property
    def self_id(self) -> str:
        """This node's id: ``node_id``, or the host name when it is not set."""
        return self.node_id if self.node_id is not None else socket.gethostname().split(".")[0]

    @property
    def advertised_host(self) -> str:
        """The address peers use to reach this node."""
        return self.advertise_host or self.listen_host

    def read_secret(self) -> bytes:
        """The shared secret (from ``secret_file`` or ``secret``), stripped of surrounding
        whitespace. Never log it."""
        if self.secret_file is not None:
            return _read_secret_file(self.secret_file, "cluster.secret_file")
        return _secret_bytes((self.secret or "").encode(), "cluster.secret")

    def _check(self, where: str) -> None:
        at = _joiner(where)
        if not _ID_RE.match(self.self_id):
            raise ConfigError(at("node_id"), f"this host's name {self.self_id!r} is not a valid node id; set cluster.node_id ({_ID_RULE})")
        self._check_listener(at)
        self._check_membership(at)
        self._check_numbers(at)
        self._check_secret(at)

    def _check_listener(self, at: Callable[[str], str]) -> None:
        if not 0 <= self.listen_port <= 65535:
            raise ConfigError(at("listen_port"), f"port {self.listen_port} is out of range; choose 1 to 65535, or 0 for no listener")
        if self.listen_port and self.advertise_host is None and self.listen_host in _WILDCARD_HOSTS:
            raise ConfigError(at("advertise_host"), f"listen_host {self.listen_host!r} is a wildcard, which peers cannot connect to; set advertise_host to this node's address (better: listen on that address only)")

    def _check_membership(self, at: Callable[[str], str]) -> None:
        if bool(self.members) == (self.etcd is not None):
            what = "both" if self.members else "neither"
            raise ConfigError(at("members"), f"{what} of cluster.members and cluster.etcd are set; list the members statically or give an etcd section, exactly one of them")
        if self.etcd is not None:
            return
        if self.capacity is not None:
            raise ConfigError(at("capacity"), "capacity is what this node registers in etcd; with static members put capacity on this node's entry in cluster.members")
        me = next((m for m in self.members if m.id == self.self_id), None)
        if me is None and self.listen_port:
            raise ConfigError(at("members"), f"this node ({self.self_id!r}) listens on port {self.listen_port} but is not in cluster.members; add {{id: {self.self_id}, host: ..., port: {self.listen_port}}} or set listen_port: 0")
        if me is not None and me.port != self.listen_port:
            raise ConfigError(at("listen_port"), f"this node ({me.id!r}) is listed in cluster.members with port {me.port} but listens on {self.listen_port}; make them the same")
        if self.replicas > len(self.members):
            raise ConfigError(at("replicas"), f"replicas {self.replicas} is more than the {len(self.members)} members listed; lower replicas or add members")

    def _check_numbers(self, at: Callable[[str], str]) -> None:
        if not 1 <= self.replicas <= MAX_REPLICAS:
            raise ConfigError(at("replicas"), f"replicas {self.replicas} is out of range; choose 1 to {MAX_REPLICAS} (1 = no copies)")
        if self.write_quorum > self.replicas:
            raise ConfigError(at("write_quorum"), f"write quorum {self.write_quorum} is more than replicas {self.replicas}; write 'all' or a number from 1 to {self.replicas}")
        if not 0 <= self.spill_depth <= MAX_SPILL_DEPTH:
            raise ConfigError(at("spill_depth"), f"spill depth {self.spill_depth} is out of range; choose 0 (never spill) to {MAX_SPILL_DEPTH} (1 is a good default)")
        for name, low, high in (("connect_timeout_ms", 1, 600_000), ("request_timeout_ms", 1, 600_000),
                                ("grace_window_ms", 0, 3_600_000)):
            value = getattr(self, name)
            if not low <= value <= high:
                raise ConfigError(at(name), f"{value} ms is out of range; choose {low} to {high}")

    def _check_secret(self, at: Callable[[str], str]) -> None:
        if self.secret is not None and self.secret_file is not None:
            raise ConfigError(at("secret"), "both secret and secret_file are set; keep one (secret_file keeps it out of the configuration)")
        if self.secret is None and self.secret_file is None:
            raise ConfigError(at("secret_file"), f"the cluster needs a shared secret (peers prove they know it); {_SECRET_HOWTO}")
        if self.secret_file is not None:
            _read_secret_file(self.secret_file, at("secret_file"))
        else:
            _secret_bytes(self.secret.encode(), at("secret"))


# --------------------------------------------------------------------------------------------
# The prefetch section (policies that decide what to load ahead of SGLang's gets; docs/prefetch.md)
# --------------------------------------------------------------------------------------------

PREFETCH_POLICIES = ("prefix_order", "none", "cost_aware")
# Model shapes the recompute cost can be computed for (their numbers: policies/cost_model.py).
COST_MODEL_PRESETS = ("0.5b", "8b", "70b")
MAX_PREFETCH_BATCH = 128  # SGLang's STORAGE_BATCH_SIZE: no plan is longer
_USER_POLICY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def _parse_policy(value: Any, field: str) -> str:
    text = value.strip() if isinstance(value, str) else None
    if text is not None and (text.lower() in PREFETCH_POLICIES or _USER_POLICY_RE.match(text)):
        return text.lower() if text.lower() in PREFETCH_POLICIES else text
    close = difflib.get_close_matches(str(value).lower(), PREFETCH_POLICIES, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(field, f"unknown prefetch policy {_show(value)}; {hint}choose one of {', '.join(PREFETCH_POLICIES)}, "
                             "or a policy of your own as 'package.module:ClassName' (docs/prefetch.md)")


@dataclass(frozen=True)
class CostModelConfig:
    """What recomputing a token costs (the ``cost_aware`` policy): a model shape and the prefill speed."""

    preset: str = _setting("8b", _choice(COST_MODEL_PRESETS, str.lower))
    prefill_tflops: float = _setting(494.5, _positive_number("prefill_tflops", "494.5 (an H100 at 50% of its 989 dense BF16 TFLOP/s)"))
    params_b: Optional[float] = _setting(None, _optional(_positive_number("params_b", "8 (billions of parameters)")))
    layers: Optional[int] = _setting(None, _optional(_parse_int))
    q_dim: Optional[int] = _setting(None, _optional(_parse_int))

    def _check(self, where: str) -> None:
        for name in ("layers", "q_dim"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(_joiner(where)(name), f"{name} must be a positive integer, got {value}")


@dataclass(frozen=True)
class EstimatesConfig:
    """The online transfer estimates (per tier, from completed gets) and how they start and refresh.
    The starting speeds are optimistic on purpose: a tier thought fast is used, so measured, and
    its estimate corrected by the first get; a tier thought slow would be declined until a probe."""

    dram_gbps: float = _setting(10.0, _positive_number("dram_gbps", "10"))
    nvme_gbps: float = _setting(8.0, _positive_number("nvme_gbps", "8"))
    smoothing: float = _setting(0.1, _positive_number("smoothing", "0.1 (the weight of each new transfer)", most=1.0))
    probe_every: int = _setting(32, _parse_int)
    probe_pages: int = _setting(1, _parse_int)

    def _check(self, where: str) -> None:
        at = _joiner(where)
        if self.probe_every < 1:
            raise ConfigError(at("probe_every"), f"probe_every {self.probe_every} must be at least 1 (plans between re-measurements of a tier that is not used)")
        if not 0 <= self.probe_pages <= MAX_PREFETCH_BATCH:
            raise ConfigError(at("probe_pages"), f"probe_pages {self.probe_pages} is out of range; choose 0 (never re-measure) to {MAX_PREFETCH_BATCH}")


@dataclass(frozen=True)
class PrefetchConfig:
    """Which pages SGLang is told are hits and which are moved into DRAM ahead of its gets."""

    policy: str = _setting("prefix_order", _parse_policy)
    batch_pages: int = _setting(16, _parse_int)
    concurrency: int = _setting(1, _parse_int)
    cost_model: CostModelConfig = _section(CostModelConfig)
    estimates: EstimatesConfig = _section(EstimatesConfig)

    def _check(self, where: str) -> None:
        at = _joiner(where)
        if not 1 <= self.batch_pages <= MAX_PREFETCH_BATCH:
            raise ConfigError(at("batch_pages"), f"batch_pages {self.batch_pages} is out of range; choose 1 to {MAX_PREFETCH_BATCH} (pages promoted per step; 16 is a good default)")
        if not 1 <= self.concurrency <= 64:
            raise ConfigError(at("concurrency"), f"concurrency {self.concurrency} is out of range; choose 1 to 64 (promotion steps running at once)")


@dataclass(frozen=True)
class Config:
    """The whole configuration. Build it with ``load_config``."""

    mode: str = _setting("auto", _choice(MODES, str.lower))
    tiers: TiersConfig = _section(TiersConfig)
    node: NodeConfig = _section(NodeConfig)
    metrics: MetricsConfig = _section(MetricsConfig)
    logging: LoggingConfig = _section(LoggingConfig)
    prefetch: PrefetchConfig = _section(PrefetchConfig)
    # None (the default, and what an absent section gives): a single host, no pool across hosts.
    cluster: Optional[ClusterConfig] = _dataclass_field(
        default=None, metadata={"section": ClusterConfig, "optional": True})

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
        if self.cluster is not None and self.resolved_mode != "node":
            raise ConfigError("cluster", "a cluster needs this host's node (it serves this host's share of the pool); add a tiers.dram section and leave mode at auto or node")

    def to_dict(self, *, redact_secrets: bool = True) -> dict:
        """The configuration as plain dicts, lists and scalars (sizes as ints); ``load_config``
        accepts it back. An absent ``cluster`` section is left out; an inline ``cluster.secret``
        shows as ``<redacted>`` unless ``redact_secrets`` is false (a file written with it must
        be readable only by its owner)."""
        out = _lists(dataclasses.asdict(self))
        if out["cluster"] is None:
            del out["cluster"]
        elif redact_secrets and out["cluster"]["secret"] is not None:
            out["cluster"]["secret"] = REDACTED
        return out

    def node_settings(self) -> str:
        """The settings that shape the node's store (every ``tiers`` field) as ``name=value``
        lines: the fingerprint a client sends in HELLO, so a node started with other settings
        refuses it naming the fields that differ (instead of being reused silently)."""
        lines = []
        for tier in dataclasses.fields(self.tiers):
            section = getattr(self.tiers, tier.name)
            if section is None:
                lines.append(f"tiers.{tier.name}=none")
                continue
            for f in dataclasses.fields(section):
                value = getattr(section, f.name)
                lines.append(f"tiers.{tier.name}.{f.name}={str(value).lower() if isinstance(value, bool) else value}")
        return "\n".join(lines) + "\n"

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


def _lists(obj: Any) -> Any:
    """``obj`` with every tuple turned into a list, so YAML's safe dumper can write it."""
    if isinstance(obj, dict):
        return {k: _lists(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_lists(v) for v in obj]
    return obj


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

    if raw is None:  # a file with no document (empty, or comments only)
        log.info("configuration file %s is empty: using the defaults for every setting",
                 os.fspath(source) if source is not None else env.get(CONFIG_ENV_VAR))
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError("", f"the top level of the configuration must be a mapping of sections ({', '.join(f.name for f in dataclasses.fields(Config))}), got {_show(raw)}")
    doc = _plain_copy(raw)

    origin: dict[str, str] = {}
    for variable, parts, value in _env_overrides(env):
        origin[_apply_override(doc, variable, parts, value)] = variable

    try:
        config = _build(Config, doc, "")
        if "socket" not in (doc.get("node") or {}):  # the default follows the environment given
            config = dataclasses.replace(config, node=dataclasses.replace(config.node, socket=default_socket_path(env)))
        return config.validate()
    except ConfigError as e:
        variable = next((v for p, v in origin.items() if e.field == p or e.field.startswith(p + ".")), None)
        if variable is None:
            raise
        raise ConfigError(e.field, f"{e.reason} (value set by environment variable {variable})") from None
