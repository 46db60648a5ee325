"""Concurrent cleanups, and the cleanup against the application, never deadlock.

A DELETE that waits on row locks deadlocks as soon as two transactions take the same rows
in different orders. The expired rows here are written with mixed lifetimes, so their
physical order (a sequential scan's) differs from their expires_at order (an index scan's).
Each pair of the issue runs RUNS times, each run on a fresh database:

- a cleanup planned with a sequential scan against one planned with an index scan;
- a pooled session whose cached plan is an index scan (planned when about 1% had expired,
  random_page_cost = 1.1 set on the database) against a fresh session that plans a
  sequential scan, with no session setting at all;
- the cleanup against the batched recipe (Patterns, recipe 4);
- the cleanup against application transactions that claim two expired keys (recipe 1).

Every run asserts no session failed (a deadlock is SQLSTATE 40P01), and that once all have
finished no expired row is left: every expired row that nobody held was deleted. The
deadlocks seen are counted in the reliability figures (tests/figures.py).
"""

from __future__ import annotations

import dataclasses
import datetime
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import psycopg
import pytest
from psycopg import sql

from tests import figures
from tests.helpers import count, explain, plan_nodes
from tests.statements import BATCH_SIZE, CLAIM, CLEANUP_BATCH
from tooling import records
from tooling.records import DAY, HOUR, Record
from tooling.servers import Server

RUNS = 5
BIG = 200_000  # expired rows of the two-cleanup pairs: enough for two scans to overlap on 2 busy cores
SMALL = 5_000  # expired rows of the claim pair, where the interleaving is scripted
CLEANUP = "SELECT deleted_count FROM cleanup_expired_idempotency_records()"
# The statement whose plan decides the cleanup's scan order: EXPLAIN only, never run.
CLEANUP_SCAN = "DELETE FROM idempotency_records WHERE expires_at <= now()"
INDEX_SCAN_ONLY = ("SET enable_seqscan = off", "SET enable_bitmapscan = off")


def shuffled_expired(conn: psycopg.Connection, rows: int, expired_before: datetime.timedelta) -> None:
    """Expired rows whose physical order is random with respect to expires_at: they expired over
    the day before `expired_before` ago, in an order unrelated to the order they are stored in."""
    like = Record(created_at=-10 * DAY, expires_at=-expired_before)
    records.insert_many(conn, rows, like, spread=-DAY / rows, shuffled=True)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one session's work ended with: rows it deleted, or the SQLSTATE it failed with."""

    deleted: int = 0
    sqlstate: str | None = None


def run_guarded(work: Callable[[], int]) -> Outcome:
    try:
        return Outcome(deleted=work())
    except psycopg.Error as error:
        if error.sqlstate == "40P01":
            figures.add("deadlocks")
        return Outcome(sqlstate=error.sqlstate)


def cleanup(session: psycopg.Connection) -> int:
    row = session.execute(CLEANUP).fetchone()
    assert row is not None
    figures.add("operations")
    return int(row[0])


def batched(session: psycopg.Connection) -> int:
    """Recipe 4 as the application's scheduler runs it: batches in autocommit until a short one."""
    total = 0
    while True:
        deleted = session.execute(CLEANUP_BATCH).rowcount
        figures.add("operations")
        total += deleted
        if deleted < BATCH_SIZE:
            return total


def scan_of(session: psycopg.Connection) -> str:
    """'seq' or 'index': how this session plans the cleanup's scan of the expired rows now."""
    nodes = {node["Node Type"] for node in plan_nodes(explain(session, CLEANUP_SCAN))}
    if "Seq Scan" in nodes:
        return "seq"
    if "Index Scan" in nodes or "Index Only Scan" in nodes:
        return "index"
    return ", ".join(sorted(nodes))


def race(works: list[Callable[[], int]]) -> list[Outcome]:
    """Run every work in its own thread, released together on a barrier."""
    barrier = threading.Barrier(len(works), timeout=60)

    def released(work: Callable[[], int]) -> Outcome:
        barrier.wait()
        return run_guarded(work)

    with ThreadPoolExecutor(max_workers=len(works)) as pool:
        futures = [pool.submit(released, work) for work in works]
        return [future.result(timeout=600) for future in futures]


def assert_clean_finish(conn: psycopg.Connection, outcomes: list[Outcome], expired: int) -> None:
    failed = [outcome.sqlstate for outcome in outcomes if outcome.sqlstate is not None]
    assert failed == [], f"no session may fail (40P01 is a deadlock); SQLSTATEs: {failed}"
    deleted = sum(outcome.deleted for outcome in outcomes)
    assert deleted == expired, f"together the sessions deleted every expired row once: {deleted} of {expired}"
    left = count(conn, "expires_at <= now()")
    assert left == 0, f"no expired row is left once every session has finished, found {left}"
    figures.add("rows_checked", expired)


def session(pg_server: Server, database: str, *settings: str) -> psycopg.Connection:
    connection = pg_server.connect(database, autocommit=True)
    figures.add("sessions")
    for setting in settings:
        connection.execute(setting)
    return connection


def backlog(conn: psycopg.Connection) -> None:
    """BIG expired rows in shuffled order, analyzed."""
    shuffled_expired(conn, BIG, HOUR)
    conn.execute("ANALYZE idempotency_records")


@dataclasses.dataclass(frozen=True)
class Pair:
    """A cleanup on BIG expired rows, against a second session's work."""

    name: str
    work: Callable[[psycopg.Connection], int]  # the second session's work
    settings: tuple[str, ...] = ()  # the second session's settings
    scans: tuple[str, str] | None = None  # the scans the two sessions must plan, checked before the race

    def __str__(self) -> str:
        return self.name


BACKLOG_PAIRS = [
    Pair("seq-scan-cleanup-and-index-scan-cleanup", cleanup, INDEX_SCAN_ONLY, ("seq", "index")),
    Pair("cleanup-and-batched-recipe", batched),
]


@pytest.mark.slow
@pytest.mark.parametrize("run", range(1, RUNS + 1))
@pytest.mark.parametrize("pair", BACKLOG_PAIRS, ids=str)
def test_a_cleanup_and_a_second_cleanup_of_the_backlog_both_finish(
    pg_server: Server, database: str, conn: psycopg.Connection, pair: Pair, run: int
) -> None:
    backlog(conn)
    with session(pg_server, database) as first, session(pg_server, database, *pair.settings) as second:
        if pair.scans is not None:
            scans = (scan_of(first), scan_of(second))
            assert scans == pair.scans, "the two sessions scan in different orders"
        outcomes = race([lambda: cleanup(first), lambda: pair.work(second)])
    assert_clean_finish(conn, outcomes, BIG)


# The pooled session plans while most rows are still valid: 3,000 rows expiring over
# 2 to 3 seconds from now, 30 of them (1%) already expired. The expired backlog is
# added afterwards, without ANALYZE (which would invalidate the cached plan).
SOON_EXPIRED = 30
SOON_EXPIRING = sql.SQL(
    "CASE WHEN {row} <= {expired} THEN {now} - INTERVAL '1 hour' ELSE {soon} + random() * INTERVAL '1 second' END"
)


def wait_until_past(conn: psycopg.Connection, instant: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute("SELECT clock_timestamp() > %s", (instant,)).fetchone()
        if row == (True,):
            return
        time.sleep(0.1)
    raise AssertionError(f"the server's clock did not pass {instant} within {timeout:.0f} s")


@pytest.mark.slow
@pytest.mark.parametrize("run", range(1, RUNS + 1))
def test_a_cached_index_plan_and_a_fresh_seq_plan_both_finish(
    pg_server: Server, database: str, conn: psycopg.Connection, run: int
) -> None:
    conn.execute(sql.SQL("ALTER DATABASE {} SET random_page_cost = 1.1").format(sql.Identifier(database)))
    conn.execute("ALTER TABLE idempotency_records SET (autovacuum_enabled = off)")
    row = conn.execute("SELECT clock_timestamp() + INTERVAL '2 seconds'").fetchone()
    assert row is not None
    soon = row[0]
    expires_at = SOON_EXPIRING.format(
        row=records.ROW, expired=sql.Literal(SOON_EXPIRED), now=records.NOW, soon=sql.Literal(soon)
    )
    records.insert_many(conn, 3000, Record(created_at=-10 * DAY), expires_at=expires_at, shuffled=True)
    conn.execute("ANALYZE idempotency_records")
    with session(pg_server, database) as pooled:
        assert scan_of(pooled) == "index", "planned while 1% had expired, the pooled session uses the index"
        assert cleanup(pooled) == SOON_EXPIRED, "the pooled session's first cleanup plans and caches its statement"
        late = conn.execute("SELECT clock_timestamp() < %s", (soon,)).fetchone()
        assert late == (True,), "the pooled session planned before the soon-expiring rows expired"
        shuffled_expired(conn, BIG, HOUR)
        wait_until_past(conn, soon + datetime.timedelta(seconds=1))  # every soon-expiring row has expired
        with session(pg_server, database) as fresh:
            assert scan_of(fresh) == "seq", "a fresh session, planning now, scans the table sequentially"
            outcomes = race([lambda: cleanup(pooled), lambda: cleanup(fresh)])
    assert_clean_finish(conn, outcomes, BIG + 3000 - SOON_EXPIRED)


# The claim pair: an application transaction takes over two expired keys, FIRST then
# SECOND. SECOND is the expired row every cleanup plan reaches first (written first, with
# the earliest expiry), FIRST the one it reaches last (written last, latest expiry).
# The script: the transaction claims FIRST; the cleanup starts and goes through the rows;
# once it either waits on the transaction or has returned, the transaction claims SECOND.
# A cleanup that waits on row locks holds SECOND while it waits for FIRST: a deadlock.


def expired_at(conn: psycopg.Connection, key: uuid.UUID, ago: datetime.timedelta) -> None:
    records.insert(conn, Record(key, created_at=-10 * DAY, expires_at=-ago))


def blocked_or_done(observer: psycopg.Connection, pid: int, blocker: int, done: Future[Outcome]) -> None:
    """Wait until session `pid` waits on session `blocker`, or its work has returned."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if done.done():
            return
        row = observer.execute("SELECT %s = ANY(pg_blocking_pids(%s))", (blocker, pid)).fetchone()
        if row == (True,):
            return
        time.sleep(0.02)
    raise AssertionError(f"session {pid} neither waited on {blocker} nor finished within 60 s")


def claim(session: psycopg.Connection, key: uuid.UUID) -> list[tuple[uuid.UUID]]:
    rows = session.execute(CLAIM, {"request_id": key, "operation": "payment"}).fetchall()
    figures.add("operations")
    return rows


@pytest.mark.parametrize("run", range(1, RUNS + 1))
@pytest.mark.parametrize("plan", ["seq", "index"])
def test_the_cleanup_and_a_transaction_claiming_two_expired_keys_both_finish(
    pg_server: Server, database: str, conn: psycopg.Connection, plan: str, run: int
) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    expired_at(conn, second, 9 * DAY)
    shuffled_expired(conn, SMALL, 2 * HOUR)
    expired_at(conn, first, HOUR)
    conn.execute("ANALYZE idempotency_records")
    settings = INDEX_SCAN_ONLY if plan == "index" else ()
    with (
        session(pg_server, database) as app,
        session(pg_server, database, *settings) as cleaner,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        assert scan_of(cleaner) == plan, f"the cleanup session plans a {plan} scan"
        claims: list[list[tuple[uuid.UUID]]] = []
        app_outcome = Outcome()
        app.autocommit = False
        claims.append(claim(app, first))
        running = pool.submit(run_guarded, lambda: cleanup(cleaner))
        blocked_or_done(conn, cleaner.info.backend_pid, app.info.backend_pid, running)
        try:
            claims.append(claim(app, second))
            app.commit()
        except psycopg.Error as error:
            app.rollback()
            if error.sqlstate == "40P01":
                figures.add("deadlocks")
            app_outcome = Outcome(sqlstate=error.sqlstate)
        cleaner_outcome = running.result(timeout=60)
    failed = [outcome.sqlstate for outcome in (app_outcome, cleaner_outcome) if outcome.sqlstate]
    assert failed == [], f"neither the transaction nor the cleanup may fail (40P01 is a deadlock): {failed}"
    assert claims == [[(first,)], [(second,)]], "the transaction took over both expired keys"
    assert cleaner_outcome.deleted == SMALL + 1, "the cleanup deleted every expired row but the one held"
    assert count(conn, "expires_at <= now()") == 0, "no expired row is left"
    kept = conn.execute(
        "SELECT count(*) FROM idempotency_records WHERE request_id = ANY(%s) AND expires_at > now()", ([first, second],)
    ).fetchone()
    assert kept == (2,), "both claimed keys are stored, valid again"
    figures.add("rows_checked", SMALL + 2)
