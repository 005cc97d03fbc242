"""How much memory this process may use: the smaller of the machine's physical memory and the
limit of the memory cgroup it runs in (v2 ``memory.max`` or v1 ``memory.limit_in_bytes``, the
tightest of the cgroup and its ancestors). ``tiers.dram.capacity`` is checked against it
(``config.DramConfig``): the node pre-faults its whole arena, so an arena that does not fit gets
the node OOM-killed while idle.

The arena may take the limit less a reserve for the node itself (its index, buffers and
Python): ``usable(limit) = limit - max(256 MiB, limit / 10)``. Reads files only; thread-safe.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

MiB = 1 << 20
RESERVE_MIN = 256 * MiB
RESERVE_FRACTION = 10  # percent
_UNLIMITED = 1 << 60   # cgroup v1 writes "no limit" as a huge number


@dataclass(frozen=True)
class MemoryLimit:
    bytes: int
    what: str  # for messages: "this machine's physical memory" or "the memory limit of cgroup X (file)"

    @property
    def usable(self) -> int:
        """What a DRAM arena may take of it."""
        return max(0, self.bytes - max(RESERVE_MIN, self.bytes * RESERVE_FRACTION // 100))


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _read_limit(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max" or not text.isdigit() or int(text) >= _UNLIMITED:
        return None
    return int(text)


def _tightest(root: Path, cgroup: str, file: str) -> Optional[tuple[int, Path]]:
    """The smallest limit in `file` from the cgroup `cgroup` (as /proc/self/cgroup names it) up
    to the hierarchy's root."""
    best = None
    path = root / cgroup.lstrip("/")
    while True:
        limit = _read_limit(path / file)
        if limit is not None and (best is None or limit < best[0]):
            best = (limit, path / file)
        if path == root or root not in path.parents:
            return best
        path = path.parent


def cgroup_memory_limit(proc_cgroup: str = "/proc/self/cgroup",
                        fs: str = "/sys/fs/cgroup") -> Optional[tuple[int, Path]]:
    """(bytes, the file that sets it) of the tightest memory cgroup limit, or None."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        hid, controllers, path = line.split(":", 2)
        if hid == "0":  # v2 (the unified hierarchy, possibly beside v1 ones)
            for root in (Path(fs), Path(fs) / "unified"):
                if (root / "cgroup.controllers").exists():
                    found.append(_tightest(root, path, "memory.max"))
        elif "memory" in controllers.split(","):
            found.append(_tightest(Path(fs) / "memory", path, "memory.limit_in_bytes"))
    found = [f for f in found if f is not None]
    return min(found, key=lambda f: f[0]) if found else None


def memory_limit() -> MemoryLimit:
    """The tighter of physical memory and the cgroup limit."""
    phys = MemoryLimit(physical_memory(), "this machine's physical memory")
    cg = cgroup_memory_limit()
    if cg is None or cg[0] >= phys.bytes:
        return phys
    return MemoryLimit(cg[0], f"the memory limit of this process's cgroup ({cg[1]})")
