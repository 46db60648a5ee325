"""Replicas and failover with pg_cron (the guide's "Replicas and failover"): a hot standby holds the
table, the function and pg_cron's jobs, answers the get, runs no cleanup (a read-only transaction:
SQLSTATE 25006) and no pg_cron scheduler; promoted, it starts the scheduler and runs the job it
holds. The standby is the server itself started again in recovery (standby.signal), with what it
held, as a replica has it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from tests import helpers
from tests.cron_runs import finished_runs
from tooling import records, servers

DBNAME = "jive_money"
LAUNCHER = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_cron launcher'"


@pytest.fixture
def standby() -> Iterator[servers.LocalServer]:
    """A pg_cron server whose job (every minute, in jive_money) was scheduled before it became a
    standby; its expired and live records with it."""
    missing = servers.pg_cron_missing()
    if missing is not None:
        pytest.skip(missing)
    with servers.pg_cron_local("idempotency-replica-", "postgres") as local:
        server = local.server()
        with server.connect(autocommit=True) as conn:
            conn.execute("CREATE DATABASE jive_money")
            assert conn.execute(LAUNCHER).fetchone() == (1,), "the primary runs pg_cron's scheduler"
        with server.connect(DBNAME, autocommit=True) as conn:
            helpers.apply_all(conn, helpers.UP_FILES)
            records.insert(conn, records.expired(str(uuid.uuid4())), records.live(lifetime=records.DAY))
        with server.connect(autocommit=True) as conn:
            conn.execute(
                "SELECT cron.schedule_in_database('cleanup-idempotency', '* * * * *', "
                "'SELECT cleanup_expired_idempotency_records()', 'jive_money')"
            )
        local.restart_as_standby()
        yield local


def launchers(server: servers.Server) -> int:
    with server.connect(autocommit=True) as conn:
        row = conn.execute(LAUNCHER).fetchone()
    assert row is not None
    return int(row[0])


def test_a_standby_runs_no_scheduler_and_no_cleanup_and_starts_both_once_promoted(
    standby: servers.LocalServer,
) -> None:
    server = standby.server()
    with server.connect(DBNAME, autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        assert conn.execute("SELECT count(*) FROM idempotency_records WHERE expires_at > now()").fetchone() == (1,)
        assert helpers.sqlstate_of(conn, "INSERT INTO idempotency_records DEFAULT VALUES") == "25006", "no write"
        state = helpers.sqlstate_of(conn, "SELECT deleted_count FROM cleanup_expired_idempotency_records()")
        assert state == "25006", f"a cleanup on a standby fails: read-only transaction, got {state}"
    with server.connect(autocommit=True) as conn:
        jobs = conn.execute("SELECT jobname, database, active FROM cron.job").fetchall()
    assert jobs == [("cleanup-idempotency", DBNAME, True)], f"the standby holds the job: {jobs}"
    assert launchers(server) == 0, "no pg_cron scheduler runs on a hot standby"
    with server.connect(autocommit=True) as conn:
        assert conn.execute("SELECT pg_promote()").fetchone() == (True,)
    deadline = time.monotonic() + 30
    while launchers(server) == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert launchers(server) == 1, "promoted, the server starts pg_cron's scheduler"


@pytest.mark.slow
def test_the_promoted_server_runs_the_job_it_holds(standby: servers.LocalServer) -> None:
    server = standby.server()
    with server.connect(autocommit=True) as conn:
        conn.execute("SELECT pg_promote()")
        row = conn.execute("SELECT jobid FROM cron.job WHERE jobname = 'cleanup-idempotency'").fetchone()
        assert row is not None
        runs = finished_runs(conn, row[0])
    assert runs and runs[0][0] == "succeeded", f"the job ran on the promoted server: {runs}"
    with server.connect(DBNAME, autocommit=True) as conn:
        assert helpers.count(conn, "expires_at <= now()") == 0, "and deleted the expired record"
        assert helpers.count(conn) == 1, "and kept the live one"
