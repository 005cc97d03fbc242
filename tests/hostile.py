"""Helpers for the tests that play the node's careless or hostile neighbours (test_security.py,
test_limits.py): a second, unprivileged user (created here, since CI runs as root), processes run
as that user, a memory cgroup to run a node in, and the per-process figures those tests assert
on (threads, open descriptors, private memory)."""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

MiB = 1 << 20


# ---- a second user ------------------------------------------------------------------------

@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


@pytest.fixture(scope="session")
def other_user():
    """An unprivileged system user made for this test session (removed at its end). Tests run
    processes as this user with ``run_as``/``popen_as``."""
    if os.geteuid() != 0:
        pytest.skip("creating a second user needs root (CI runs as root)")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("useradd/userdel are not installed")
    name = f"mchn{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    pw = pwd.getpwnam(name)
    try:
        yield User(name, pw.pw_uid, pw.pw_gid)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def _as_user(user: User) -> dict:
    return {"user": user.uid, "group": user.gid, "extra_groups": [],
            "env": {**os.environ, "HOME": "/tmp", "USER": user.name}, "cwd": "/"}


@functools.lru_cache(maxsize=8)
def _interpreter_for(user: User) -> str:
    """A Python of this version that ``user`` may execute. The test's own may live under a
    directory only root can enter (pyenv in /root): then a system one of the same version runs,
    with argv[0] still naming the virtualenv's python, so it finds the same packages."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for exe in (sys.executable, shutil.which(version, path="/usr/local/bin:/usr/bin")):
        if not exe:
            continue
        try:
            r = subprocess.run([sys.executable, "-c", "import mooncake_hicache._native"], executable=exe,
                               capture_output=True, timeout=60, **_as_user(user))
        except PermissionError:
            continue
        if r.returncode == 0:
            return exe
    pytest.skip(f"no {version} interpreter that user {user.name} may run and that imports the package")


def _as(user: User) -> dict:
    return {**_as_user(user), "executable": _interpreter_for(user)}


def run_as(user: User, script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs a Python script as ``user``; its output is returned (text)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True,
                          text=True, timeout=timeout, **_as(user))


def popen_kwargs_as(user: User) -> dict:
    """Keyword arguments for ``subprocess.Popen`` that run the child as ``user``."""
    return _as(user)


# ---- a memory cgroup ----------------------------------------------------------------------

class MemoryCgroup:
    """A memory cgroup below this process's own, v2 where the unified hierarchy has the memory
    controller, else v1. ``enter`` is a ``preexec_fn`` that moves the child into it."""

    def __init__(self, path: Path, version: int, limit: int):
        self.path, self.version, self.limit = path, version, limit
        limit_file = "memory.max" if version == 2 else "memory.limit_in_bytes"
        (path / limit_file).write_text(str(limit))
        if version == 1 and (path / "memory.memsw.limit_in_bytes").exists():
            try:  # swap is part of the limit too, where the kernel accounts it
                (path / "memory.memsw.limit_in_bytes").write_text(str(limit))
            except OSError:
                pass

    def enter(self) -> None:
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def oom_kills(self) -> int:
        if self.version == 2:
            events = dict(line.split() for line in (self.path / "memory.events").read_text().splitlines())
            return int(events.get("oom_kill", 0))
        control = dict(line.split() for line in (self.path / "memory.oom_control").read_text().splitlines())
        return int(control.get("oom_kill", 0))

    def remove(self) -> None:
        parent = self.path.parent / "cgroup.procs"
        for pid in (self.path / "cgroup.procs").read_text().split():
            try:
                parent.write_text(pid)
            except OSError:
                pass
        try:
            self.path.rmdir()
        except OSError:
            pass


def _own_cgroup(version: int) -> Path | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, controllers, path = line.split(":", 2)
        if version == 2 and hid == "0":
            root = Path("/sys/fs/cgroup")
            if not (root / "cgroup.controllers").exists():
                root = Path("/sys/fs/cgroup/unified")
            return root / path.lstrip("/")
        if version == 1 and "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/")
    return None


def make_memory_cgroup(limit: int) -> tuple[MemoryCgroup | None, str]:
    """A fresh memory cgroup with ``limit`` bytes, or (None, why not)."""
    reasons = []
    for version in (2, 1):
        base = _own_cgroup(version)
        if base is None or not base.is_dir():
            reasons.append(f"no cgroup v{version} memory hierarchy")
            continue
        if version == 2 and "memory" not in (base / "cgroup.controllers").read_text().split():
            reasons.append("cgroup v2 has no memory controller here")
            continue
        path = base / f"mch-test-{uuid.uuid4().hex[:8]}"
        try:
            path.mkdir()
            return MemoryCgroup(path, version, limit), ""
        except OSError as e:
            reasons.append(f"cannot create a cgroup v{version} under {base}: {e.strerror}")
            try:
                path.rmdir()
            except OSError:
                pass
    return None, "; ".join(reasons)


@pytest.fixture
def memory_cgroup():
    """memory_cgroup(limit) -> MemoryCgroup, skipping the test (with the reason) where no memory
    cgroup can be made. Removed at teardown."""
    made = []

    def _make(limit: int) -> MemoryCgroup:
        cg, why = make_memory_cgroup(limit)
        if cg is None:
            pytest.skip(f"needs a writable memory cgroup: {why}")
        made.append(cg)
        return cg

    yield _make
    for cg in made:
        cg.remove()


# ---- per-process figures ------------------------------------------------------------------

def _status(pid: int) -> dict:
    return dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)


def thread_count(pid: int) -> int:
    return int(_status(pid)["Threads"])


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    return int(_status(pid)["VmRSS"].split()[0]) * 1024


def private_bytes(pid: int, leave_out: str = "mooncake-hicache-arena") -> int:
    """Private (clean + dirty) bytes of ``pid``'s mappings, leaving out the shared arena."""
    total, skip = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 1)[0]
        if "-" in head and not head.endswith(":"):  # a mapping's header line
            skip = leave_out in line
        elif not skip and head in ("Private_Clean:", "Private_Dirty:"):
            total += int(line.split()[1]) * 1024
    return total
