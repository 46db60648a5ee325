"""Duplicate requests at the same moment, and cleanup racing the application.

Every session here is a real connection of its own (one per thread), and the
sessions that must collide are released together by a threading.Barrier once
all of them are connected. Everything runs under PostgreSQL's default READ
COMMITTED isolation, as the application does. An exception in any thread
(including any PostgreSQL error: a deadlock 40P01 or serialization failure 40001
would be one) is re-raised by the test through Future.result().
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pytest

from tests import figures
from tests.helpers import count
from tests.statements import REPORT_SAVE
from tooling import records
from tooling.records import DAY, save_params
from tooling.servers import Server

T = TypeVar("T")

SESSIONS = 32

# The report's save query (IdempotencyRepository::save), $5 = TTL in hours, with
# RETURNING added so each session learns whether it inserted or updated.
SAVE = REPORT_SAVE + "\nRETURNING (xmax = 0) AS inserted"

# The report's get, reading back the three values a writer saved: only records that have not expired.
READ_BACK = """
    SELECT operation, result_payload, status_code
    FROM idempotency_records
    WHERE request_id = %(request_id)s AND expires_at > now()
"""

# Insert-or-read, step 1: claim the key. Returns the row only to the session that inserted it.
INSERT_IF_ABSENT = """
    INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, expires_at)
    VALUES (%s, %s, %s, %s, now() + INTERVAL '24 hours')
    ON CONFLICT (request_id) DO NOTHING
    RETURNING operation, result_payload, status_code
"""

# Insert-or-read, step 2: a new statement, so under READ COMMITTED a new snapshot
# that sees the winner's row (ON CONFLICT DO NOTHING only gives up after the
# conflicting transaction has committed).
READ = """
    SELECT operation, result_payload, status_code
    FROM idempotency_records
    WHERE request_id = %s
"""

# The tempting one-statement form. All parts of a statement share one snapshot,
# taken when it starts: when the conflicting insert commits while this statement
# waits for it, the fallback SELECT cannot see that row and the result is empty.
CLAIM_OR_READ_ONE_STATEMENT = """
    WITH ins AS (
        INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, expires_at)
        VALUES (%(key)s, %(operation)s, %(payload)s, %(status)s, now() + INTERVAL '24 hours')
        ON CONFLICT (request_id) DO NOTHING
        RETURNING operation, result_payload, status_code
    )
    SELECT operation, result_payload, status_code FROM ins
    UNION ALL
    SELECT operation, result_payload, status_code
    FROM idempotency_records
    WHERE request_id = %(key)s AND NOT EXISTS (SELECT 1 FROM ins)
"""

# A one-statement form that does see it: DO UPDATE works on the latest committed
# version, not the snapshot. The price: every duplicate writes a new row version.
CLAIM_OR_READ_NO_OP_UPDATE = """
    INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, expires_at)
    VALUES (%(key)s, %(operation)s, %(payload)s, %(status)s, now() + INTERVAL '24 hours')
    ON CONFLICT (request_id) DO UPDATE SET request_id = idempotency_records.request_id
    RETURNING operation, result_payload, status_code
"""

Row = tuple[str, str, int]


def writer_values(index: int) -> Row:
    """A distinct, self-consistent record for writer `index`: a mix of two writers shows."""
    return (f"op-{index:02d}", json.dumps({"writer": index}), 200 + index)


def run_together(
    pg_server: Server,
    database: str,
    sessions: int,
    work: Callable[[psycopg.Connection, int], T],
    gate_key: uuid.UUID | None = None,
) -> list[T]:
    """Connect `sessions` sessions, release them at once on a barrier, return each one's result.

    With `gate_key`, a gate session first inserts that key and keeps its
    transaction open; the released sessions all block on it, and only when every
    one of them is seen waiting does the gate roll back. They are then all in
    flight on the same key at the same moment: the race is certain, not likely.
    """
    connections = [pg_server.connect(database, autocommit=True) for _ in range(sessions)]
    figures.add("sessions", sessions)
    barrier = threading.Barrier(sessions)

    def run(index: int) -> T:
        barrier.wait(timeout=30)
        return work(connections[index], index)

    try:
        with contextlib.ExitStack() as stack:
            gate = observer = None
            if gate_key is not None:
                gate = stack.enter_context(pg_server.connect(database))
                observer = stack.enter_context(pg_server.connect(database, autocommit=True))
                figures.add("sessions", 2)
                gate.execute(INSERT_IF_ABSENT, (gate_key, "gate", "{}", 0))
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=sessions))
            futures = [pool.submit(run, index) for index in range(sessions)]
            if gate is not None and observer is not None:
                pids = [connection.info.backend_pid for connection in connections]
                all_wait_on(observer, pids, gate.info.backend_pid)
                gate.rollback()
            return [future.result(timeout=120) for future in futures]
    finally:
        for connection in connections:
            connection.close()


# Sessions of `pids` that `blocker` blocks: exactly "waits on that session", not any
# lock wait (concurrent inserters also wait on each other's relation extension lock).
BLOCKED_BY = "SELECT count(*) FROM unnest(%(pids)s::int[]) AS p(pid) WHERE %(blocker)s = ANY(pg_blocking_pids(p.pid))"


def all_wait_on(observer: psycopg.Connection, pids: list[int], blocker: int, timeout: float = 30.0) -> None:
    """Wait until every backend in `pids` is blocked by the session `blocker`."""
    deadline = time.monotonic() + timeout
    waiting = 0
    while time.monotonic() < deadline:
        row = observer.execute(BLOCKED_BY, {"pids": pids, "blocker": blocker}).fetchone()
        waiting = row[0] if row is not None else 0
        if waiting == len(pids):
            return
        time.sleep(0.01)
    raise AssertionError(f"only {waiting} of {len(pids)} sessions were waiting on session {blocker} after {timeout} s")


def server_clock(conn: psycopg.Connection) -> datetime:
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]


def insert_or_read(conn: psycopg.Connection, key: uuid.UUID, values: Row, attempts: int = 5) -> tuple[bool, Row]:
    """Claim `key` with `values`, or read back whoever claimed it: (claimed, stored row).

    The read can find nothing only if the row was deleted between the two
    statements (cleanup of an expired record, a manual DELETE); then claiming
    again is right, hence the loop.
    """
    for _ in range(attempts):
        claimed = conn.execute(INSERT_IF_ABSENT, (key, *values)).fetchone()
        figures.add("operations")
        if claimed is not None:
            return True, claimed
        stored = conn.execute(READ, (key,)).fetchone()
        figures.add("operations")
        if stored is not None:
            return False, stored
    raise AssertionError(f"key {key}: neither claimed nor found after {attempts} attempts")


def test_32_sessions_upserting_one_key_leave_one_whole_row(
    pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    key = uuid.uuid4()
    started = server_clock(conn)

    def upsert(session: psycopg.Connection, index: int) -> bool:
        row = session.execute(SAVE, save_params(key, *writer_values(index), index + 1)).fetchone()
        figures.add("operations")
        assert row is not None
        return bool(row[0])

    inserted = run_together(pg_server, database, SESSIONS, upsert, gate_key=key)
    finished = server_clock(conn)

    assert inserted.count(True) == 1, f"exactly one session inserts and the others update; inserted: {inserted}"
    assert count(conn) == 1, "32 upserts of one request_id must leave exactly one row"
    row = conn.execute(
        "SELECT operation, result_payload, status_code, expires_at FROM idempotency_records WHERE request_id = %s",
        (key,),
    ).fetchone()
    assert row is not None
    operation, payload, status, expires_at = row
    writer = int(operation.removeprefix("op-"))
    assert (operation, payload, status) == writer_values(writer), (
        f"the final row must be writer {writer}'s record whole, got {(operation, payload, status)}"
    )
    ttl = timedelta(hours=writer + 1)
    assert started + ttl <= expires_at <= finished + ttl, (
        f"expires_at {expires_at} must be writer {writer}'s TTL ({ttl}) after a moment of the race"
    )
    figures.add("rows_checked")


def test_32_sessions_inserting_one_key_one_wins_and_the_others_read_its_result(
    pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    key = uuid.uuid4()
    outcomes = run_together(
        pg_server, database, SESSIONS, lambda session, i: insert_or_read(session, key, writer_values(i)), gate_key=key
    )

    winners = [index for index, (claimed, _) in enumerate(outcomes) if claimed]
    assert len(winners) == 1, f"exactly one session must claim the key, claimed by: {winners}"
    winner_row = writer_values(winners[0])
    for index, (claimed, row) in enumerate(outcomes):
        assert row == winner_row, f"session {index} (claimed={claimed}) must get the winner's result, got {row}"
    assert count(conn) == 1, "the key is stored once"
    figures.add("rows_checked")


def race_against_uncommitted_insert(
    pg_server: Server, database: str, work: Callable[[psycopg.Connection, uuid.UUID], T]
) -> T:
    """Session A inserts a key and keeps its transaction open; session B runs `work` for the
    same key, blocks on A's insert, and gets its result after A commits."""
    key = uuid.uuid4()
    first = writer_values(1)
    with (
        pg_server.connect(database, autocommit=True) as holder,
        pg_server.connect(database, autocommit=True) as waiter,
        pg_server.connect(database, autocommit=True) as observer,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        figures.add("sessions", 3)
        with holder.transaction():
            holder.execute(INSERT_IF_ABSENT, (key, *first))
            pending = pool.submit(work, waiter, key)
            all_wait_on(observer, [waiter.info.backend_pid], holder.info.backend_pid)
        result = pending.result(timeout=30)
        figures.add("operations", 2)
        assert observer.execute(READ, (key,)).fetchone() == first, "the first session's row is committed"
        return result


def one_statement(statement: str) -> Callable[[psycopg.Connection, uuid.UUID], list[Any]]:
    """A second writer's insert-or-read in one statement, for the same key."""

    def run(waiter: psycopg.Connection, key: uuid.UUID) -> list[Any]:
        params = {"key": key, "operation": "op-02", "payload": writer_values(2)[1], "status": 202}
        return waiter.execute(statement, params).fetchall()

    return run


def test_one_statement_insert_or_read_misses_a_row_committed_while_it_waited(pg_server: Server, database: str) -> None:
    """Why the application uses two statements: the CTE form can return nothing."""
    rows = race_against_uncommitted_insert(pg_server, database, one_statement(CLAIM_OR_READ_ONE_STATEMENT))
    assert rows == [], (
        "under READ COMMITTED the CTE's fallback SELECT uses the statement's snapshot, taken before the "
        f"conflicting insert committed, so it cannot see that row; got {rows}"
    )


def test_no_op_update_form_returns_the_row_committed_while_it_waited(pg_server: Server, database: str) -> None:
    rows = race_against_uncommitted_insert(pg_server, database, one_statement(CLAIM_OR_READ_NO_OP_UPDATE))
    assert rows == [writer_values(1)], f"ON CONFLICT DO UPDATE returns the latest committed row, got {rows}"


def test_two_statement_insert_or_read_returns_the_row_committed_while_it_waited(
    pg_server: Server, database: str
) -> None:
    claimed, row = race_against_uncommitted_insert(
        pg_server, database, lambda waiter, key: insert_or_read(waiter, key, writer_values(2))
    )
    assert not claimed, "the second session must not claim a key the first one holds"
    assert row == writer_values(1), f"the second session must read the first one's result, got {row}"


# --- cleanup racing the application ------------------------------------------------

WRITERS = 4
CLEANERS = 3
ROUNDS = 300  # per writer: a third expired inserts, a third live inserts, a third upsert + lookup


@dataclasses.dataclass
class Ledger:
    """Every key the writers committed, shared by writers and cleaners."""

    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    live: dict[uuid.UUID, Row] = dataclasses.field(default_factory=dict)
    expired: list[uuid.UUID] = dataclasses.field(default_factory=list)
    deleted_counts: list[int] = dataclasses.field(default_factory=list)
    lookups: int = 0
    finished_writers: int = 0
    writers_done: threading.Event = dataclasses.field(default_factory=threading.Event)


def write_and_look_up(session: psycopg.Connection, writer: int, ledger: Ledger) -> None:
    rng = random.Random(writer)
    own: list[uuid.UUID] = []
    for round_ in range(ROUNDS):
        step = round_ % 3
        if step == 0:
            key = uuid.uuid4()
            records.insert(session, records.expired(key, operation="expired", status_code=200))
            with ledger.lock:
                ledger.expired.append(key)
        elif step == 1:
            key = uuid.uuid4()
            values = (f"live-{writer}", json.dumps({"writer": writer, "round": round_}), 201)
            session.execute(SAVE, save_params(key, *values, 1))
            own.append(key)
            with ledger.lock:
                ledger.live[key] = values
        else:
            key = rng.choice(own)
            values = (f"live-{writer}", json.dumps({"writer": writer, "round": round_}), 200)
            session.execute(SAVE, save_params(key, *values, 1))
            with ledger.lock:
                ledger.live[key] = values
            found = session.execute(READ_BACK, {"request_id": key}).fetchone()
            assert found == values, f"writer {writer}: live key {key} must read back its last save, got {found}"
            with ledger.lock:
                ledger.lookups += 1
        figures.add("operations")


# Rows of the given keys that are still there and that no other transaction holds.
UNHELD = """
    SELECT count(*) FROM (
        SELECT 1 FROM idempotency_records WHERE request_id = ANY(%s) FOR UPDATE SKIP LOCKED
    ) AS unheld
"""


def clean_repeatedly(session: psycopg.Connection, cleaner: int, ledger: Ledger) -> None:
    while not ledger.writers_done.is_set():
        # Expired keys whose insert had committed before this cleanup began.
        with ledger.lock:
            due = list(ledger.expired)
        row = session.execute("SELECT deleted_count FROM cleanup_expired_idempotency_records()").fetchone()
        assert row is not None
        # The cleanup skips a row another cleanup holds; that one deletes it. So every such
        # row still there must still be held: one this session can lock was left behind.
        left = session.execute(UNHELD, (due,)).fetchone()
        assert left == (0,), f"cleaner {cleaner}: {left} rows expired before the cleanup began, held by nobody, remain"
        with ledger.lock:
            ledger.deleted_counts.append(int(row[0]))
        figures.add("operations", 2)


def test_cleanup_racing_writes_and_reads_loses_nothing_live_and_counts_exactly(
    pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    ledger = Ledger()

    def work(session: psycopg.Connection, index: int) -> None:
        try:
            if index < WRITERS:
                write_and_look_up(session, index, ledger)
            else:
                clean_repeatedly(session, index - WRITERS, ledger)
        except psycopg.Error as error:
            raise AssertionError(f"session {index} surfaced SQLSTATE {error.sqlstate}: {error}") from error

    def work_then_signal(session: psycopg.Connection, index: int) -> None:
        try:
            work(session, index)
        finally:
            if index < WRITERS:
                with ledger.lock:
                    ledger.finished_writers += 1
                    if ledger.finished_writers == WRITERS:
                        ledger.writers_done.set()

    run_together(pg_server, database, WRITERS + CLEANERS, work_then_signal)

    final = conn.execute("SELECT deleted_count FROM cleanup_expired_idempotency_records()").fetchone()
    assert final is not None
    ledger.deleted_counts.append(int(final[0]))

    assert count(conn, "expires_at <= now()") == 0, "after the last cleanup no expired row is left"
    assert sum(ledger.deleted_counts) == len(ledger.expired), (
        f"the cleanups reported {sum(ledger.deleted_counts)} deletions for {len(ledger.expired)} expired rows"
    )
    stored = {
        row[0]: tuple(row[1:])
        for row in conn.execute("SELECT request_id, operation, result_payload, status_code FROM idempotency_records")
    }
    lost = [key for key in ledger.live if key not in stored]
    figures.add("rows_checked", len(ledger.live))
    figures.add("rows_lost", len(lost))
    assert not lost, f"{len(lost)} live rows (expires_at > now()) were deleted"
    assert stored == ledger.live, "every live row holds its last save, and nothing else is left"
    assert len(ledger.deleted_counts) > CLEANERS, "the cleaners must have run repeatedly during the writes"
    assert ledger.lookups == WRITERS * (ROUNDS // 3), "every lookup of a live key found it"


# --- a long cleanup does not block the application --------------------------------

BULK_EXPIRED = 200_000
LIVE_KEYS = 500
APP_SESSIONS = 2


# Application sessions waiting on the cleanup: the cleanup's session among those that
# block them (pg_blocking_pids: holders of a lock they wait for, or queued ahead of
# them). Not every lock wait: concurrent inserters wait on each other's relation
# extension lock while the table grows, which has nothing to do with the cleanup.
WAITS_ON_CLEANUP = """
    SELECT a.pid, a.wait_event_type, a.wait_event, a.query
    FROM pg_stat_activity AS a
    WHERE a.pid = ANY(%(pids)s)
      AND %(cleanup)s = ANY(pg_blocking_pids(a.pid))
"""


@dataclasses.dataclass
class Window:
    """Application work done while the cleanup was running, and what the monitor saw."""

    open: threading.Event = dataclasses.field(default_factory=threading.Event)
    closed: threading.Event = dataclasses.field(default_factory=threading.Event)
    completions: int = 0
    samples_with_cleanup_active: int = 0
    waits_on_cleanup: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


def app_work(session: psycopg.Connection, live: list[uuid.UUID], window: Window, seed: int) -> None:
    """Look up a live key and store a new one, over and over, until the window closes."""
    rng = random.Random(seed)
    window.open.wait(timeout=60)
    while not window.closed.is_set():
        found = session.execute(READ_BACK, {"request_id": rng.choice(live)}).fetchone()
        assert found is not None, "a live key must be found while the cleanup runs"
        session.execute(SAVE, save_params(uuid.uuid4(), "live", "{}", 201, 1))
        with window.lock:
            if not window.closed.is_set():
                window.completions += 1
        figures.add("operations", 2)


def monitor(observer: psycopg.Connection, app_pids: list[int], cleanup_pid: int, window: Window) -> None:
    window.open.wait(timeout=60)
    while not window.closed.is_set():
        waits = observer.execute(WAITS_ON_CLEANUP, {"pids": app_pids, "cleanup": cleanup_pid}).fetchall()
        state = observer.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (cleanup_pid,)).fetchone()
        with window.lock:
            window.waits_on_cleanup.extend(waits)
            if state == ("active",) and not window.closed.is_set():
                window.samples_with_cleanup_active += 1
        time.sleep(0.005)


def waits(window: Window) -> str:
    """The waits the monitor saw, shortened for a failure message."""
    seen = sorted(
        {(pid, kind, event, " ".join(query.split())[:60]) for pid, kind, event, query in window.waits_on_cleanup}
    )
    return f"{len(window.waits_on_cleanup)} samples, e.g. {seen[:3]}"


def run_beside_cleanup(
    pg_server: Server, database: str, live: list[uuid.UUID], cleanup_pid: int, cleanup: Callable[[], None]
) -> Window:
    """Run `cleanup` (in session `cleanup_pid`) while APP_SESSIONS sessions work and a monitor samples locks."""
    window = Window()
    sessions = [pg_server.connect(database, autocommit=True) for _ in range(APP_SESSIONS + 1)]
    figures.add("sessions", len(sessions))
    *app_sessions, observer = sessions
    try:
        with ThreadPoolExecutor(max_workers=APP_SESSIONS + 1) as pool:
            pids = [session.info.backend_pid for session in app_sessions]
            futures = [pool.submit(app_work, session, live, window, seed) for seed, session in enumerate(app_sessions)]
            futures.append(pool.submit(monitor, observer, pids, cleanup_pid, window))
            window.open.set()
            try:
                cleanup()
            finally:
                window.closed.set()
            for future in futures:
                future.result(timeout=60)
    finally:
        for session in sessions:
            session.close()
    return window


@pytest.mark.slow
def test_long_cleanup_does_not_block_lookups_or_inserts_of_live_keys(pg_server: Server, database: str) -> None:
    with pg_server.connect(database, autocommit=True) as cleaner:
        figures.add("sessions")
        bulk = records.expired(operation="bulk", status_code=200, ago=DAY, lifetime=DAY)
        records.insert_many(cleaner, BULK_EXPIRED, bulk, spread=records.MILLISECOND)
        live = [uuid.uuid4() for _ in range(LIVE_KEYS)]
        with cleaner.cursor() as cursor:
            cursor.executemany(SAVE, [save_params(key, "live", "{}", 200, 24) for key in live])
        cleaner.execute("ANALYZE idempotency_records")

        # 1. The cleanup's DELETE is done but not committed: it holds a row lock
        #    on every expired row. The application keeps working and waits on none.
        def delete_and_hold() -> None:
            with cleaner.transaction(force_rollback=True):
                deleted = cleaner.execute("SELECT deleted_count FROM cleanup_expired_idempotency_records()").fetchone()
                assert deleted == (BULK_EXPIRED,), f"the cleanup deletes every expired row, got {deleted}"
                time.sleep(0.5)  # locks held; the application sessions keep going meanwhile

        held = run_beside_cleanup(pg_server, database, live, cleaner.info.backend_pid, delete_and_hold)
        assert held.completions > 0, "lookups and inserts must complete while the cleanup holds its row locks"
        assert held.waits_on_cleanup == [], f"no application session may wait on the cleanup: {waits(held)}"
        assert count(cleaner, "operation = 'bulk'") == BULK_EXPIRED, "the held cleanup was rolled back"

        # 2. The cleanup runs to completion while the application works.
        def delete() -> None:
            deleted = cleaner.execute("SELECT deleted_count FROM cleanup_expired_idempotency_records()").fetchone()
            assert deleted == (BULK_EXPIRED,), f"the cleanup deletes every expired row, got {deleted}"

        running = run_beside_cleanup(pg_server, database, live, cleaner.info.backend_pid, delete)
        figures.add("operations", 2)
        assert running.samples_with_cleanup_active > 0, "the monitor must have seen the cleanup statement running"
        assert running.completions > 0, "lookups and inserts must complete while the cleanup statement runs"
        assert running.waits_on_cleanup == [], f"no application session may wait on the cleanup: {waits(running)}"
        assert count(cleaner, "operation = 'bulk'") == 0, "the cleanup removed every expired row"
        live_left = cleaner.execute(
            "SELECT count(*) FROM idempotency_records WHERE request_id = ANY(%s)", (live,)
        ).fetchone()
        assert live_left == (LIVE_KEYS,), f"every live key survives the cleanup, found {live_left}"
        figures.add("rows_checked", LIVE_KEYS)
        print(
            f"long cleanup of {BULK_EXPIRED} rows: {held.completions} application round trips while its locks "
            f"were held, {running.completions} while it ran, {running.samples_with_cleanup_active} monitor samples "
            "saw it active, 0 waits on the cleanup"
        )
