"""Running the verification script (tests/test_idempotency_migrations.sql) with psql or pg_prove,
reading its TAP output, and loading the database states its tests start from (damaged ones in
tests/fixtures/states/, correct ones in tests/fixtures/verify_passes/)."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import psycopg
from psycopg import sql

from tests.helpers import ROOT, UP_FILES, apply, fixture_sql
from tooling.servers import Server

SCRIPT = ROOT / "tests" / "test_idempotency_migrations.sql"
FIXTURES = ROOT / "tests" / "fixtures" / "states"
PASSING = ROOT / "tests" / "fixtures" / "verify_passes"

CATALOG_CHECKS = 41
BEHAVIOUR_TESTS = 11  # the report's tests 3 to 10 (1 and 2 are catalog checks), then 047's three
PLANNED = CATALOG_CHECKS + BEHAVIOUR_TESTS  # every run prints every test, skipped or not
# The checks and tests of 047, the optional protocol: skipped where none of it is installed.
PROTOCOL_CHECKS = 8  # its columns, functions, their names and comments (whether it is whole always runs)
PROTOCOL_TESTS = 3

TAP_LINE = re.compile(r"^(?P<not>not )?ok (?P<n>\d+) - (?P<text>.*)$")
SKIP = " # SKIP "


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of the script: exit status, TAP lines, and stderr."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def plan(self) -> int:
        first = self.stdout.splitlines()[0] if self.stdout else ""
        match = re.fullmatch(r"1\.\.(\d+)", first)
        assert match, f"the first line must be the TAP plan 1..N, got {first!r}\n{self.stdout}{self.stderr}"
        return int(match.group(1))

    @property
    def results(self) -> list[tuple[bool, str]]:
        """(ok, text) of every test line, in order; the numbering is checked."""
        found = []
        for line in self.stdout.splitlines():
            match = TAP_LINE.match(line)
            if match:
                assert int(match.group("n")) == len(found) + 1, f"TAP numbering broken at {line!r}"
                found.append((match.group("not") is None, match.group("text")))
        return found

    @property
    def not_ok(self) -> list[str]:
        return [text for ok, text in self.results if not ok]

    @property
    def skipped(self) -> list[str]:
        """The text of every `ok N - ... # SKIP reason` line."""
        return [text for ok, text in self.results if ok and SKIP in text]

    @property
    def behaviour_skipped(self) -> list[str]:
        """The skipped lines among the behaviour tests (the last BEHAVIOUR_TESTS)."""
        return [text for ok, text in self.results[CATALOG_CHECKS:] if ok and SKIP in text]

    @property
    def ran(self) -> list[str]:
        """The text of every test that ran: neither skipped nor not ok."""
        return [text for ok, text in self.results if ok and SKIP not in text]

    def diagnostics(self, kind: str) -> list[str]:
        """The `# note: ...` or `# HINT: ...` lines, without their prefix."""
        prefix = f"# {kind}: "
        return [line.removeprefix(prefix) for line in self.stdout.splitlines() if line.startswith(prefix)]

    def line(self, fragment: str) -> tuple[bool, str]:
        """(ok, text) of the one test whose text contains `fragment`."""
        found = [(ok, text) for ok, text in self.results if fragment in text]
        assert len(found) == 1, f"expected one test line with {fragment!r}, found {len(found)}\n{self.describe()}"
        return found[0]

    def describe(self) -> str:
        return f"exit {self.returncode}\n{self.stdout}{self.stderr}"


def assert_passes(run: Run, *, behaviour: bool = True, protocol: bool = True) -> None:
    """Exit 0, every planned test printed and ok; with `behaviour`, the behaviour tests ran (the
    cleanup test may skip: the table holds expired records of the application's); with
    `protocol`, 047 is installed and its checks ran, else they are skipped, saying it is not."""
    assert run.returncode == 0, f"the script must exit 0\n{run.describe()}"
    assert run.plan == PLANNED, f"plan 1..{PLANNED} expected\n{run.describe()}"
    assert len(run.results) == PLANNED, f"every planned test prints one line\n{run.describe()}"
    assert run.not_ok == [], f"every check must be ok\n{run.describe()}"
    catalog_skips = [text for _, text in run.results[:CATALOG_CHECKS] if SKIP in text]
    if protocol:
        assert catalog_skips == [], f"no catalog check is skipped\n{run.describe()}"
    else:
        assert len(catalog_skips) == PROTOCOL_CHECKS, f"047's checks are skipped\n{run.describe()}"
        assert all("047, the optional protocol, is not installed" in text for text in catalog_skips)
    behaviour_skips = [text for text in run.behaviour_skipped if "report test 8" not in text]
    if behaviour:
        protocol_skips = [text for text in behaviour_skips if text.startswith("047: ")]
        assert behaviour_skips == protocol_skips, f"the report's behaviour tests must run\n{run.describe()}"
        assert len(protocol_skips) == (0 if protocol else PROTOCOL_TESTS), (
            f"047's tests run where it is installed, else are skipped\n{run.describe()}"
        )
    else:
        assert len(run.behaviour_skipped) == BEHAVIOUR_TESTS, f"the behaviour tests must be skipped\n{run.describe()}"


def client_env(server: Server, options: str | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """libpq settings through the environment: the password never reaches argv."""
    env = {**os.environ, "PGHOST": server.host, "PGPORT": str(server.port), "PGUSER": server.user}
    env.pop("DATABASE_URL", None)
    env.pop("PGOPTIONS", None)
    if server.password:
        env["PGPASSWORD"] = server.password
    if options is not None:
        env["PGOPTIONS"] = options
    return {**env, **(extra or {})}


def run_script(
    server: Server,
    dbname: str,
    *variables: str,
    options: str | None = None,
    env: Mapping[str, str] | None = None,
    script: Path = SCRIPT,
) -> Run:
    """The script through psql as a DBA runs it; `variables` are NAME=VALUE for -v, `options` the
    session's PGOPTIONS, `env` more libpq settings (PGAPPNAME...)."""
    args = [server.tool("psql"), "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-d", dbname]
    for variable in variables:
        args += ["-v", variable]
    result = subprocess.run(
        [*args, "-f", str(script)],
        env=client_env(server, options, env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Run(result.returncode, result.stdout, result.stderr)


def run_pg_prove(server: Server, dbname: str) -> Run | None:
    """The script through pg_prove (None where pg_prove is not installed)."""
    pg_prove = shutil.which("pg_prove")
    if pg_prove is None:
        return None
    result = subprocess.run(
        [pg_prove, "--psql-bin", server.tool("psql"), "-d", dbname, str(SCRIPT)],
        env=client_env(server),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Run(result.returncode, result.stdout, result.stderr)


def fixture_path(state: str, folder: Path = FIXTURES) -> Path:
    return folder / f"{state}.sql"


def load_fixture(conn: psycopg.Connection, state: str, folder: Path = FIXTURES) -> None:
    """Put a database into a state: run <folder>/<state>.sql in one transaction."""
    with conn.transaction():
        conn.execute(fixture_sql(fixture_path(state, folder)))


def install(conn: psycopg.Connection, schema: str) -> None:
    """Create `schema` (any spelling) and apply the up migrations into it, as a deployer does with
    the search_path starting with it; the connection's search_path is reset afterwards."""
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
    try:
        for path in UP_FILES:
            apply(conn, path)
    finally:
        conn.execute("RESET search_path")
