"""The verification script (tests/test_idempotency_migrations.sql) passes on a fresh migrate, as a
superuser and as the guide's application role, in TAP that pg_prove reads, and leaves nothing
behind: the catalog and the rows are as they were."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from tests import verification
from tests.helpers import UP_FILES, apply_all, catalog_snapshot, count
from tests.test_privileges import UPSERT_GRANTS, role
from tooling.servers import Server

__all__ = ["role"]  # the role fixture, shared with test_privileges

CATALOG_CHECKS = 22
BEHAVIOUR_TESTS = 8  # the report's tests 3 to 10 (1 and 2 are catalog checks)


def _seed(conn: psycopg.Connection) -> None:
    conn.execute(
        "INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, expires_at) "
        "SELECT gen_random_uuid(), 'payment', '{}', 201, now() + INTERVAL '1 day' FROM generate_series(1, 50)"
    )


def assert_all_ok(run: verification.Run, planned: int) -> None:
    assert run.returncode == 0, f"the script must exit 0\n{run.describe()}"
    assert run.plan == planned, f"plan 1..{planned} expected\n{run.describe()}"
    assert len(run.results) == planned, f"every planned test prints one line\n{run.describe()}"
    assert run.not_ok == [], f"every check must be ok\n{run.describe()}"


def test_the_script_passes_on_a_fresh_migrate_and_leaves_nothing_behind(
    pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    _seed(conn)
    before, rows = catalog_snapshot(conn), count(conn)

    run = verification.run_script(pg_server, database)

    assert_all_ok(run, CATALOG_CHECKS + BEHAVIOUR_TESTS)
    assert "SKIP" not in run.stdout, "with no expired record of the application's, the cleanup test runs"
    assert catalog_snapshot(conn) == before, "the script must leave the catalog as it was"
    assert count(conn) == rows, "the script must leave the rows as they were"


def test_the_cleanup_test_is_skipped_rather_than_lock_the_applications_expired_records(
    pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    conn.execute(
        "INSERT INTO idempotency_records (request_id, operation, result_payload, created_at, expires_at) "
        "VALUES (gen_random_uuid(), 'old', '{}', now() - INTERVAL '2 days', now() - INTERVAL '1 day')"
    )
    run = verification.run_script(pg_server, database)
    assert_all_ok(run, CATALOG_CHECKS + BEHAVIOUR_TESTS)
    skipped = [text for _, text in run.results if "# SKIP" in text]
    assert len(skipped) == 1 and "report test 8" in skipped[0], run.describe()
    assert count(conn, "operation = 'old'") == 1, "the application's expired record is untouched"


def test_the_script_verifies_an_install_in_another_schema(pg_server: Server, empty_database: str) -> None:
    with pg_server.connect(empty_database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA app")
        conn.execute("SET search_path = app")
        apply_all(conn, UP_FILES)
    assert_all_ok(verification.run_script(pg_server, empty_database, "schema=app"), CATALOG_CHECKS + BEHAVIOUR_TESTS)
    public = verification.run_script(pg_server, empty_database)
    assert "not ok 2 - table idempotency_records exists" in public.stdout, public.describe()


@pytest.fixture
def application_role(conn: psycopg.Connection, role: str) -> Iterator[str]:
    """A role with the guide's grants for an application that saves with ON CONFLICT DO UPDATE."""
    for statement in UPSERT_GRANTS:
        conn.execute(sql.SQL(statement).format(role=sql.Identifier(role)))
    yield role


def test_catalog_only_passes_as_the_application_role_on_a_read_only_session(
    pg_server: Server, database: str, conn: psycopg.Connection, application_role: str
) -> None:
    """As the application's role, in a read-only session (as on a replica): catalog checks only,
    the function's owner named explicitly since that role owns nothing."""
    options = f"-c role={application_role} -c default_transaction_read_only=on"
    owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'idempotency_records'").fetchone()
    assert owner is not None
    run = verification.run_script(pg_server, database, "catalog_only=1", options=options)
    assert_all_ok(run, CATALOG_CHECKS)
    assert "report test 3" not in run.stdout
    named = verification.run_script(pg_server, database, "catalog_only=1", f"owner={owner[0]}", options=options)
    assert_all_ok(named, CATALOG_CHECKS)
    wrong = verification.run_script(pg_server, database, "catalog_only=1", f"owner={application_role}", options=options)
    assert wrong.returncode != 0 and any("owned by" in text for text in wrong.not_ok), wrong.describe()


def test_the_full_script_passes_as_the_application_role(
    pg_server: Server, database: str, conn: psycopg.Connection, application_role: str
) -> None:
    before, rows = catalog_snapshot(conn), count(conn)
    run = verification.run_script(pg_server, database, options=f"-c role={application_role}")
    assert_all_ok(run, CATALOG_CHECKS + BEHAVIOUR_TESTS)
    assert (catalog_snapshot(conn), count(conn)) == (before, rows)


def test_a_failed_check_reads_found_versus_expected(pg_server: Server, database: str, conn: psycopg.Connection) -> None:
    conn.execute("ALTER TABLE idempotency_records ALTER COLUMN operation TYPE VARCHAR(200)")
    run = verification.run_script(pg_server, database)
    assert run.returncode != 0
    assert (
        "column operation: found character varying(200) not null, expected character varying(100) not null"
        in run.not_ok
    ), run.describe()
    assert "verification failed" in run.stderr, "psql's error says why it exits non-zero"


def test_pg_prove_passes_on_a_good_database_and_fails_on_a_damaged_one(
    pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    if shutil.which("pg_prove") is None:
        pytest.skip("pg_prove not installed (Debian: libtap-parser-sourcehandler-pgtap-perl)")
    good = verification.run_pg_prove(pg_server, database)
    assert good is not None and good.returncode == 0 and "Result: PASS" in good.stdout, good and good.describe()
    verification.load_fixture(conn, "statement_trigger")
    bad = verification.run_pg_prove(pg_server, database)
    assert bad is not None and bad.returncode != 0 and "Result: FAIL" in bad.stdout, bad and bad.describe()
