"""The pg_cron schedule the docs give works on a real pg_cron: one job however often it is
scheduled, it really fires as the application role and deletes expired rows, the documented
unschedule removes it. 046.down removes it in every set-up or stops before dropping anything:
run by a superuser it removes the job whoever owns it (the application role, a superuser);
run by any other role (the job's own role, another role with USAGE on schema cron, a role
without it) it stops with a clear 42501, since such a role cannot see other roles' jobs;
where pg_cron is absent it just drops the function. The job set-ups are tests/fixtures/ files.

pg_cron is a preloaded library, so these tests start their own PostgreSQL 15 server (Debian's
postgresql-15 with postgresql-15-cron) with shared_preload_libraries = 'pg_cron' and
cron.database_name set to a database created here. The server is shared by the module; every test
starts from a clean state (no jobs, no run history, migrations freshly applied).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests import deployers, helpers
from tests.cron_runs import FIRE_TIMEOUT, finished_runs
from tests.docblocks import GUIDE, Block, block_with, pg_cron_blocks, prose, run_block
from tooling import records, servers

CRON_DATABASE = "idempotency_cron"
JOB = "cleanup-idempotency"


@pytest.fixture(scope="module")
def cron_server() -> Iterator[servers.Server]:
    missing = servers.pg_cron_missing()
    if missing is not None:
        pytest.skip(missing)
    with servers.pg_cron_server("idempotency-pg-cron-", CRON_DATABASE) as server:
        with server.connect(autocommit=True) as admin:
            # The database the managed-services page schedules its job in (cron.schedule_in_database).
            admin.execute("CREATE DATABASE jive_money")
        yield server


@pytest.fixture
def cron(cron_server: servers.Server) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the pg_cron database, reset to: no jobs, no history, migrated."""
    with cron_server.connect(CRON_DATABASE, autocommit=True) as conn:
        _reset(conn)
        try:
            yield conn
        finally:
            _reset(conn)


def _reset(conn: psycopg.Connection) -> None:
    conn.execute("SELECT cron.unschedule(jobid) FROM cron.job")
    conn.execute("DELETE FROM cron.job_run_details")
    helpers.apply_all(conn, helpers.DOWN_FILES)
    helpers.apply_all(conn, helpers.UP_FILES)


def documented(snippet: str) -> Block:
    """The one pg_cron block of the docs that contains `snippet`."""
    found = [block for block in pg_cron_blocks() if snippet in block.text]
    assert len(found) == 1, f"the docs have exactly one pg_cron block containing {snippet!r}, found {len(found)}"
    return found[0]


# The guide's unschedule (Option B), by jobid: the managed-services page has its own.
UNSCHEDULE = "SELECT cron.unschedule(jobid)\nFROM cron.job\nWHERE jobname = 'cleanup-idempotency';"


def _jobs(conn: psycopg.Connection, name: str = JOB) -> list[tuple[int, str, str]]:
    return conn.execute("SELECT jobid, schedule, command FROM cron.job WHERE jobname = %s", (name,)).fetchall()


@pytest.mark.slow
def test_the_documented_pg_cron_blocks_all_run(cron: psycopg.Connection) -> None:
    guide_role_and_grants(cron)
    blocks = pg_cron_blocks()
    ran = []
    for block in blocks:
        run_block(cron, block)
        ran.append(block)
    assert ran and ran == blocks, "every pg_cron block of the docs ran here, in document order"


def guide_role_and_grants(conn: psycopg.Connection) -> None:
    """The guide's application role and its grants ("Least privilege"), which the job runs with."""
    for snippet in ("CREATE ROLE jive_api_user LOGIN", "GRANT UPDATE (operation, result_payload"):
        run_block(conn, block_with(snippet, GUIDE))


def documented_grants(conn: psycopg.Connection) -> None:
    """The job's role and grants, then the block that lets it use pg_cron."""
    guide_role_and_grants(conn)
    run_block(conn, documented("GRANT USAGE ON SCHEMA cron"))


@pytest.mark.slow
def test_the_documented_schedule_creates_one_job_however_often_it_runs(cron: psycopg.Connection) -> None:
    documented_grants(cron)
    schedule = documented("cron.schedule(")
    run_block(cron, schedule)
    first = _jobs(cron)
    run_block(cron, schedule)
    again = _jobs(cron)
    assert len(first) == 1, f"scheduling creates one job named {JOB}, found {first}"
    assert again == first, f"scheduling again keeps the one job (same jobid), found {again}"
    assert first[0][1] == "0 * * * *", "the documented schedule is hourly, on the hour"
    guide = prose()
    assert "the job is updated (since pg_cron 1.3, which named jobs)" in guide, "not since 1.4, as it said"
    assert "cleanup_expired_idempotency_records()" in first[0][2], "the job calls the cleanup function"


@pytest.mark.slow
def test_the_documented_unschedule_removes_the_job(cron: psycopg.Connection) -> None:
    documented_grants(cron)
    run_block(cron, documented("cron.schedule("))
    unschedule = documented(UNSCHEDULE)
    run_block(cron, unschedule)
    assert _jobs(cron) == [], "after the documented unschedule no job is left"
    run_block(cron, unschedule)  # where the job is already gone it does nothing
    assert _jobs(cron) == []


@pytest.mark.slow
def test_046_down_unschedules_the_job_and_drops_the_function(cron: psycopg.Connection) -> None:
    documented_grants(cron)
    run_block(cron, documented("cron.schedule("))
    helpers.apply(cron, helpers.DOWN_046)
    assert _jobs(cron) == [], "046.down removes the cleanup-idempotency job"
    function = cron.execute("SELECT to_regprocedure('cleanup_expired_idempotency_records()')").fetchone()
    assert function == (None,), "046.down drops the function"


@pytest.mark.slow
def test_046_down_leaves_other_jobs_alone_and_runs_without_the_job(cron: psycopg.Connection) -> None:
    cron.execute("SELECT cron.schedule('some-other-job', '0 3 * * *', 'SELECT 1')")
    helpers.apply(cron, helpers.DOWN_046)
    helpers.apply(cron, helpers.DOWN_046)
    assert len(_jobs(cron, "some-other-job")) == 1, "046.down touches no job but cleanup-idempotency"


def test_046_down_runs_where_pg_cron_is_absent(conn: psycopg.Connection) -> None:
    absent = conn.execute("SELECT to_regclass('cron.job')").fetchone()
    assert absent == (None,), "the suite's databases have no pg_cron"
    helpers.apply(conn, helpers.DOWN_046)
    function = conn.execute("SELECT to_regprocedure('cleanup_expired_idempotency_records()')").fetchone()
    assert function == (None,), "046.down drops the function where pg_cron is absent"


def _seed_expired_and_live(conn: psycopg.Connection) -> tuple[list[str], list[str]]:
    expired = [str(uuid.uuid4()) for _ in range(3)]
    live = [str(uuid.uuid4()) for _ in range(2)]
    records.insert(
        conn, *(records.expired(key) for key in expired), *(records.live(key, lifetime=records.DAY) for key in live)
    )
    return expired, live


@pytest.mark.slow
def test_an_every_minute_job_fires_and_deletes_the_expired_rows(cron: psycopg.Connection) -> None:
    """Scheduled as the guide says: by the application role, with the grants Option B gives it."""
    expired, live = _seed_expired_and_live(cron)
    documented_grants(cron)
    cron.execute("SET ROLE jive_api_user")
    row = cron.execute(
        "SELECT cron.schedule(%s, '* * * * *', $$SELECT cleanup_expired_idempotency_records()$$)", (JOB,)
    ).fetchone()
    cron.execute("RESET ROLE")
    assert row is not None
    runs = finished_runs(cron, row[0])
    assert runs, f"the every-minute job ran within {FIRE_TIMEOUT:.0f} s (cron.job_run_details has no finished run)"
    assert runs[0][0] == "succeeded", f"the job's run succeeded, got {runs[0]}"
    left = {str(r[0]) for r in cron.execute("SELECT request_id FROM idempotency_records")}
    assert left == set(live), f"the job deleted the {len(expired)} expired rows and kept the live ones, left {left}"


@pytest.mark.slow
def test_in_a_repeatable_read_database_the_setting_the_hint_gives_lets_the_job_clean_up(
    cron: psycopg.Connection,
) -> None:
    """A database whose default isolation is REPEATABLE READ (set by an application): the job of
    a role without a setting of its own fails at once, its run saying why (SQLSTATE 25000:
    READ COMMITTED only); the job of the guide's role, given the setting the cleanup's HINT names
    (ALTER ROLE ... SET default_transaction_isolation = 'read committed'), deletes the expired
    rows: pg_cron's background worker applies the role's settings as a login does."""
    expired, live = _seed_expired_and_live(cron)
    documented_grants(cron)
    plain = psycopg.sql.Identifier(f"{APP}_login")
    database = psycopg.sql.Identifier(CRON_DATABASE)
    guide_role = psycopg.sql.Identifier("jive_api_user")
    cron.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN IN ROLE jive_api_user").format(plain))
    cron.execute(psycopg.sql.SQL("GRANT USAGE ON SCHEMA cron TO {}").format(plain))
    cron.execute(
        psycopg.sql.SQL("ALTER DATABASE {} SET default_transaction_isolation = 'repeatable read'").format(database)
    )
    setting = psycopg.sql.SQL("ALTER ROLE {} IN DATABASE {} SET default_transaction_isolation = 'read committed'")
    cron.execute(setting.format(guide_role, database))
    try:
        jobs = {}
        for role in (guide_role, plain):
            cron.execute(psycopg.sql.SQL("SET ROLE {}").format(role))
            row = cron.execute(
                "SELECT cron.schedule(%s, '* * * * *', $$SELECT cleanup_expired_idempotency_records()$$)", (JOB,)
            ).fetchone()
            cron.execute("RESET ROLE")
            assert row is not None
            jobs[role.as_string(cron)] = row[0]
        runs = {role: finished_runs(cron, jobid) for role, jobid in jobs.items()}
    finally:
        cron.execute("RESET ROLE")
        cron.execute("SELECT cron.unschedule(jobid) FROM cron.job")
        cron.execute(psycopg.sql.SQL("ALTER DATABASE {} RESET default_transaction_isolation").format(database))
        reset = psycopg.sql.SQL("ALTER ROLE {} IN DATABASE {} RESET default_transaction_isolation")
        cron.execute(reset.format(guide_role, database))
        cron.execute(psycopg.sql.SQL("DROP OWNED BY {}").format(plain))
        cron.execute(psycopg.sql.SQL("DROP ROLE {}").format(plain))
    without, with_setting = runs[plain.as_string(cron)], runs[guide_role.as_string(cron)]
    assert without and without[0][0] == "failed", f"without the setting the job fails: {without}"
    assert "runs only under READ COMMITTED" in (without[0][1] or ""), without
    assert with_setting and with_setting[0][0] == "succeeded", f"with the setting the job succeeds: {with_setting}"
    left = {str(r[0]) for r in cron.execute("SELECT request_id FROM idempotency_records")}
    assert left == set(live), f"the job deleted the {len(expired)} expired rows, left {left}"


# 046.down in every set-up: who runs it (a superuser, the job's role, another role with
# USAGE on schema cron, a role without it) against who owns the job (the application
# role, as the guide schedules it; a superuser; nobody). The states are fixture files.
FIXTURES = helpers.FIXTURES
APP, OTHER, NO_CRON = "idempotency_cron_app", "idempotency_cron_other", "idempotency_cron_no_cron"
OWNERS = {
    "owned by the application role": "pg_cron_job_owned_by_the_application_role",
    "owned by a superuser": "pg_cron_job_owned_by_a_superuser",
    "no job": None,
}


def load(conn: psycopg.Connection, state: str) -> None:
    conn.execute(helpers.fixture_sql(FIXTURES / f"{state}.sql"))


def with_job(conn: psycopg.Connection, owner: str) -> list[tuple[int, str, str]]:
    load(conn, "pg_cron_roles")
    state = OWNERS[owner]
    if state is not None:
        load(conn, state)
    return _jobs(conn)


def function_exists(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regprocedure('cleanup_expired_idempotency_records()')").fetchone() != (None,)


def down_as(conn: psycopg.Connection, role: str) -> psycopg.Error | None:
    """Apply 046.down in one transaction as `role`; the error it stopped with, if any."""
    conn.execute(psycopg.sql.SQL("SET ROLE {}").format(psycopg.sql.Identifier(role)))
    try:
        helpers.apply(conn, helpers.DOWN_046)
    except psycopg.Error as error:
        return error
    finally:
        conn.execute("RESET ROLE")
    return None


@pytest.mark.parametrize("owner", OWNERS)
def test_046_down_as_a_superuser_removes_the_job_whoever_owns_it(cron: psycopg.Connection, owner: str) -> None:
    before = with_job(cron, owner)
    assert len(before) == (0 if OWNERS[owner] is None else 1), f"set-up: {owner}"
    helpers.apply(cron, helpers.DOWN_046)
    assert _jobs(cron) == [], f"{owner}: 046.down as a superuser leaves no cleanup-idempotency job"
    assert not function_exists(cron), f"{owner}: 046.down drops the function"
    helpers.apply(cron, helpers.DOWN_046)  # and runs again without harm


@pytest.mark.parametrize("owner", OWNERS)
@pytest.mark.parametrize("caller", [APP, OTHER, NO_CRON])
def test_046_down_as_another_role_stops_before_dropping_anything(
    cron: psycopg.Connection, caller: str, owner: str
) -> None:
    before = with_job(cron, owner)
    # The caller owns the function, so nothing but the job check can stop the drop.
    cron.execute(
        psycopg.sql.SQL("ALTER FUNCTION cleanup_expired_idempotency_records() OWNER TO {}").format(
            psycopg.sql.Identifier(caller)
        )
    )
    error = down_as(cron, caller)
    assert error is not None, f"{caller}, job {owner}: 046.down must stop, it cannot see every role's jobs"
    assert error.sqlstate == "42501", f"{caller}, job {owner}: SQLSTATE 42501, got {error.sqlstate}: {error}"
    message, detail, hint = error.diag.message_primary, error.diag.message_detail, error.diag.message_hint
    assert message and "pg_cron job cleanup-idempotency" in message and caller in message, message
    assert hint and "superuser" in hint and "nothing was dropped" in hint, f"the hint says who must run it: {hint}"
    assert detail and "found:" in detail and "expected: a superuser" in detail, detail
    if caller == APP and OWNERS[owner] == "pg_cron_job_owned_by_the_application_role":
        assert f"jobid {before[0][0]}) owned by {APP}" in detail, f"the job's role is told its job: {detail}"
    elif caller != NO_CRON:
        # A role that sees no job of its own is told so (it read "(jobid ) owned by ;" before).
        assert f"found: no job of role {caller}, jobs of other roles unknown;" in detail, detail
    assert function_exists(cron), f"{caller}, job {owner}: the function is not dropped"
    assert _jobs(cron) == before, f"{caller}, job {owner}: the job is untouched"


@pytest.mark.parametrize("form", ["psql -f", "psql < file"])
def test_046_down_refused_under_plain_psql_drops_nothing_after_the_refusal(
    cron_server: servers.Server, cron: psycopg.Connection, form: str
) -> None:
    """Run by another role with plain psql (no ON_ERROR_STOP, no -1), 046.down's refusal stops
    its last statement too: the function and the job stay, and no line after the error claims
    a success (tests/deploy/test_plain_psql_guards.py does the same for every other refused state)."""
    before = with_job(cron, "owned by the application role")
    owner = psycopg.sql.SQL("ALTER FUNCTION cleanup_expired_idempotency_records() OWNER TO {}")
    cron.execute(owner.format(psycopg.sql.Identifier(APP)))
    path = helpers.DOWN_046
    if form == "psql -f":
        run = deployers.run_psql(cron_server, CRON_DATABASE, deployers.PLAIN, "-c", f"SET ROLE {APP}", "-f", str(path))
    else:
        script = f"SET ROLE {APP};\n{path.read_text()}"
        run = deployers.run_psql(cron_server, CRON_DATABASE, deployers.PLAIN, stdin=script)
    assert run.sqlstates[:1] == ["42501"], f"{form}: 046.down stops as {APP}\n{run.output}"
    claims = deployers.claims_of_success(run.after_first_error())
    assert claims == [], f"{form}: after the refusal psql printed {claims}\n{run.output}"
    assert function_exists(cron), f"{form}: the function is not dropped"
    assert _jobs(cron) == before, f"{form}: the job is untouched"


@pytest.mark.parametrize("caller", [APP, NO_CRON])
def test_046_down_as_another_role_with_the_jobs_checked_removes_its_own_job_and_drops(
    cron: psycopg.Connection, caller: str
) -> None:
    """Without a superuser: the deployer states no other role's job calls the function
    (idempotency.cron_jobs_checked = on); the role removes its own job and drops it."""
    before = with_job(cron, "owned by the application role")
    cron.execute(
        psycopg.sql.SQL("ALTER FUNCTION cleanup_expired_idempotency_records() OWNER TO {}").format(
            psycopg.sql.Identifier(caller)
        )
    )
    cron.execute("SET idempotency.cron_jobs_checked = on")
    try:
        error = down_as(cron, caller)
    finally:
        cron.execute("RESET idempotency.cron_jobs_checked")
    assert error is None, f"{caller} with the jobs checked: 046.down must succeed, got {error}"
    assert not function_exists(cron), f"{caller} with the jobs checked: the function is dropped"
    # Its own job goes; another role's job it cannot see stays: that is what the setting vouches for.
    expected = [] if caller == APP else before
    assert _jobs(cron) == expected, f"{caller}: jobs left {_jobs(cron)}, expected {expected}"


def test_046_down_as_the_jobs_role_runs_where_the_function_is_already_gone(cron: psycopg.Connection) -> None:
    with_job(cron, "no job")
    helpers.apply(cron, helpers.DOWN_046)
    assert down_as(cron, NO_CRON) is None, "a second run, by any role, finds nothing to protect and succeeds"


def test_046_down_stops_at_a_job_of_another_name_that_calls_the_function(cron: psycopg.Connection) -> None:
    row = cron.execute(
        "SELECT cron.schedule('nightly-idempotency', '0 3 * * *', $$SELECT cleanup_expired_idempotency_records()$$)"
    ).fetchone()
    assert row is not None
    with pytest.raises(psycopg.errors.DependentObjectsStillExist) as raised:
        helpers.apply(cron, helpers.DOWN_046)
    assert f"nightly-idempotency (jobid {row[0]})" in str(raised.value), str(raised.value)
    assert function_exists(cron), "the function is not dropped while a job calls it"


def test_a_superuser_removes_another_roles_job_by_its_jobid_not_by_its_name(cron: psycopg.Connection) -> None:
    """The guide said a superuser removes any role's job "the same way" as the role: by name it
    cannot, cron.unschedule(name) looks only at the caller's own jobs; the documented block,
    by jobid, removes it."""
    before = with_job(cron, "owned by the application role")
    assert len(before) == 1
    by_name = helpers.sqlstate_of(cron, "SELECT cron.unschedule('cleanup-idempotency')")
    assert by_name is not None, "by name, a superuser finds no job of its own and fails"
    assert _jobs(cron) == before, "the application role's job is still there"
    run_block(cron, dataclasses.replace(documented(UNSCHEDULE), role=None))
    assert _jobs(cron) == [], "by jobid, the documented block removes it as a superuser"
    text = prose()
    assert "a superuser can remove any role's job the same way" not in text
    assert "`cron.unschedule('cleanup-idempotency')`, by name, looks only at the caller's own jobs" in text


def test_scheduling_without_usage_on_schema_cron_is_refused(cron: psycopg.Connection) -> None:
    with_job(cron, "no job")
    cron.execute(psycopg.sql.SQL("SET ROLE {}").format(psycopg.sql.Identifier(NO_CRON)))
    try:
        state = helpers.sqlstate_of(cron, "SELECT cron.schedule('cleanup-idempotency', '0 * * * *', 'SELECT 1')")
    finally:
        cron.execute("RESET ROLE")
    assert state == "42501", f"cron.schedule needs USAGE on schema cron; got SQLSTATE {state}"


def test_the_same_name_scheduled_by_a_second_role_is_a_second_job(cron: psycopg.Connection) -> None:
    with_job(cron, "owned by the application role")
    load(cron, "pg_cron_job_owned_by_a_superuser")
    owners = sorted(row[0] for row in cron.execute("SELECT username FROM cron.job WHERE jobname = %s", (JOB,)))
    assert len(owners) == 2 and APP in owners, f"job names are unique per role: two jobs, owners {owners}"
    helpers.apply(cron, helpers.DOWN_046)
    assert _jobs(cron) == [], "046.down as a superuser removes both"
