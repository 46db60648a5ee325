"""No application statement waits on the verification script. While the script runs again and
again in full mode, application sessions store records that are already expired, save over them
(the report's upsert, which locks the row), delete them and run the cleanup: exactly the rows the
script's cleanup test would lock if it ran the cleanup in a snapshot that holds them. A protocol
client (047) meanwhile claims keys, takes expired leases over, completes and releases them, while
the script's own 047 tests claim and complete a key of their own. A monitor
polls pg_blocking_pids() of every application session and records each blocker's pid with the
pids of the script's sessions: the two sets never meet, every run passes, and the cleanup test
does run in some of them. One wait is not the script's: the relation extension lock, which any
session inserting takes for the moment it adds a page to the table (and releases then, not at the
end of its transaction), so two inserters may meet on it, the application's among themselves as
well as with the script's; a session waiting on it is left out."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import psycopg

from tests import verification
from tests.protocol_calls import claim, complete, expire, release
from tests.statements import REPORT_SAVE
from tooling import records
from tooling.records import save_params
from tooling.servers import Server

APP = "idempotency-app-under-test"
SCRIPT = "idempotency-verify-under-test"
RUNS = 25
DELETE = "DELETE FROM idempotency_records WHERE request_id = %s"
CLEANUP = "SELECT deleted_count FROM cleanup_expired_idempotency_records()"
OBSERVE = """
WITH waits AS (
    SELECT a.pid, blocker, a.wait_event_type, a.wait_event, left(a.query, 80) AS query
    FROM pg_stat_activity AS a
    CROSS JOIN LATERAL unnest(pg_blocking_pids(a.pid)) AS blocker
    WHERE a.application_name = %(app)s
)
SELECT
    ARRAY(SELECT a.pid FROM pg_stat_activity AS a WHERE a.application_name = %(script)s),
    ARRAY(SELECT DISTINCT blocker FROM waits WHERE wait_event IS DISTINCT FROM 'extend'),
    ARRAY(
        SELECT DISTINCT format('%%s waited on %%s (%%s %%s): %%s', pid, blocker, wait_event_type, wait_event, query)
        FROM waits
    )
"""


class Loop(threading.Thread):
    """Runs `step` on its own connection until stopped; keeps the first error."""

    def __init__(self, server: Server, dbname: str, name: str, step: Callable[[psycopg.Connection, int], None]) -> None:
        super().__init__(daemon=True)
        self.server, self.dbname, self.app_name, self.step = server, dbname, name, step
        self.stop = threading.Event()
        self.iterations = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.server.connect(self.dbname, autocommit=True, application_name=self.app_name) as conn:
                while not self.stop.is_set():
                    self.step(conn, self.iterations)
                    self.iterations += 1
        except BaseException as error:  # reported by the test
            self.error = error


def application(conn: psycopg.Connection, iteration: int) -> None:
    """A record stored already expired, saved over (locking it), deleted; now and then a cleanup."""
    key = uuid.uuid4()
    records.insert(conn, records.expired(key))
    conn.execute(REPORT_SAVE, save_params(key, "payment", '{"n": 1}', 201, 1))
    conn.execute(DELETE, (key,))
    if iteration % 10 == 0:
        conn.execute(CLEANUP)
    time.sleep(0.002)


def protocol_client(conn: psycopg.Connection, iteration: int) -> None:
    """A key claimed, its lease run out and taken over, then completed or released."""
    key = uuid.uuid4()
    claim(conn, key)
    expire(conn, key)
    token = claim(conn, key).token
    assert token is not None, "an expired lease is taken over"
    assert complete(conn, key, token) if iteration % 2 else release(conn, key, token)
    time.sleep(0.002)


class Monitor(Loop):
    def __init__(self, server: Server, dbname: str) -> None:
        super().__init__(server, dbname, "idempotency-monitor", self.observe)
        self.script_pids: set[int] = set()
        self.blockers: set[int] = set()
        self.waits: set[str] = set()  # what each wait was, for the failure message

    def observe(self, conn: psycopg.Connection, _: int) -> None:
        row = conn.execute(OBSERVE, {"script": SCRIPT, "app": APP}).fetchone()
        assert row is not None
        self.script_pids.update(row[0])
        self.blockers.update(row[1])
        self.waits.update(row[2])


def test_no_application_statement_waits_on_the_script(pg_server: Server, database: str) -> None:
    monitor = Monitor(pg_server, database)
    apps = [Loop(pg_server, database, APP, step) for step in (application, application, protocol_client)]
    for thread in (monitor, *apps):
        thread.start()
    runs = []
    try:
        while min(app.iterations for app in apps) < 5:  # the application is running
            time.sleep(0.01)
        for _ in range(RUNS):
            runs.append(verification.run_script(pg_server, database, env={"PGAPPNAME": SCRIPT}))
    finally:
        for thread in (*apps, monitor):
            thread.stop.set()
            thread.join(timeout=30)
    for thread in (monitor, *apps):
        assert thread.error is None, f"{thread.app_name} failed: {thread.error!r}"
    assert monitor.iterations > RUNS, "the monitor polled throughout"
    assert len(monitor.script_pids) > 0, "the monitor saw the script's sessions"
    assert monitor.script_pids.isdisjoint(monitor.blockers), (
        f"an application session waited on the script: blockers {monitor.blockers}, script {monitor.script_pids}; "
        f"waits seen: {sorted(monitor.waits)}"
    )
    for run in runs:
        verification.assert_passes(run)
    cleanup_ran = sum("report test 8" in " ".join(run.ran) for run in runs)
    assert cleanup_ran > 0, "the cleanup test must run in some of the runs for this to prove anything"
