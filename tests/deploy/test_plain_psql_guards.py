"""A refused check stops everything after it however the files are run: with plain `psql -f`
and `psql < file`, as the report tells users to run them (no ON_ERROR_STOP, no -1: psql goes on
after an error, every statement commits on its own, and psql exits 0), every statement after
the refusal fails too, in that file and in the next file of the same psql run, so nothing is
created, replaced or dropped after it (catalog snapshot and every catalog row's version
unchanged) and no later line of psql's output claims a success (no command tag such as DO or
CREATE, no "skipping" notice).

Each case is a state (tests/fixtures/states/ or tests/fixtures/deploy_states/), the files psql
runs in one session, and the SQLSTATE of the first error. A state of the session (a temporary
table) is run by the same psql, first.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import psycopg
import pytest

from tests import deployers, verification
from tests.helpers import (
    DOWN_045,
    DOWN_047,
    DOWN_FILES,
    UP_045,
    UP_046,
    UP_047,
    UP_FILES,
    catalog_snapshot,
    fixture_sql,
    split_statements,
)
from tooling.servers import Server


@dataclasses.dataclass(frozen=True)
class Case:
    state: str
    files: tuple[Path, ...]
    sqlstate: str  # of the first error
    migrated: bool = True  # the state starts from a migrated database, else from an empty one
    session: bool = False  # the state is the session's: psql runs its file first
    damaged: bool = False  # the state is one of tests/fixtures/states/ (else deploy_states/)
    user_schema: bool = False  # the state adds a schema named after the user: compare it too

    def __str__(self) -> str:
        return f"{'+'.join(path.name.split('_', 1)[0] + ('.down' if 'down' in path.name else '') for path in self.files)}-{self.state}"

    def state_file(self) -> Path:
        return verification.fixture_path(self.state) if self.damaged else deployers.state_path(self.state)


CASES = [
    # The report's deployment: 045 then 046 on a table another role planted with a trigger.
    Case("table_planted_with_a_trap_trigger", (UP_045, UP_046), "42501", migrated=False),
    Case("table_planted_with_a_trap_trigger", (UP_046,), "55000", migrated=False),
    # 045's checks, each stage: where (place), then the table and indexes (guard); and the next
    # file of the same run (046 would pass its own checks here) stops too.
    Case("temporary_table_in_the_session", (UP_045, UP_046), "3F000", migrated=False, session=True),
    Case("schema_named_after_the_user", (UP_045, UP_046), "42P07", user_schema=True),
    Case("check_replaced_by_true", (UP_045, UP_046), "42P07", damaged=True),
    Case("expires_index_invalid", (UP_045, UP_046), "55000", damaged=True),
    Case("statement_trigger", (UP_045,), "55000", damaged=True),
    # 046's checks.
    Case("function_owned_by_another_role", (UP_046,), "42501"),
    Case("function_overload_owned_by_another_role", (UP_046,), "42501"),
    Case("schema_named_after_the_user", (UP_046,), "3F000", user_schema=True),
    Case("table_absent", (UP_046,), "42P01", damaged=True),
    # 047's checks, each state it refuses; and after 046's refusal, 047 in the same run stops too.
    Case("temporary_table_in_the_session", (UP_047,), "3F000", session=True),
    Case("schema_named_after_the_user", (UP_047,), "3F000", user_schema=True),
    Case("table_absent", (UP_047,), "42P01", damaged=True),
    Case("statement_trigger", (UP_047,), "55000", damaged=True),
    Case("protocol_function_owned_by_another_role", (UP_047,), "42723"),
    Case("protocol_overload_of_claim", (UP_047,), "42723", damaged=True),
    Case("protocol_request_hash_of_type_text", (UP_047,), "42701", damaged=True),
    Case("function_owned_by_another_role", (UP_046, UP_047), "42501"),
    # The down files' checks; 046.down's, where pg_cron is installed: tests/usage/test_pg_cron.py.
    Case("temporary_table_in_the_session", (DOWN_047,), "3F000", session=True),
    Case("temporary_table_in_the_session", (DOWN_047, DOWN_045), "3F000", session=True),
    Case("temporary_table_in_the_session", (DOWN_045,), "3F000", session=True),
    Case("table_of_another_shape", (DOWN_045,), "55000", migrated=False),
    Case("index_name_on_another_table", (DOWN_045,), "55000"),
]
FORMS = ("psql -f", "psql < file")


def run(pg_server: Server, dbname: str, case: Case, form: str) -> deployers.Run:
    paths = [deployers.state_path(case.state)] if case.session else []
    paths += list(case.files)
    if form == "psql -f":
        return deployers.run_psql(pg_server, dbname, deployers.PLAIN, *(arg for p in paths for arg in ("-f", str(p))))
    return deployers.run_psql(pg_server, dbname, deployers.PLAIN, stdin="".join(p.read_text() + "\n" for p in paths))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_nothing_runs_after_a_refusal_under_plain_psql(
    pg_server: Server, request: pytest.FixtureRequest, case: Case, form: str
) -> None:
    dbname = request.getfixturevalue("database" if case.migrated else "empty_database")
    with pg_server.connect(dbname, autocommit=True) as conn, deployers.planter_role(conn):
        if not case.session:
            with conn.transaction():
                conn.execute(fixture_sql(case.state_file()))
        schemas = ("public", conn.info.user) if case.user_schema else ("public",)
        before = [catalog_snapshot(conn, schema) for schema in schemas], deployers.catalog_versions(conn, *schemas)

        result = run(pg_server, dbname, case, form)

        after = [catalog_snapshot(conn, schema) for schema in schemas], deployers.catalog_versions(conn, *schemas)
    assert result.returncode == 0, f"{case}, {form}: plain psql goes on after errors and exits 0\n{result.output}"
    assert result.sqlstates[:1] == [case.sqlstate], (
        f"{case}, {form}: the first error has SQLSTATE {case.sqlstate}\n{result.output}"
    )
    claims = deployers.claims_of_success(result.after_first_error())
    assert claims == [], f"{case}, {form}: after the refusal psql printed {claims}\n{result.output}"
    assert after == before, f"{case}, {form}: something was created, replaced or dropped\n{result.output}"


@pytest.mark.parametrize("path", [*UP_FILES, *DOWN_FILES], ids=lambda path: path.name)
def test_a_statement_run_without_the_checks_before_it_is_refused(
    pg_server: Server, request: pytest.FixtureRequest, path: Path
) -> None:
    """The statement that changes something refuses to run in a session where the file's first
    statement has not marked its checks: on its own (copied out of the file, or after a cut), it
    creates, replaces and drops nothing."""
    conn = request.getfixturevalue("empty_conn" if path == UP_045 else "conn")
    before = catalog_snapshot(conn), deployers.catalog_versions(conn, "public")
    statements = split_statements(path.read_text())
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as raised:
        conn.execute(statements[-1])
    assert "a check before this statement did not pass" in str(raised.value)
    assert (catalog_snapshot(conn), deployers.catalog_versions(conn, "public")) == before
