"""The migrations and the verification script run no code but the built-ins, whatever another role
has put on the search_path: a role with CREATE on schema public plants functions and operators whose
argument types match our calls exactly where the built-in needs a cast (CVE-2018-1058), and none of
them runs while a superuser applies, re-applies, verifies and rolls back the migrations.

The traps (tests/fixtures/hostile_shadowing_traps.sql) record each call with a WARNING and nextval
on a sequence, which survives the verification script's rollback. Each test plants them after the
files it does not test have run, so that a trap that runs names the file under test."""

from __future__ import annotations

import psycopg
import pytest

from tests import verification
from tests.helpers import DOWN_FILES, UP_FILES, apply
from tests.shadowing_traps import HOSTILE_TRAPS, TRAP_RAN, plant, trap_calls
from tooling import records
from tooling.servers import Server

# One expression per trap, written as the files wrote them before they were made immune: proof that
# each trap is armed (it does run under the default search_path), so a test below can fail.
PROBES = {
    "= (oid, regclass)": "SELECT c.oid = to_regclass('pg_class') FROM pg_catalog.pg_class AS c LIMIT 1",
    "= (oid, regrole)": "SELECT c.relowner = current_user::REGROLE FROM pg_catalog.pg_class AS c LIMIT 1",
    "= (oid, regnamespace)": "SELECT c.relnamespace = current_schema()::REGNAMESPACE FROM pg_catalog.pg_class AS c "
    "LIMIT 1",
    "= (oid, regprocedure)": "SELECT p.oid = to_regprocedure('now()') FROM pg_catalog.pg_proc AS p LIMIT 1",
    "~ (name, name)": "SELECT current_schema() ~ '^pg_(toast_)?temp_'",
    "|| (text, name)": "SELECT 'trigger ' || t.typname FROM pg_catalog.pg_type AS t LIMIT 1",
    "|| (text, integer)": "SELECT 'x' || 201",
    "|| (bigint, text)": "SELECT count(*) || ' row' FROM pg_catalog.pg_class",
    "* (interval, integer)": "SELECT now() + INTERVAL '1 hour' * 1",
    "format(text, name)": "SELECT format('%I.idempotency_records', current_schema())",
    "format(text, text)": "SELECT format('schema %s', 'public'::TEXT)",
    "format(text, bigint)": "SELECT format('found %s rows', 1::BIGINT)",
    "format(text, text, name)": "SELECT format('%s %s', 'a'::TEXT, current_user)",
    "format(text, regnamespace, name)": "SELECT format('%s.%I', c.relnamespace::REGNAMESPACE, c.relname) "
    "FROM pg_catalog.pg_class AS c LIMIT 1",
    "format(text, bigint, text)": "SELECT format('ok %s - %s', 1::BIGINT, 'a'::TEXT)",
    "format(text, text, text, text)": "SELECT format('%s %s %s', 'a'::TEXT, 'b'::TEXT, 'c'::TEXT)",
    "format(text, text, name, text)": "SELECT format('%s %s %s', 'a'::TEXT, current_user, 'c'::TEXT)",
    "obj_description(regclass, name)": "SELECT obj_description('pg_class'::REGCLASS, 'pg_class')",
    "obj_description(regprocedure, name)": "SELECT obj_description('now()'::REGPROCEDURE, 'pg_proc')",
    "col_description(regclass, smallint)": "SELECT col_description('pg_class'::REGCLASS, a.attnum) "
    "FROM pg_catalog.pg_attribute AS a LIMIT 1",
    "pg_get_function_result(regprocedure)": "SELECT pg_get_function_result('now()'::REGPROCEDURE)",
    "unnest(text[])": "SELECT * FROM unnest(ARRAY['a', 'b'])",
    "jsonb_path_exists(jsonb, text)": "SELECT jsonb_path_exists('{}'::JSONB, '$.a')",
    "array_agg(tid)": "SELECT array_agg(ctid) FROM pg_catalog.pg_class",
}


@pytest.mark.parametrize("trap", sorted(PROBES))
def test_each_trap_is_armed(empty_conn: psycopg.Connection, trap: str) -> None:
    ran = plant(empty_conn, (HOSTILE_TRAPS,))
    empty_conn.execute(PROBES[trap]).fetchall()
    assert trap in ran, f"the trap {trap} did not run: {ran}"
    assert trap_calls(empty_conn) >= 1


@pytest.mark.parametrize("step", range(len(UP_FILES)), ids=[path.name for path in UP_FILES])
def test_applying_and_reapplying_a_migration_runs_no_trap(empty_conn: psycopg.Connection, step: int) -> None:
    """The files before this one applied, then the traps planted, then this file applied twice."""
    for path in UP_FILES[:step]:
        apply(empty_conn, path)
    ran = plant(empty_conn, (HOSTILE_TRAPS,))
    for _ in range(2):
        apply(empty_conn, UP_FILES[step])
        assert ran == [], f"{UP_FILES[step].name} ran another role's code: {ran}"
    assert trap_calls(empty_conn) == 0
    found = empty_conn.execute(
        "SELECT to_regclass('public.idempotency_records') IS NOT NULL, "
        "to_regprocedure('public.cleanup_expired_idempotency_records()') IS NOT NULL"
    ).fetchone()
    assert found == (True, step >= 1), "the file created its objects in public"


def test_the_cleanup_runs_no_trap(empty_conn: psycopg.Connection) -> None:
    """The function's body (pinned search_path pg_catalog, public, pg_temp) calls built-ins only."""
    for path in UP_FILES:
        apply(empty_conn, path)
    records.insert(empty_conn, records.expired(operation="old"))
    ran = plant(empty_conn, (HOSTILE_TRAPS,))
    deleted = empty_conn.execute("SELECT deleted_count FROM cleanup_expired_idempotency_records()").fetchall()
    assert deleted == [(1,)], "the cleanup deleted the expired record"
    assert (ran, trap_calls(empty_conn)) == ([], 0), f"the cleanup ran another role's code: {ran}"


@pytest.mark.parametrize("variables", [(), ("catalog_only=1",)], ids=["full", "catalog_only"])
def test_the_verification_script_runs_no_trap(
    pg_server: Server, empty_database: str, empty_conn: psycopg.Connection, variables: tuple[str, ...]
) -> None:
    for path in UP_FILES:
        apply(empty_conn, path)
    plant(empty_conn, (HOSTILE_TRAPS,))
    run = verification.run_script(pg_server, empty_database, *variables)
    assert TRAP_RAN not in run.stderr, f"the script ran another role's code:\n{run.describe()}"
    assert trap_calls(empty_conn) == 0, f"the script ran another role's code (rolled back):\n{run.describe()}"
    assert run.returncode == 0 and run.not_ok == [], run.describe()


def test_the_down_migrations_run_no_trap(empty_conn: psycopg.Connection) -> None:
    """Where pg_cron is absent a superuser's 046.down reads pg_extension only, and 045.down calls
    nothing: this guards their DO block's search_path switch against a later edit."""
    for path in UP_FILES:
        apply(empty_conn, path)
    ran = plant(empty_conn, (HOSTILE_TRAPS,))
    for path in (*DOWN_FILES, *DOWN_FILES):
        apply(empty_conn, path)
        assert ran == [], f"{path.name} ran another role's code: {ran}"
    found = empty_conn.execute(
        "SELECT to_regclass('public.idempotency_records'), "
        "to_regprocedure('public.cleanup_expired_idempotency_records()')"
    ).fetchone()
    assert found == (None, None), "the down migrations removed the table and the function"
    assert trap_calls(empty_conn) == 0
