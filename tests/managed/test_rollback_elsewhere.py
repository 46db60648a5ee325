"""046.down where pg_cron is loaded but installed in another database (cron.database_name =
'postgres', a managed service's set-up): a job scheduled there with cron.schedule_in_database runs
in the application's database, where 046.down cannot see it. It never silently leaves that job
calling a dropped function:

- run by the admin (pg_monitor, so it reads cron.database_name) or by a superuser, it stops before
  dropping anything, SQLSTATE 55000, naming the database and the statement that removes the job;
- run by a role that cannot read the setting, it stops with 42501, saying it cannot tell;
- with idempotency.cron_jobs_checked = on (once the job is gone) it drops the function;
- where the function is already gone it succeeds.

The previous 046.down exited 0 in the first case, dropped the function and left the job.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from tests import helpers
from tests.docblocks import MANAGED, block_with
from tests.managed_service import ADMIN, CRON_DATABASE, UNSCHEDULE, Managed, run_as_login

CHECKED = "SET idempotency.cron_jobs_checked = on"
FUNCTION = "cleanup_expired_idempotency_records()"


def installed_and_scheduled(managed: Managed) -> int:
    """As the admin: 045 and 046 in the application's database, the managed page's job in postgres."""
    managed.install()
    return managed.schedule_cleanup()


def deployer_owns_the_function(managed: Managed, create_role: str) -> None:
    """Installed and scheduled; the deploy role jive_deployer, made by the admin with `create_role`,
    owns the function (a state the superuser sets up) and gets a password."""
    installed_and_scheduled(managed)
    with managed.connect() as conn:
        conn.execute(create_role)
    with managed.as_superuser() as conn:
        conn.execute("ALTER FUNCTION cleanup_expired_idempotency_records() OWNER TO jive_deployer")
    managed.login("jive_deployer")


def down(conn: psycopg.Connection, *settings: str) -> psycopg.Error | None:
    """046.down in one transaction on `conn`; the error it stopped with, if any."""
    try:
        with conn.transaction():
            for setting in settings:
                conn.execute(setting.replace("SET ", "SET LOCAL ", 1))
            conn.execute(helpers.DOWN_046.read_text())
    except psycopg.Error as error:
        return error
    return None


def jobs(managed: Managed) -> list[tuple[int, str]]:
    with managed.as_superuser(CRON_DATABASE) as conn:
        return conn.execute("SELECT jobid, username FROM cron.job WHERE database = 'jive_money'").fetchall()


def printed_error() -> list[str]:
    """The error the managed page prints for it, line by line."""
    text = MANAGED.read_text().split("## Unschedule and roll back", 1)[1]
    block = text.split("```text\n", 1)[1].split("```", 1)[0]
    return block.splitlines()


def assert_stops_naming_postgres(error: psycopg.Error | None, who: str) -> None:
    assert error is not None, f"{who}: 046.down must stop while a job in postgres may call the function"
    assert error.sqlstate == "55000", f"{who}: SQLSTATE 55000, got {error.sqlstate}: {error}"
    message, detail, hint = error.diag.message_primary, error.diag.message_detail, error.diag.message_hint
    assert message == "pg_cron runs in database postgres: its jobs are not visible from database jive_money", message
    assert detail and detail.startswith("found: cron.database_name = postgres; expected: jive_money"), detail
    statement = (
        "SELECT cron.unschedule(jobid) FROM cron.job WHERE database = 'jive_money' AND command LIKE "
        "'%cleanup_expired_idempotency_records%'"
    )
    assert hint and hint.startswith("Nothing was dropped. In database postgres") and statement in hint, hint
    assert "idempotency.cron_jobs_checked=on" in hint, hint
    assert printed_error() == [f"ERROR:  {message}", f"DETAIL:  {detail}", f"HINT:  {hint}"], (
        "the managed page prints the error as it is"
    )


@pytest.mark.parametrize("who", ["the admin", "a superuser"])
def test_046_down_stops_while_pg_cron_runs_in_another_database_then_goes_on_once_checked(
    managed: Managed, who: str
) -> None:
    jobid = installed_and_scheduled(managed)
    connect = managed.connect if who == "the admin" else managed.as_superuser
    with connect() as conn:
        assert_stops_naming_postgres(down(conn), who)
        assert helpers.has_function(conn, FUNCTION), f"{who}: the function is not dropped"
    assert jobs(managed) == [(jobid, ADMIN)], "the job is untouched"
    # What the hint says, in postgres, as the job's role: the managed page's block.
    with managed.connect(dbname=CRON_DATABASE) as conn:
        run_as_login(conn, block_with(UNSCHEDULE, MANAGED))
    assert jobs(managed) == [], "the documented unschedule removed the job"
    with connect() as conn:
        assert down(conn) is not None, f"{who}: without the setting it still stops (it cannot see the job is gone)"
        assert down(conn, CHECKED) is None, f"{who}: with idempotency.cron_jobs_checked = on it goes on"
        assert not helpers.has_function(conn, FUNCTION), f"{who}: the function is dropped"
        assert down(conn) is None, f"{who}: run again, with the function gone, it succeeds"


def test_a_role_that_cannot_read_cron_database_name_is_refused_and_told_why(managed: Managed) -> None:
    """A deploy role without pg_read_all_settings (no pg_monitor) owning the function: pg_cron is
    loaded (the setting exists, but it may not read it), its database unknown. Refused, not warned."""
    deployer_owns_the_function(managed, "CREATE ROLE jive_deployer LOGIN")
    with managed.connect("jive_deployer") as conn:
        unreadable = helpers.sqlstate_of(conn, "SELECT current_setting('cron.database_name', TRUE)")
        assert unreadable == "42501", "the role cannot read cron.database_name"
        error = down(conn)
        assert error is not None and error.sqlstate == "42501", f"refused with 42501, got {error}"
        assert error.diag.message_primary == "cannot tell in which database pg_cron runs, as role jive_deployer"
        assert "cron.database_name unreadable" in (error.diag.message_detail or ""), error.diag.message_detail
        assert "pg_read_all_settings" in (error.diag.message_detail or "")
        assert (error.diag.message_hint or "").startswith("Nothing was dropped."), error.diag.message_hint
        assert helpers.has_function(conn, FUNCTION)
        assert down(conn, CHECKED) is None, "with the setting (once the job is gone) it drops the function"
        assert not helpers.has_function(conn, FUNCTION)


def test_a_member_of_pg_read_all_settings_alone_is_told_the_database(managed: Managed) -> None:
    """pg_read_all_settings, without the rest of pg_monitor, is what reading the setting takes."""
    deployer_owns_the_function(managed, "CREATE ROLE jive_deployer LOGIN IN ROLE pg_read_all_settings")
    with managed.connect("jive_deployer") as conn:
        assert_stops_naming_postgres(down(conn), "a member of pg_read_all_settings")


def test_without_the_function_no_job_can_be_left_calling_it(managed: Managed) -> None:
    installed_and_scheduled(managed)
    with managed.as_superuser() as conn:
        conn.execute("DROP FUNCTION cleanup_expired_idempotency_records()")
    with managed.connect() as conn:
        assert down(conn) is None, "nothing to protect: 046.down succeeds"


def test_plain_psql_stops_the_rest_of_the_rollback(managed: Managed) -> None:
    """The guide's Rollback run the way many pipelines run files, psql -f without -1 and
    ON_ERROR_STOP: 046.down's refusal stops 045.down in the same session too, so the table
    stays with the function that the job calls."""
    installed_and_scheduled(managed)
    script = helpers.DOWN_046.read_text() + helpers.DOWN_045.read_text()
    run = helpers.psql(managed.admin, managed.database, "-v", "VERBOSITY=verbose", stdin=script)
    assert run.returncode == 0, "plain psql exits 0 whatever failed"
    assert "ERROR:  55000: pg_cron runs in database postgres" in run.stderr, run.stderr
    with managed.connect() as conn:
        assert helpers.has_function(conn, FUNCTION), "the function stays"
        assert helpers.has_table(conn, "idempotency_records"), (
            "and so does the table: 045.down ran nothing after the refusal"
        )


def test_a_job_scheduled_in_postgres_runs_in_the_application_database(managed: Managed) -> None:
    """What makes the stop necessary: the job lives in postgres, names jive_money, runs as the admin."""
    installed_and_scheduled(managed)
    with managed.as_superuser(CRON_DATABASE) as conn:
        row = conn.execute(
            "SELECT database, username, command FROM cron.job WHERE jobname = 'cleanup-idempotency'"
        ).fetchone()
    assert row == ("jive_money", ADMIN, "SELECT cleanup_expired_idempotency_records()"), row
    with managed.connect() as conn:
        assert conn.execute("SELECT to_regclass('cron.job')").fetchone() == (None,), "no cron.job here"
        name = conn.execute(sql.SQL("SELECT current_setting('cron.database_name')")).fetchone()
        assert name == (CRON_DATABASE,), "the admin (pg_monitor) reads where pg_cron runs"
