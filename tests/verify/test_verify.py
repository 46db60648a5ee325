"""The verification script (tests/test_idempotency_migrations.sql) passes every correct install: a
fresh migrate, a table left with one record by a cleanup (reltuples = 1), an empty one, 100,000
records live or expired, a schema of any spelling, a project's own additions (noted, not failed),
the application role, a read-only session; in TAP that pg_prove reads; leaving nothing behind; and
waiting for a lock at most lock_timeout."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from tests import verification
from tests.helpers import catalog_snapshot, count, explain, plan_nodes
from tests.roles import UPSERT_GRANTS, grant
from tests.verification import PASSING, assert_passes
from tooling import records
from tooling.servers import Server


def _seed(conn: psycopg.Connection) -> None:
    records.insert_many(conn, 50, records.live(status_code=201, lifetime=records.DAY))


def passing_run(pg_server: Server, database: str, conn: psycopg.Connection, state: str) -> verification.Run:
    """The script's run on the correct install tests/fixtures/verify_passes/<state>.sql makes: it passes."""
    verification.load_fixture(conn, state, PASSING)
    run = verification.run_script(pg_server, database)
    assert_passes(run)
    return run


def test_the_script_passes_on_a_fresh_migrate_and_leaves_nothing_behind(
    pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    _seed(conn)
    before, rows = catalog_snapshot(conn), count(conn)

    run = verification.run_script(pg_server, database)

    assert_passes(run)
    assert run.skipped == [], "with no expired record of the application's, the cleanup test runs too"
    assert run.diagnostics("note") == [], "a fresh install has nothing to note"
    assert catalog_snapshot(conn) == before, "the script must leave the catalog as it was"
    assert count(conn) == rows, "the script must leave the rows as they were"


def test_the_cleanup_test_is_skipped_rather_than_lock_the_applications_expired_records(
    pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    run = passing_run(pg_server, database, conn, "expired_application_record")
    (skipped,) = run.skipped
    assert "report test 8" in skipped and "1 expired records of the application's" in skipped, run.describe()
    assert count(conn, "operation = 'old'") == 1, "the application's expired record is untouched"


def _analyze(conn: psycopg.Connection) -> float:
    conn.execute("VACUUM ANALYZE idempotency_records")
    row = conn.execute("SELECT reltuples FROM pg_class WHERE oid = 'idempotency_records'::regclass").fetchone()
    assert row is not None
    return float(row[0])


def test_the_index_test_holds_on_a_table_a_cleanup_left_with_one_record(
    pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    """With reltuples = 1 the planner prefers idx_idempotency_expires for the get query even with
    sequential scans off (the old test 9 then failed a correct install); each index is still usable
    by a query only it can serve."""
    verification.load_fixture(conn, "cleaned_to_one_record", PASSING)
    assert _analyze(conn) == 1
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        plan = explain(
            conn, "SELECT * FROM idempotency_records WHERE request_id = gen_random_uuid() AND expires_at > now()"
        )
        conn.execute("ROLLBACK")
    indexes = {node.get("Index Name") for node in plan_nodes(plan)} - {None}
    assert indexes == {"idx_idempotency_expires"}, f"the state that broke the old test 9: {indexes}"

    run = verification.run_script(pg_server, database)
    assert_passes(run)
    assert "report test 9" in " ".join(run.ran) and run.skipped == [], run.describe()


@pytest.mark.parametrize("state", ["empty", "live_100k", "expired_100k"])
def test_the_script_passes_on_any_data(pg_server: Server, database: str, conn: psycopg.Connection, state: str) -> None:
    if state != "empty":
        verification.load_fixture(conn, state, PASSING)
    _analyze(conn)
    run = verification.run_script(pg_server, database)
    assert_passes(run)
    assert "report test 9" in " ".join(run.ran), run.describe()
    assert ("report test 8" in " ".join(run.skipped)) == (state == "expired_100k"), run.describe()


SCHEMAS = ["App", "my schema", "a.b", 'we"ird']


@pytest.mark.parametrize("reached", ["named", "search_path"])
@pytest.mark.parametrize("schema", SCHEMAS)
def test_the_script_verifies_an_install_in_a_schema_of_any_spelling(
    pg_server: Server, empty_database: str, schema: str, reached: str
) -> None:
    """Named with -v schema=NAME exactly as spelled (not quoted), or reached as the current schema."""
    with pg_server.connect(empty_database, autocommit=True) as conn:
        verification.install(conn, schema)
        if reached == "search_path":
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET search_path = {}").format(
                    sql.Identifier(empty_database), sql.Identifier(schema)
                )
            )
    variables = (f"schema={schema}",) if reached == "named" else ()
    run = verification.run_script(pg_server, empty_database, *variables)
    assert_passes(run)
    assert run.skipped == [], run.describe()
    if reached == "named":
        public = verification.run_script(pg_server, empty_database)
        assert public.line("table idempotency_records exists")[0] is False, public.describe()


def test_a_projects_own_additions_are_noted_and_pass(
    pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    run = passing_run(pg_server, database, conn, "project_additions")
    notes = "\n".join(run.diagnostics("note"))
    for addition in (
        "column tenant_id bigint null: a project addition",
        "column source text not null default 'api'::text: a project addition",
        "idx_idempotency_tenant ON public.idempotency_records USING btree (tenant_id, created_at)",
        "idx_idempotency_failures ON public.idempotency_records USING btree (status_code) WHERE (status_code >= 500)",
        "table storage parameters fillfactor=90, autovacuum_vacuum_scale_factor=0.01",
        "index idx_idempotency_expires, storage parameters fillfactor=80",
        "column expires_at, statistics target 1000",
        "column operation, options n_distinct=50",
    ):
        assert addition in notes, f"{addition!r} must be noted\n{run.describe()}"


def test_another_index_on_a_contract_column_passes_whichever_the_planner_chooses(
    pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    """A duplicate of idx_idempotency_expires (a project's, built CONCURRENTLY under another name):
    the planner may prefer either for the cleanup's query; test 9 passes, with a note if it chose
    the other."""
    conn.execute("CREATE INDEX zzz_idempotency_expires ON idempotency_records (expires_at)")
    _analyze(conn)
    run = verification.run_script(pg_server, database)
    assert_passes(run)
    chosen = [note for note in run.diagnostics("note") if "the planner chose" in note]
    assert chosen in (
        [],
        [
            "for the query of idx_idempotency_expires the planner chose zzz_idempotency_expires, another index on "
            "expires_at (idx_idempotency_expires itself is checked by its definition and validity)"
        ],
    ), run.describe()


@pytest.fixture
def application_role(conn: psycopg.Connection, role: str) -> Iterator[str]:
    """A role with the guide's grants for an application that saves with ON CONFLICT DO UPDATE."""
    grant(conn, role, *UPSERT_GRANTS)
    yield role


def test_catalog_only_passes_as_the_application_role_on_a_read_only_session(
    pg_server: Server, database: str, conn: psycopg.Connection, application_role: str
) -> None:
    """As the application's role, in a read-only session (as on a replica): catalog checks only;
    the owner (a superuser here) is trusted, named or not."""
    options = f"-c role={application_role} -c default_transaction_read_only=on"
    owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'idempotency_records'").fetchone()
    assert owner is not None
    run = verification.run_script(pg_server, database, "catalog_only=1", options=options)
    assert_passes(run, behaviour=False)
    assert all("catalog_only is set" in text for text in run.skipped), run.describe()
    named = verification.run_script(pg_server, database, "catalog_only=1", f"owner={owner[0]}", options=options)
    assert_passes(named, behaviour=False)
    wrong = verification.run_script(pg_server, database, "catalog_only=1", f"owner={application_role}", options=options)
    assert wrong.returncode != 0, wrong.describe()
    assert wrong.line("are owned by one role") == (
        False,
        "table idempotency_records and the function are owned by one role: "
        f"found table {owner[0]}, function {owner[0]}, expected table {application_role}, function {application_role}",
    ), wrong.describe()


def test_the_full_script_passes_as_the_application_role(
    pg_server: Server, database: str, conn: psycopg.Connection, application_role: str
) -> None:
    """The guide's upsert role runs the report's tests; 047's need UPDATE on three more columns
    (docs/protocol.md, "Grants"): skipped, naming them, until the role has them."""
    before, rows = catalog_snapshot(conn), count(conn)
    run = verification.run_script(pg_server, database, options=f"-c role={application_role}")
    assert run.returncode == 0 and run.not_ok == [], run.describe()
    lacking = f"role {application_role} lacks UPDATE (created_at, request_hash, lease_token)"
    assert len(run.skipped) == verification.PROTOCOL_TESTS, run.describe()
    assert all(text.startswith("047: ") and lacking in text for text in run.skipped), run.describe()
    grant(
        conn, application_role, "GRANT UPDATE (created_at, request_hash, lease_token) ON idempotency_records TO {role}"
    )
    run = verification.run_script(pg_server, database, options=f"-c role={application_role}")
    assert_passes(run)
    assert run.skipped == [], run.describe()
    assert (catalog_snapshot(conn), count(conn)) == (before, rows)


def test_without_the_grants_the_behaviour_tests_are_skipped_with_what_is_missing(
    pg_server: Server, database: str, conn: psycopg.Connection, role: str
) -> None:
    conn.execute(sql.SQL("GRANT SELECT ON idempotency_records TO {}").format(sql.Identifier(role)))
    run = verification.run_script(pg_server, database, options=f"-c role={role}")
    assert_passes(run, behaviour=False)
    assert all(
        f"role {role} lacks INSERT, DELETE, UPDATE (operation, result_payload, status_code, expires_at): "
        "the behaviour tests need the grants of the guide's application role" in text
        for text in run.skipped
    ), run.describe()


@pytest.mark.parametrize("options", ["-c default_transaction_read_only=on", None], ids=["read-only", "catalog-only"])
def test_a_session_that_must_not_write_runs_the_catalog_checks_and_skips_the_rest(
    pg_server: Server, database: str, options: str | None
) -> None:
    """A read-only session (as a replica's) in full mode, and catalog_only=1: exit 0, the
    behaviour tests printed as skipped with the reason. That neither writes anything (no
    transaction id, no WAL) is measured on a server of its own, where no other session takes
    transaction ids meanwhile: tests/verify/test_verify_writes.py."""
    variables = () if options else ("catalog_only=1",)
    run = verification.run_script(pg_server, database, *variables, options=options)
    assert_passes(run, behaviour=False)
    reason = "a read-only session" if options else "catalog_only is set"
    assert all(reason in text for text in run.skipped), run.describe()


def test_a_failed_check_reads_found_versus_expected(pg_server: Server, database: str, conn: psycopg.Connection) -> None:
    conn.execute("ALTER TABLE idempotency_records ALTER COLUMN operation TYPE VARCHAR(200)")
    run = verification.run_script(pg_server, database)
    assert run.returncode != 0
    assert (
        "column operation: found character varying(200) not null, expected character varying(100) not null"
        in run.not_ok
    ), run.describe()
    assert f"verification failed: 1 of {verification.PLANNED} checks not ok" in run.stderr, (
        "psql's error says why it exits non-zero"
    )
    assert len(run.behaviour_skipped) == verification.BEHAVIOUR_TESTS, (
        "a failed catalog check skips the behaviour tests"
    )


def test_a_lock_the_behaviour_tests_need_is_waited_for_at_most_lock_timeout(
    pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    """A session holds SHARE on the table (a CREATE INDEX in progress): the catalog checks run, the
    table's ROW EXCLUSIVE lock is given up after lock_timeout (the session's, else 2s), and the
    behaviour tests are skipped saying so; exit 0."""
    with pg_server.connect(database) as holder:
        holder.execute("LOCK TABLE idempotency_records IN SHARE MODE")
        for options, waited in (("-c lock_timeout=200ms", "200ms"), (None, "2s")):
            run = verification.run_script(pg_server, database, options=options)
            assert_passes(run, behaviour=False)
            assert all(f"not granted within lock_timeout {waited}" in text for text in run.skipped), run.describe()
        holder.rollback()


def test_a_table_locked_longer_than_lock_timeout_bails_out_without_a_verdict(
    pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    """A session holds ACCESS EXCLUSIVE on the table (a migration, VACUUM FULL): even the catalog
    cannot be read (pg_get_expr and pg_get_indexdef lock the table), so after lock_timeout the script
    bails out (TAP "Bail out!"), exits non-zero, and leaves the session's settings as they were."""
    with pg_server.connect(database) as holder:
        holder.execute("LOCK TABLE idempotency_records IN ACCESS EXCLUSIVE MODE")
        run = verification.run_script(pg_server, database, options="-c lock_timeout=200ms")
        holder.rollback()
    assert run.returncode != 0, run.describe()
    (line,) = run.stdout.splitlines()
    assert line.startswith(
        "Bail out! The catalog checks could not run (55P03: canceling statement due to lock timeout)"
    ), run.describe()
    assert "longer than lock_timeout 200ms" in line, run.describe()
    assert "verification bailed out" in run.stderr, run.describe()


def test_the_session_keeps_its_settings(pg_server: Server, database: str) -> None:
    """Run with \\i in a DBA's session, the script restores its search_path and lock_timeout."""
    result = _psql_session(
        pg_server,
        database,
        "SET search_path = public, pg_temp;\nSET lock_timeout = '7s';\n"
        f"\\i {verification.SCRIPT}\n"
        "SELECT current_setting('search_path') || ' | ' || current_setting('lock_timeout');\n",
    )
    assert result.splitlines()[-1] == "public, pg_temp | 7s", result


def _psql_session(server: Server, dbname: str, text: str) -> str:
    done = subprocess.run(
        [server.tool("psql"), "--no-psqlrc", "-At", "-v", "ON_ERROR_STOP=1", "-d", dbname],
        input=text,
        env=verification.client_env(server),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


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
