"""Running the verification script (tests/test_idempotency_migrations.sql) with psql or pg_prove,
reading its TAP output, and loading the damaged-database fixtures (tests/fixtures/states/)."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import psycopg

from tests.helpers import ROOT
from tooling.servers import Server

SCRIPT = ROOT / "tests" / "test_idempotency_migrations.sql"
FIXTURES = ROOT / "tests" / "fixtures" / "states"

TAP_LINE = re.compile(r"^(?P<not>not )?ok (?P<n>\d+) - (?P<text>.*)$")


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

    def describe(self) -> str:
        return f"exit {self.returncode}\n{self.stdout}{self.stderr}"


def _env(server: Server, options: str | None) -> dict[str, str]:
    """libpq settings through the environment: the password never reaches argv."""
    env = {**os.environ, "PGHOST": server.host, "PGPORT": str(server.port), "PGUSER": server.user}
    env.pop("DATABASE_URL", None)
    if server.password:
        env["PGPASSWORD"] = server.password
    if options is not None:
        env["PGOPTIONS"] = options
    return env


def run_script(server: Server, dbname: str, *variables: str, options: str | None = None) -> Run:
    """The script through psql as a DBA runs it; `variables` are NAME=VALUE for -v."""
    args = [server.tool("psql"), "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-d", dbname]
    for variable in variables:
        args += ["-v", variable]
    result = subprocess.run(
        [*args, "-f", str(SCRIPT)],
        env=_env(server, options),
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
        env=_env(server, None),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Run(result.returncode, result.stdout, result.stderr)


def fixture_path(state: str) -> Path:
    return FIXTURES / f"{state}.sql"


def load_fixture(conn: psycopg.Connection, state: str) -> None:
    """Put a database into a damaged state: run tests/fixtures/states/<state>.sql in one transaction."""
    with conn.transaction():
        conn.execute(fixture_path(state).read_text())
