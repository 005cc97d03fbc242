"""The node's socket directory and the files next to the socket, safe among careless and hostile
neighbours.

Whoever controls the directory that holds ``node.socket`` controls what the node and its
clients read and write there (``<socket>.lock``, ``.log``, ``.yaml``), so:

* the default socket lives in a per-user directory: ``$XDG_RUNTIME_DIR/mooncake-hicache/`` when
  that is this user's own private runtime directory, else ``/tmp/mooncake-hicache-<uid>/``;
* ``ensure_socket_dir`` creates missing directories with mode 0700 (whatever the umask) and
  refuses an existing one that is owned by another user (other than root or a uid in
  ``node.allowed_uids``) or writable by other users, or a symbolic link owned by someone else;
* ``open_private`` opens a file there without following a symbolic link (``O_NOFOLLOW``),
  creating it with mode 0600, and refuses one that is not a regular file of this user;
* ``write_private`` replaces a file atomically (a fresh ``O_EXCL`` file, then ``rename``, which
  replaces a planted link instead of writing through it).

Every refusal names the path and what to do. Pure functions of the file system; thread-safe.
"""

from __future__ import annotations

import os
import pwd
import stat
import tempfile
from typing import Iterable, Mapping

from .errors import ConfigError, StoreError

FIELD = "node.socket"


def default_socket_path(env: Mapping[str, str]) -> str:
    """``$XDG_RUNTIME_DIR/mooncake-hicache/node.sock`` if that runtime directory is this user's
    own and private (as the XDG spec requires; ``sudo -E`` keeps another user's), else
    ``/tmp/mooncake-hicache-<uid>/node.sock``."""
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime):
        try:
            st = os.stat(runtime)
        except OSError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() \
                and not st.st_mode & 0o077:
            return os.path.join(runtime, "mooncake-hicache", "node.sock")
    return f"/tmp/mooncake-hicache-{os.geteuid()}/node.sock"


def _user(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _check_dir(path: str, trusted: set[int]) -> None:
    """An existing socket directory: a directory (or a link to one, itself owned by a trusted
    user) owned by a trusted user and not writable by others."""
    link = os.lstat(path)
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in trusted:
        raise ConfigError(FIELD, f"the socket directory {path!r} is a symbolic link owned by {_user(link.st_uid)}; "
                                 f"remove it or choose another node.socket")
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(FIELD, f"{path!r} is not a directory; choose a node.socket inside a directory")
    if st.st_uid not in trusted:
        raise ConfigError(FIELD, f"the socket directory {path!r} is owned by {_user(st.st_uid)}, not by this user; "
                                 f"whoever owns it controls the node's files: remove it, or choose a node.socket in a "
                                 f"directory of your own (or list that uid in node.allowed_uids if you trust it)")
    if st.st_mode & stat.S_IWOTH:  # even /tmp: others could plant files the node would trip over
        raise ConfigError(FIELD, f"the socket directory {path!r} is writable by other users (mode "
                                 f"{stat.S_IMODE(st.st_mode):o}); run 'chmod o-w {path}' or choose a node.socket in "
                                 f"a private directory")


def ensure_socket_dir(socket_path: str, allowed_uids: Iterable[int] = ()) -> str:
    """Creates (mode 0700, whatever the umask) or checks the directory of ``socket_path``;
    returns it. Raises ConfigError naming the directory and the fix."""
    d = os.path.dirname(os.path.abspath(socket_path)) or "."
    trusted = {os.geteuid(), 0, *allowed_uids}
    missing = []
    probe = d
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    for p in reversed(missing):
        try:
            os.mkdir(p, 0o700)
            os.chmod(p, 0o700)  # mkdir's mode is filtered by the umask
        except FileExistsError:
            pass  # another process made it meanwhile: checked below
        except OSError as e:
            raise ConfigError(FIELD, f"cannot create the socket directory {p!r}: {e.strerror}; choose a node.socket "
                                     f"in a directory this user may write") from None
    _check_dir(d, trusted)
    return d


def open_private(path: str, flags: int) -> int:
    """``os.open(path, flags | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)``; refuses a symbolic link
    and anything that is not a regular file owned by this user (StoreError). Returns the fd."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if os.path.islink(path):
            raise StoreError(f"refusing to follow the symbolic link {path!r} next to the node socket; remove it") \
                from None
        raise StoreError(f"cannot open {path!r}: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise StoreError(f"{path!r} is not a regular file of this user ({_user(st.st_uid)} owns it); remove it")
    return fd


def write_private(path: str, data: bytes) -> None:
    """Replaces ``path`` with ``data`` (mode 0600) atomically: a planted link is replaced, never
    written through."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", dir=d)  # O_EXCL, mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
