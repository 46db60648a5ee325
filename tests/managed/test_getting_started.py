"""The guide's Getting started on a managed service, never as a superuser: the admin applies and
verifies, creates the application role and grants it, schedules the cleanup from database postgres
with cron.schedule_in_database, sets the alerts and vacuums as the table's owner; the application
role saves, reads and cleans up, and verifies in catalog-only mode naming the owner; the admin
rolls back, unscheduling first. Each step is the docs' own block or command, found by its text and
run as the role it names (tests/managed_service.py). The slow test waits for the jobs to fire:
pg_cron 1.4.2 has minute granularity."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest

from tests import helpers, managed_service, verification
from tests.cron_runs import FIRE_TIMEOUT, OLD_FAILED_RUNS, finished_runs
from tests.docblocks import GUIDE, MANAGED, QUERIES, block_with, run_shell, shell_with
from tests.managed_service import (
    ADMIN,
    APP_ROLE,
    CRON_DATABASE,
    FAILED_RUNS,
    SCHEDULE,
    UNSCHEDULE,
    Managed,
    run_as_login,
)
from tests.vacuum import expired_and_cleaned_up, statistics
from tooling import records

APPLY = "-U jive_admin \\\n     -d jive_money -f sql/045_create_idempotency_records.sql"
APP_VERIFY = "-v catalog_only=1 -v owner=jive_admin"
GRANTS = (*managed_service.GRANTS, "REVOKE EXECUTE ON FUNCTION cleanup_expired_idempotency_records() FROM PUBLIC;")
VACUUM_JOB = "SELECT cron.schedule_in_database(\n    'vacuum-idempotency'"
GUIDE_ROLLBACK = "-d jive_money -f sql/046_create_idempotency_cleanup_job.down.sql"
MANAGED_ROLLBACK = "idempotency.cron_jobs_checked=on' psql"
ALERTS = (
    "pg_total_relation_size('idempotency_records'::regclass) > 1024",
    "AS overdue, count(*) > 0 AS alert",
    "FROM pg_prepared_xacts",
)
VACUUM = "VACUUM (ANALYZE) idempotency_records;"


def apply_and_verify(managed: Managed, workdir: Path) -> None:
    """Steps 1 and 4 of Getting started, as the admin: the managed page's psql commands."""
    done = run_shell(managed.admin, managed.database, shell_with(APPLY, MANAGED), folder(workdir, "apply"))
    assert done.returncode == 0, f"the admin applies 045 and 046 and verifies: exit {done.returncode}\n{done.stderr}"
    assert "not ok" not in done.stdout and "1..52" in done.stdout, done.stdout


def folder(parent: Path, name: str) -> Path:
    """A working directory of its own for a shell block (where sql/ and tests/ are linked)."""
    path = parent / name
    path.mkdir()
    return path


def grant(managed: Managed) -> None:
    """Step 2, as the admin: the guide's Least privilege blocks; then the role gets a password."""
    with managed.connect() as conn:
        for snippet in GRANTS:
            run_as_login(conn, block_with(snippet, GUIDE))
    managed.login(APP_ROLE)


def schedule(managed: Managed) -> None:
    """Step 3, as the admin in postgres: the managed page's two jobs."""
    managed.schedule_cleanup()
    with managed.connect(dbname=CRON_DATABASE) as conn:
        run_as_login(conn, block_with(VACUUM_JOB, MANAGED))


def owners(conn: psycopg.Connection) -> tuple[str, str]:
    row = conn.execute(
        "SELECT pg_get_userbyid(c.relowner), pg_get_userbyid(p.proowner) FROM pg_class AS c, pg_proc AS p "
        "WHERE c.oid = 'idempotency_records'::regclass "
        "AND p.oid = 'cleanup_expired_idempotency_records()'::regprocedure"
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_the_admin_applies_grants_and_verifies_and_the_application_role_uses_the_table(
    managed: Managed, tmp_path: Path
) -> None:
    with managed.connect() as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
    apply_and_verify(managed, tmp_path)
    grant(managed)
    with managed.connect() as conn:
        assert owners(conn) == (ADMIN, ADMIN), "the admin owns the table and the function"
    with managed.connect(APP_ROLE) as app:
        run_as_login(app, block_with("PREPARE idempotency_get", QUERIES))
        run_as_login(app, block_with('\'{"transaction_id": "t-3"}\', 200, 24);'))  # privileges: the upsert role
    # The application role verifies what it may read, naming the owner: the managed page's command.
    app_login = managed.logins[APP_ROLE]
    done = run_shell(app_login, managed.database, shell_with(APP_VERIFY, MANAGED), folder(tmp_path, "app"))
    assert done.returncode == 0, f"the application role's catalog-only run passes\n{done.stdout}{done.stderr}"
    without_owner = verification.run_script(app_login, managed.database, "catalog_only=1")
    assert without_owner.returncode != 0 and any("a role you trust" in text for text in without_owner.not_ok), (
        f"without -v owner the owner is neither the role nor a superuser: test 5 is not ok\n{without_owner.describe()}"
    )


def test_the_admin_schedules_in_postgres_and_sets_the_alerts(managed: Managed, tmp_path: Path) -> None:
    apply_and_verify(managed, tmp_path)
    grant(managed)
    schedule(managed)
    with managed.connect(dbname=CRON_DATABASE) as conn:
        listed = run_as_login(conn, block_with("WHERE j.database = 'jive_money'", MANAGED))
        assert listed is not None
        assert [(row[1], row[4]) for row in listed.rows] == [
            ("cleanup-idempotency", ADMIN),
            ("vacuum-idempotency", ADMIN),
        ], f"two jobs, the admin's: {listed.rows}"
        refused = helpers.sqlstate_of(
            conn, "SELECT cron.schedule_in_database('x', '0 * * * *', 'SELECT 1', 'jive_money', 'jive_api_user')"
        )
        assert refused is not None, "only a superuser schedules a job for another role"
        run_as_login(conn, block_with(FAILED_RUNS, GUIDE))  # it states failed_runs = 0: nothing failed yet
    with managed.connect() as conn:
        for snippet in ALERTS:
            run_as_login(conn, block_with(snippet, GUIDE))
    with managed.connect(APP_ROLE, CRON_DATABASE) as app:
        state = helpers.sqlstate_of(app, "SELECT count(*) FROM cron.job")
        assert state == "42501", f"the application role has nothing of pg_cron, not even USAGE on its schema: {state}"


def test_vacuum_by_hand_as_the_owner_and_not_as_the_application_role(managed: Managed, tmp_path: Path) -> None:
    """The guide's VACUUM block: as the admin, the owner, it vacuums; as the application role it
    warns, succeeds and vacuums nothing (the advice that left the role out)."""
    apply_and_verify(managed, tmp_path)
    grant(managed)
    with managed.connect() as conn:
        expired_and_cleaned_up(conn, 100)
        before = statistics(conn, "n_dead_tup >= 100")
    warnings: list[str] = []
    with managed.connect(APP_ROLE) as app:
        app.add_notice_handler(lambda notice: warnings.append(notice.message_primary or ""))
        run_as_login(app, block_with(VACUUM, GUIDE))
    assert warnings == ['skipping "idempotency_records" --- only table or database owner can vacuum it'], warnings
    with managed.connect() as conn:
        assert statistics(conn) == before, f"the application role's VACUUM vacuumed nothing: {before}"
        run_as_login(conn, block_with(VACUUM, GUIDE))
        count, dead = statistics(conn, f"vacuum_count > {before[0]}")
        assert (count, dead) == (before[0] + 1, 0), (
            f"the owner's VACUUM vacuumed: vacuum_count {count}, n_dead_tup {dead}"
        )


def test_a_second_database_under_the_same_job_name_keeps_the_first_database(managed: Managed) -> None:
    """pg_cron before 1.6.3: the same role scheduling the same name again updates the schedule and
    command, not the database (the managed page: one job name per database)."""
    block = block_with(SCHEDULE, MANAGED)
    with managed.connect(dbname=CRON_DATABASE) as conn:
        conn.execute("CREATE DATABASE jive_money_eu")
        run_as_login(conn, block)
        run_as_login(conn, block, block.text.replace("'jive_money'", "'jive_money_eu'"))
        rows = conn.execute("SELECT database FROM cron.job WHERE jobname = 'cleanup-idempotency'").fetchall()
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'").fetchone()
    assert version == ("1.4-1",), f"the profile's pg_cron, 1.4.2 (its SQL version 1.4-1): {version}"
    assert rows == [("jive_money",)], f"one job, still in jive_money: {rows}"


def test_the_admin_rolls_back_after_unscheduling_in_postgres(managed: Managed, tmp_path: Path) -> None:
    apply_and_verify(managed, tmp_path)
    grant(managed)
    schedule(managed)
    refused = run_shell(managed.admin, managed.database, shell_with(GUIDE_ROLLBACK, GUIDE), folder(tmp_path, "guide"))
    assert refused.returncode != 0, "the guide's Rollback stops at 046.down while the job is there"
    assert "pg_cron runs in database postgres" in refused.stderr, refused.stderr
    with managed.connect() as conn:
        assert helpers.has_function(conn, "cleanup_expired_idempotency_records()"), "nothing was dropped"
    with managed.connect(dbname=CRON_DATABASE) as conn:
        run_as_login(conn, block_with(UNSCHEDULE, MANAGED))
        assert conn.execute("SELECT count(*) FROM cron.job").fetchone() == (0,), "both jobs are gone"
    done = run_shell(
        managed.admin, managed.database, shell_with(MANAGED_ROLLBACK, MANAGED), folder(tmp_path, "managed")
    )
    assert done.returncode == 0, f"the managed page's rollback succeeds\n{done.stderr}"
    with managed.connect() as conn:
        left = conn.execute(
            "SELECT to_regclass('idempotency_records'), to_regprocedure('cleanup_expired_idempotency_records()')"
        ).fetchone()
        assert left == (None, None), f"the table and the function are gone: {left}"


def wait_for(conn: psycopg.Connection, jobid: int) -> tuple[str, str | None]:
    """The first finished run of a job (status, return_message), as the superuser sees it."""
    runs = finished_runs(conn, jobid)
    if not runs:
        raise AssertionError(f"job {jobid} did not run within {FIRE_TIMEOUT:.0f} s")
    return runs[0]


def scheduled_every_minute(managed: Managed, snippet: str, documented: str, jobname: str) -> int:
    """The managed page's block with `snippet`, run as the admin in postgres with its documented
    schedule made every minute: the job's id."""
    block = block_with(snippet, MANAGED)
    assert documented in block.text, f"the documented schedule {documented}"
    with managed.connect(dbname=CRON_DATABASE) as conn:
        run_as_login(conn, block, block.text.replace(documented, "'* * * * *'"))
        row = conn.execute("SELECT jobid FROM cron.job WHERE jobname = %s", (jobname,)).fetchone()
    assert row is not None, f"the admin's job {jobname}"
    return int(row[0])


@pytest.mark.slow
def test_the_jobs_fire_in_the_application_database_as_the_admin(managed: Managed, tmp_path: Path) -> None:
    """The managed page's two jobs, every minute instead of hourly: the cleanup deletes the expired
    records as the admin; the vacuum, as the table's owner, vacuums. Beside them, the
    counter-examples of the old advice and the old alert: the same VACUUM as the application role
    is recorded as succeeded and vacuums nothing; a cleanup job whose role cannot log in fails with
    no start_time, which the old failed-runs alert (filtering on start_time) did not count."""
    apply_and_verify(managed, tmp_path)
    grant(managed)
    expired = [str(uuid.uuid4()) for _ in range(60)]
    live = [str(uuid.uuid4()) for _ in range(5)]
    with managed.connect() as conn:
        records.insert(
            conn, *(records.expired(k) for k in expired), *(records.live(k, lifetime=records.DAY) for k in live)
        )
        conn.execute("CREATE ROLE jive_gone LOGIN")
        before = statistics(conn)
    with managed.as_superuser(CRON_DATABASE) as su:
        # Counter-examples, for other roles (only a superuser may name the role). The one that
        # cannot connect is made inactive, its role loses LOGIN, then it is switched on.
        (app_vacuum,) = su.execute(
            "SELECT cron.schedule_in_database('vacuum-as-the-application', '* * * * *', "
            "'VACUUM (ANALYZE) idempotency_records', 'jive_money', 'jive_api_user')"
        ).fetchone()
        (cannot_connect,) = su.execute(
            "SELECT cron.schedule_in_database('cleanup-idempotency', '* * * * *', "
            "'SELECT cleanup_expired_idempotency_records()', 'jive_money', 'jive_gone', FALSE)"
        ).fetchone()
        su.execute("ALTER ROLE jive_gone NOLOGIN")
        su.execute("SELECT cron.alter_job(%s, active => TRUE)", (cannot_connect,))
    cleanup_job = scheduled_every_minute(managed, SCHEDULE, "'0 * * * *'", "cleanup-idempotency")
    with managed.as_superuser(CRON_DATABASE) as su:
        assert wait_for(su, cleanup_job)[0] == "succeeded"
        app_run = wait_for(su, app_vacuum)
        failed = wait_for(su, cannot_connect)
        no_start = su.execute(
            "SELECT start_time IS NULL AND end_time IS NULL FROM cron.job_run_details WHERE jobid = %s",
            (cannot_connect,),
        ).fetchone()
        old_alert = su.execute(OLD_FAILED_RUNS).fetchone()
        new_alert = su.execute(block_with(FAILED_RUNS, GUIDE).text).fetchone()
        su.execute("SELECT cron.unschedule(%s)", (app_vacuum,))
        su.execute("SELECT cron.unschedule(%s)", (cannot_connect,))
    assert failed == ("failed", "connection failed"), f"the run that could not connect: {failed}"
    assert no_start == (True,), "pg_cron 1.4.2 records it with no start_time and no end_time"
    assert old_alert == (0,), "the old alert, filtering on start_time, counts no failed run"
    assert new_alert is not None and new_alert[0] >= 1, f"the documented alert counts it: {new_alert}"
    assert app_run[0] == "succeeded", f"pg_cron records the application role's VACUUM as succeeded: {app_run}"
    with managed.connect() as conn:
        left = {str(row[0]) for row in conn.execute("SELECT request_id FROM idempotency_records")}
        assert left == set(live), "the admin's job deleted the expired records and kept the live ones"
        after_app = statistics(conn, f"n_dead_tup >= {len(expired)}")
        assert after_app[0] == before[0], f"the application role's VACUUM vacuumed nothing: {before} -> {after_app}"
    vacuum_job = scheduled_every_minute(managed, VACUUM_JOB, "'10 * * * *'", "vacuum-idempotency")
    with managed.as_superuser(CRON_DATABASE) as su:
        assert wait_for(su, vacuum_job)[0] == "succeeded"
    with managed.connect() as conn:
        count, dead = statistics(conn, f"vacuum_count > {before[0]}")
        assert (count, dead) == (before[0] + 1, 0), f"the admin's job vacuumed: vacuum_count {count}, n_dead_tup {dead}"
