"""Faults: a server crash, a migration session killed mid-file, statement and lock timeouts.

Each test injects one fault and proves what survives it: every committed row,
whole; a database the migrations can still complete or remove; a cleanup that is
cancelled cleanly, deletes nothing, and completes when run again.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests import figures, helpers
from tests.statements import REPORT_SAVE
from tooling import records
from tooling.records import DAY, MILLISECOND, save_params
from tooling.servers import FAST_SETTINGS, LocalServer, Server, throwaway_datadir

CLEANUP = "SELECT deleted_count FROM cleanup_expired_idempotency_records()"


def bulk_expired(conn: psycopg.Connection, rows: int) -> None:
    """Records that expired about a day ago, a millisecond apart."""
    like = records.expired(operation="expired", status_code=200, ago=DAY, lifetime=DAY)
    records.insert_many(conn, rows, like, spread=MILLISECOND)


Row = tuple[str, str, int]


def faults_survived(amount: int = 1) -> None:
    """Count faults survived; each one was counted as injected where it was injected."""
    figures.add("faults_survived", amount)


# --- a server crash right after saves commit ---------------------------------------

CRASH_WRITERS = 4
ACKNOWLEDGED_BEFORE_CRASH = 400


@dataclasses.dataclass
class Saves:
    """What the writers attempted and what the server acknowledged (commit returned)."""

    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    attempted: dict[uuid.UUID, Row] = dataclasses.field(default_factory=dict)
    acknowledged: dict[uuid.UUID, Row] = dataclasses.field(default_factory=dict)
    pairs: list[tuple[uuid.UUID, uuid.UUID]] = dataclasses.field(default_factory=list)
    crashed: threading.Event = dataclasses.field(default_factory=threading.Event)


def save_pairs_until_crash(server: Server, writer: int, saves: Saves) -> None:
    """Save two records per transaction, forever; the crash ends it."""
    with server.connect() as session:
        figures.add("sessions")
        for n in range(1_000_000):
            first, second = uuid.uuid4(), uuid.uuid4()
            rows = {
                first: (f"crash-{writer}", f'{{"writer": {writer}, "n": {n}, "half": 1}}', 200 + writer),
                second: (f"crash-{writer}", f'{{"writer": {writer}, "n": {n}, "half": 2}}', 300 + writer),
            }
            with saves.lock:
                saves.attempted.update(rows)
                saves.pairs.append((first, second))
            try:
                with session.transaction():
                    for key, values in rows.items():
                        session.execute(REPORT_SAVE, save_params(key, *values))
            except psycopg.OperationalError:
                if saves.crashed.is_set():
                    return
                raise
            figures.add("operations")
            with saves.lock:
                saves.acknowledged.update(rows)


def test_every_committed_save_survives_a_server_crash_whole() -> None:
    datadir = throwaway_datadir("idempotency-crash-")
    local = LocalServer(datadir)
    try:
        # fsync=off (FAST_SETTINGS) does not weaken this test: `pg_ctl stop -m immediate`
        # kills the server processes, not the operating system, and a commit with
        # synchronous_commit=on returns only after its WAL was written to the kernel,
        # which keeps it in the page cache for the restarted server's recovery to replay.
        # fsync matters for power loss, which this test does not simulate.
        local.initdb({**FAST_SETTINGS, "synchronous_commit": "on"})
        local.start()
        server = local.server()
        with server.connect(autocommit=True) as setup:
            helpers.apply_all(setup, helpers.UP_FILES)
        saves = Saves()
        with ThreadPoolExecutor(max_workers=CRASH_WRITERS) as pool:
            futures = [pool.submit(save_pairs_until_crash, server, writer, saves) for writer in range(CRASH_WRITERS)]
            deadline = time.monotonic() + 60
            while len(saves.acknowledged) < ACKNOWLEDGED_BEFORE_CRASH and time.monotonic() < deadline:
                if any(future.done() for future in futures):
                    break
                time.sleep(0.005)
            saves.crashed.set()
            local.stop("immediate")
            figures.add("faults_injected")
            for future in futures:
                future.result(timeout=60)
        with saves.lock:
            acknowledged = dict(saves.acknowledged)
        assert len(acknowledged) >= ACKNOWLEDGED_BEFORE_CRASH, "the writers must have committed before the crash"

        local.start()
        with server.connect(autocommit=True) as after:
            figures.add("sessions", 2)  # the setup session and this one
            stored = {
                row[0]: tuple(row[1:])
                for row in after.execute(
                    "SELECT request_id, operation, result_payload, status_code FROM idempotency_records"
                )
            }
    finally:
        local.stop("immediate")
        shutil.rmtree(datadir.parent, ignore_errors=True)

    lost = [key for key in acknowledged if key not in stored]
    figures.add("rows_checked", len(acknowledged))
    figures.add("rows_lost", len(lost))
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged saves are missing after the crash"
    for key, values in stored.items():
        assert values == saves.attempted.get(key), f"row {key} after the crash is not a whole save: {values}"
    halves = [(first in stored, second in stored) for first, second in saves.pairs]
    assert all(a == b for a, b in halves), "a transaction's two saves are both there or both absent"
    faults_survived()


# --- a migration session terminated mid-file ----------------------------------------


@dataclasses.dataclass(frozen=True)
class Cut:
    """A file run by a migration runner's session, terminated after `k` statements."""

    name: str
    path: Path
    setup: tuple[Path, ...]  # applied before (045 for the down, so there is data)
    k: int
    rows: int  # rows present before the run

    def __str__(self) -> str:
        return self.name


def statements_through(path: Path, marker: str) -> int:
    """How many statements of a file run up to and including the first that holds `marker`."""
    statements = helpers.split_statements(path.read_text())
    return next(i for i, statement in enumerate(statements, 1) if marker in statement)


# Each cut falls after a file's first statement, which marks its checks in the session;
# its second statement then does every change of the file at once: 045 creates the table
# and its indexes, 045.down drops both indexes and the table holding 1000 rows.
CUTS = [
    Cut("045-up-after-its-first-statement", helpers.UP_045, (), statements_through(helpers.UP_045, "$mark$"), 0),
    Cut(
        "045-down-after-its-first-statement-on-1000-rows",
        helpers.DOWN_045,
        (helpers.UP_045,),
        statements_through(helpers.DOWN_045, "$mark$"),
        1000,
    ),
    # 047 adds its columns, and 047.down drops them, on a table holding 1000 rows.
    Cut(
        "047-up-after-its-first-statement-on-1000-rows",
        helpers.UP_047,
        (helpers.UP_045, helpers.UP_046),
        statements_through(helpers.UP_047, "$mark$"),
        1000,
    ),
    Cut(
        "047-down-after-its-first-statement-on-1000-rows",
        helpers.DOWN_047,
        (helpers.UP_045, helpers.UP_046, helpers.UP_047),
        statements_through(helpers.DOWN_047, "$mark$"),
        1000,
    ),
]


def run_as_runner(session: psycopg.Connection, statements: list[str], k: int, single: bool) -> None:
    """Run `statements` as a migration runner does, sleeping after the first `k`.

    single: one transaction around the file (a runner's default, psql -1);
    otherwise every statement commits on its own (psql without -1).
    """
    script = [*statements[:k], "SELECT pg_sleep(60)", *statements[k:]]
    if single:
        with session.transaction():
            for statement in script:
                session.execute(statement)
    else:
        for statement in script:
            session.execute(statement)


def terminate_mid_file(pg_server: Server, database: str, cut: Cut, single: bool) -> None:
    """Run the cut file in its own session and terminate that backend while it sleeps."""
    statements = helpers.split_statements(cut.path.read_text())
    application_name = f"idempotency_fault_{os.getpid()}_{time.monotonic_ns()}"
    with (
        pg_server.connect(database, autocommit=True, application_name=application_name) as runner,
        pg_server.connect(database, autocommit=True) as killer,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        figures.add("sessions", 2)
        running = pool.submit(run_as_runner, runner, statements, cut.k, single)
        deadline = time.monotonic() + 30
        pid = None
        while pid is None and time.monotonic() < deadline and not running.done():
            row = killer.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND wait_event = 'PgSleep'",
                (application_name,),
            ).fetchone()
            pid = row[0] if row is not None else None
            time.sleep(0.01)
        assert pid is not None, f"{cut}: the migration session never reached its pause ({running})"
        assert killer.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        with pytest.raises(psycopg.OperationalError) as raised:
            running.result(timeout=30)
    figures.add("faults_injected")
    assert raised.value.sqlstate in (None, "57P01"), (
        f"{cut}: the runner must see its session terminated: {raised.value}"
    )


@pytest.mark.parametrize("single", [True, False], ids=["one-transaction", "statement-by-statement"])
@pytest.mark.parametrize("cut", CUTS, ids=str)
def test_a_migration_terminated_mid_file_is_undone_or_completable_and_keeps_every_row(
    pg_server: Server, empty_database: str, empty_conn: psycopg.Connection, cut: Cut, single: bool
) -> None:
    states = helpers.migration_states(empty_conn)
    by_files = {tuple(helpers.UP_FILES[:n]): states[n] for n in range(len(states))}
    # A down file undoes the last of the files applied before it; an up file adds itself.
    after = by_files[cut.setup[:-1] if cut.path in helpers.DOWN_FILES else (*cut.setup, cut.path)]
    helpers.apply_all(empty_conn, cut.setup)
    if cut.rows:
        kept = records.live(operation="kept", lifetime=DAY)
        records.insert_many(empty_conn, cut.rows, kept, result_payload=sql.SQL("{}::text").format(records.ROW))
    before = helpers.catalog_snapshot(empty_conn)
    assert before == by_files[cut.setup]

    terminate_mid_file(pg_server, empty_database, cut, single)

    left = helpers.catalog_snapshot(empty_conn)
    # One transaction: nothing committed. Statement by statement: the first committed, and it
    # changes no catalog row (the file's changes are all in its second statement).
    assert left == before, (
        f"{cut}: terminated {'mid-transaction' if single else 'after one statement'}, nothing changed"
    )
    if cut.rows:
        kept = helpers.count(empty_conn, "operation = 'kept'")
        figures.add("rows_checked", cut.rows)
        figures.add("rows_lost", cut.rows - kept)
        assert kept == cut.rows, f"{cut}: the terminated run must not lose rows ({kept} of {cut.rows} left)"

    # Re-running the file completes it, from whatever the cut left.
    helpers.apply_all(empty_conn, (cut.path,))
    assert helpers.catalog_snapshot(empty_conn) == after, f"{cut}: re-running the file must complete it"

    # And from a cut state, the down files remove everything.
    helpers.apply_all(empty_conn, cut.setup)
    terminate_mid_file(pg_server, empty_database, cut, single)
    helpers.apply_all(empty_conn, helpers.DOWN_FILES)
    assert helpers.catalog_snapshot(empty_conn) == states[0], f"{cut}: the down files must remove whatever the cut left"
    faults_survived(2)


# --- statement and lock timeouts -----------------------------------------------------

MANY_EXPIRED = 100_000


def test_cleanup_cancelled_by_statement_timeout_deletes_nothing_and_a_later_run_completes(
    conn: psycopg.Connection,
) -> None:
    bulk_expired(conn, MANY_EXPIRED)
    conn.execute("SET statement_timeout = '20ms'")
    with pytest.raises(psycopg.errors.QueryCanceled) as raised:
        conn.execute(CLEANUP)
    figures.add("faults_injected")
    assert raised.value.sqlstate == "57014", f"expected 57014 query_canceled, got {raised.value.sqlstate}"
    conn.execute("RESET statement_timeout")
    assert helpers.count(conn) == MANY_EXPIRED, "the cancelled cleanup must be rolled back whole: nothing deleted"

    assert conn.execute(CLEANUP).fetchone() == (MANY_EXPIRED,), "a later cleanup deletes every expired row"
    assert helpers.count(conn) == 0
    figures.add("operations", 2)
    faults_survived()


LOCKED_EXPIRED = 1000


@pytest.mark.parametrize(
    ("setting", "sqlstate"),
    [("lock_timeout", "55P03"), ("statement_timeout", "57014")],
    ids=["lock_timeout", "statement_timeout"],
)
def test_cleanup_blocked_by_a_table_lock_gives_up_cleanly_at_its_timeout(
    pg_server: Server, database: str, conn: psycopg.Connection, setting: str, sqlstate: str
) -> None:
    bulk_expired(conn, LOCKED_EXPIRED)
    with pg_server.connect(database) as holder:
        figures.add("sessions")
        # A lock the cleanup must wait for, as during CREATE INDEX. (A row lock no
        # longer does: the cleanup skips a row another transaction holds.)
        holder.execute("LOCK TABLE idempotency_records IN SHARE MODE")
        conn.execute(sql.SQL("SET {} = '200ms'").format(sql.Identifier(setting)))
        with pytest.raises(psycopg.Error) as raised:
            conn.execute(CLEANUP)
        figures.add("faults_injected")
        assert raised.value.sqlstate == sqlstate, f"{setting}: expected {sqlstate}, got {raised.value.sqlstate}"
        conn.execute(sql.SQL("RESET {}").format(sql.Identifier(setting)))
        assert helpers.count(conn) == LOCKED_EXPIRED, f"{setting}: the cleanup that gave up must have deleted nothing"
        holder.rollback()

    assert conn.execute(CLEANUP).fetchone() == (LOCKED_EXPIRED,), "once the lock is gone the cleanup completes"
    figures.add("operations", 3)
    faults_survived()
