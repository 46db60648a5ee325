"""Deployers as they really run: the real psql binary applying the migration files, alone or
many at once behind one barrier, with or without -1 and ON_ERROR_STOP; the database states
they start from (tests/fixtures/deploy_states/); what their output says.

Shared by tests/deploy/test_concurrent_deploys.py, tests/deploy/test_plain_psql_guards.py and
tests/deploy/test_deploy_refusals.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg
from psycopg import sql

from tests.helpers import FIXTURES, fixture_sql
from tooling.servers import Server

STATES = FIXTURES / "deploy_states"
# The untrusted role the fixture files name: it may CREATE where a state says so.
PLANTER = "idempotency_test_app_planter"
# The files' own lock (docs/reliability.md, "How the files are built", rule 1):
# pg_advisory_xact_lock(7594306390479384566).
DEPLOY_LOCK = 7594306390479384566
# The harness's barrier, another advisory lock: held by the test until every deployer waits on it.
BARRIER = 7594306390479384000

# psql without -1 and without ON_ERROR_STOP (the report's `psql -f` and `psql < file`), and
# as the guide runs it.
PLAIN = "plain"
SINGLE = "-1"


@dataclasses.dataclass(frozen=True)
class Target:
    """The empty database a deploy test applies files to: its server, its name, and an autocommit
    connection to it that watches the catalog (the fixture `target`, tests/deploy/conftest.py)."""

    server: Server
    dbname: str
    conn: psycopg.Connection


def load_state(conn: psycopg.Connection, state: str) -> None:
    """Put a database into a state: run tests/fixtures/deploy_states/<state>.sql in one transaction."""
    with conn.transaction():
        conn.execute(fixture_sql(state_path(state)))


def state_path(state: str) -> Path:
    return STATES / f"{state}.sql"


@contextlib.contextmanager
def planter_role(conn: psycopg.Connection, name: str = PLANTER) -> Iterator[str]:
    """The untrusted role a fixture file names (PLANTER, the deploy states'); dropped with
    everything it owns afterwards."""
    role = sql.Identifier(name)
    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is None:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(role))
    try:
        yield name
    finally:
        conn.execute("RESET ROLE")
        conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
        conn.execute(sql.SQL("DROP ROLE {}").format(role))


@dataclasses.dataclass(frozen=True)
class Run:
    """One psql process: its exit status and its output, stdout and stderr in the order printed."""

    returncode: int
    output: str

    @property
    def errors(self) -> list[str]:
        return [line for line in self.output.splitlines() if re.match(r"^(psql:\S+: )?ERROR:", line)]

    @property
    def failed(self) -> bool:
        return self.returncode != 0 or bool(self.errors)

    def first_error(self) -> str:
        return self.errors[0] if self.errors else ""

    @property
    def sqlstates(self) -> list[str]:
        """The SQLSTATE of every ERROR, in order (psql prints them with VERBOSITY=verbose)."""
        return [match.group(1) for line in self.errors if (match := re.search(r"ERROR:\s+([0-9A-Z]{5}):", line))]

    def after_first_error(self) -> list[str]:
        """The lines psql printed after its first ERROR line."""
        lines = self.output.splitlines()
        first = next((i for i, line in enumerate(lines) if line in self.errors), len(lines))
        return lines[first + 1 :]


def psql_command(server: Server, dbname: str, mode: str, *args: str) -> list[str]:
    """psql as a deployer runs it: --no-psqlrc always; ON_ERROR_STOP and -1 unless PLAIN.
    VERBOSITY=verbose prints every error's SQLSTATE."""
    command = [server.tool("psql"), "--no-psqlrc", "-v", "VERBOSITY=verbose", "-d", server.conninfo(dbname)]
    if mode == SINGLE:
        command += ["-v", "ON_ERROR_STOP=1", "--single-transaction"]
    return [*command, *args]


def run_psql(
    server: Server, dbname: str, mode: str, *args: str, stdin: str | None = None, options: str | None = None
) -> Run:
    """Run psql to its end; stderr is merged into stdout so that the order of lines is kept."""
    env = server.client_env()
    if options is not None:
        env["PGOPTIONS"] = options
    result = subprocess.run(
        psql_command(server, dbname, mode, *args),
        env=env,
        input=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=180,
    )
    return Run(result.returncode, result.stdout)


def barrier_script(directory: Path, name: str, paths: Sequence[Path]) -> Path:
    """A script that waits at the barrier, then includes the files with \\i (as `psql -f a -f b` would)."""
    lines = [
        f"SELECT pg_catalog.pg_advisory_lock_shared({BARRIER}) IS NULL AS waited;",
        f"SELECT pg_catalog.pg_advisory_unlock_shared({BARRIER}) IS NULL AS released;",
        *(f"\\i '{path}'" for path in paths),
    ]
    script = directory / name
    script.write_text("\n".join(lines) + "\n")
    return script


def waiting_at_barrier(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
        "AND classid = %s::bigint::oid AND objid = %s::bigint::oid AND objsubid = 1",
        (BARRIER >> 32, BARRIER & 0xFFFFFFFF),
    ).fetchone()
    return int(row[0]) if row is not None else 0


def race(
    server: Server,
    dbname: str,
    plans: Sequence[Sequence[Path]],
    mode: str,
    directory: Path,
    options: str | None = None,
) -> list[Run]:
    """One psql process per plan (the files it applies, in order), all connected and waiting at
    one barrier before the first of them starts: they are released at the same instant."""
    env = server.client_env()
    if options is not None:
        env["PGOPTIONS"] = options
    with server.connect(dbname, autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", (BARRIER,))
        processes = []
        try:
            for index, plan in enumerate(plans):
                script = barrier_script(directory, f"deployer-{index}.sql", plan)
                processes.append(
                    subprocess.Popen(
                        psql_command(server, dbname, mode, "-f", str(script)),
                        env=env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        text=True,
                    )
                )
            deadline = time.monotonic() + 60
            while waiting_at_barrier(gate) < len(plans):
                if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                    raise AssertionError(
                        f"only {waiting_at_barrier(gate)} of {len(plans)} deployers reached the barrier"
                    )
                time.sleep(0.005)
        finally:
            gate.execute("SELECT pg_advisory_unlock(%s)", (BARRIER,))
            runs = []
            for process in processes:
                output, _ = process.communicate(timeout=180)
                runs.append(Run(process.returncode, output))
    return runs


def describe(runs: Sequence[Run]) -> str:
    """The failed runs, for an assertion message."""
    failed = [f"deployer {i}: exit {run.returncode}: {run.first_error()}" for i, run in enumerate(runs) if run.failed]
    return "\n".join(failed) or "none failed"


COMMAND_TAG = re.compile(r"^(DO|CREATE \w+|ALTER \w+|COMMENT|DROP \w+|SELECT \d+|INSERT \d+ \d+|DELETE \d+)$")


def claims_of_success(lines: Sequence[str]) -> list[str]:
    """Lines that say a statement did something: a command tag, or a NOTICE that something was skipped."""
    return [line for line in lines if COMMAND_TAG.match(line.strip()) or "skipping" in line]


# The row version (xmin) of every catalog row of the objects in a schema: a statement that
# creates, replaces (CREATE OR REPLACE with the same text included), alters, comments or
# drops one of them changes this, even where the catalog snapshot reads the same.
VERSIONS = """
    SELECT 'pg_namespace', n.nspname, n.xmin::TEXT FROM pg_namespace AS n WHERE n.nspname = %(schema)s
    UNION ALL
    SELECT 'pg_class', c.relname, c.xmin::TEXT FROM pg_class AS c
    WHERE c.relnamespace = to_regnamespace(quote_ident(%(schema)s))::oid
    UNION ALL
    SELECT 'pg_proc', p.oid::regprocedure::TEXT, p.xmin::TEXT FROM pg_proc AS p
    WHERE p.pronamespace = to_regnamespace(quote_ident(%(schema)s))::oid
    UNION ALL
    SELECT 'pg_description', d.objoid::TEXT || '/' || d.objsubid, d.xmin::TEXT FROM pg_description AS d
    WHERE d.objoid IN (
        SELECT c.oid FROM pg_class AS c WHERE c.relnamespace = to_regnamespace(quote_ident(%(schema)s))::oid
        UNION ALL
        SELECT p.oid FROM pg_proc AS p WHERE p.pronamespace = to_regnamespace(quote_ident(%(schema)s))::oid
    )
    ORDER BY 1, 2
"""


def catalog_versions(conn: psycopg.Connection, *schemas: str) -> list[tuple[str, ...]]:
    """What `VERSIONS` returns for each schema (public by default), in one sorted list."""
    rows: list[tuple[str, ...]] = []
    for schema in schemas or ("public",):
        rows += [(schema, *row) for row in conn.execute(VERSIONS, {"schema": schema})]
    return rows
