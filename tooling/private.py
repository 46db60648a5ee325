"""Private directories and secret files on a host shared with other local users.

A path another user could have created first (a predictable name in /tmp, a cache
directory) is used only when it is a real directory owned by us that nobody else can
write to; otherwise UnsafePathError says what was found and what to do. Secret files
are created exclusively (O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600) and read back only
when they are regular files of ours that nobody else can read.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from pathlib import Path

SECRET_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
SECRET_MODE = 0o600


class UnsafePathError(RuntimeError):
    """A path we were about to trust is not ours, is a symlink, or is open to others."""

    def __init__(self, path: Path, found: str, expected: str, hint: str) -> None:
        super().__init__(f"refusing to use {path}: found {found}, expected {expected}.\nHINT: {hint}")
        self.path = path


def user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "a special file"


def check_own(
    path: Path, info: os.stat_result, kind: str, hint: str, closed_bits: int, *, owner: int | None = None
) -> None:
    """Refuse unless `info` (an lstat/fstat of `path`) is a `kind` owned by `owner` (default:
    us) with none of `closed_bits`."""
    found = _kind(info.st_mode)
    if found != kind:
        raise UnsafePathError(path, found, kind, hint)
    me = os.geteuid() if owner is None else owner
    if info.st_uid != me:
        raise UnsafePathError(path, f"owner {user_name(info.st_uid)}", f"owner {user_name(me)}", hint)
    mode = stat.S_IMODE(info.st_mode)
    if mode & closed_bits:
        raise UnsafePathError(path, f"mode {mode:04o}", f"no bits of {closed_bits:04o} set", hint)


def private_dir(path: Path, mode: int = 0o700, *, hint: str = "remove it, or choose another path") -> Path:
    """Create `path` with `mode`, or reuse it if it is our own directory that no one else can write.

    `mode` may open search (x) to others when another user must reach a named path
    inside, e.g. the server user of a root-run server; never read or write."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        check_own(path, os.lstat(path), "a directory", hint, closed_bits=0o022)
    else:
        check_own(path, os.lstat(path), "a directory", hint, closed_bits=0o022)
    os.chmod(path, mode, follow_symlinks=False)
    return path


def write_secret(path: Path, text: str, *, owner: int | None = None) -> None:
    """Create `path` holding `text`, readable by its owner only; never through a symlink,
    never over an existing file. `owner` hands the file to another uid (the server user)."""
    try:
        fd = os.open(path, SECRET_CREATE, SECRET_MODE)
    except FileExistsError:
        found = _kind(os.lstat(path).st_mode)
        raise UnsafePathError(
            path, f"{found} already there", "no file (a secret is created fresh)", "remove it if it is stale"
        ) from None
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), SECRET_MODE)
        if owner is not None:
            os.fchown(handle.fileno(), owner, -1)
        handle.write(text)


def open_file(path: Path, flags: int, *, owner: int | None = None, closed_bits: int = 0o022, hint: str) -> int:
    """A descriptor of `path` opened with `flags`, never through a symlink, once it is known to
    be a regular file owned by `owner` (default: us) with none of `closed_bits`."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW)
    except OSError as error:
        if error.errno != errno.ELOOP:
            raise
        raise UnsafePathError(path, "a symlink", "a regular file", hint) from None
    try:
        check_own(path, os.fstat(fd), "a regular file", hint, closed_bits, owner=owner)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_secret(path: Path) -> str:
    """The text of a secret file of ours that no one else can read or write."""
    with os.fdopen(open_file(path, os.O_RDONLY, closed_bits=0o077, hint="remove it")) as handle:
        return handle.read()
