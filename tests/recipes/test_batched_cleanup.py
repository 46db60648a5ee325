"""Recipe 4: cleanup of a large backlog in bounded batches, each its own transaction.

A statement-level trigger the tests add records, for every DELETE statement on the
table, its transaction id and how many rows it deleted, so the tests see the batches.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid

import psycopg
import pytest

from tests.helpers import count, describe_plan, explain, plan_nodes, psql
from tests.sessions import gate, results, together, wait_for_waiters
from tests.statements import BATCH_SIZE, CLAIM, CLEANUP_BATCH, CLEANUP_LOOP
from tooling import records, servers
from tooling.records import DAY, HOUR, SECOND, Record

DELETION_LOG = """
    CREATE TABLE deletion_log (
        statement_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        xid BIGINT NOT NULL,
        deleted BIGINT NOT NULL
    );
    CREATE FUNCTION log_deletion() RETURNS TRIGGER LANGUAGE plpgsql AS $log$
    BEGIN
        INSERT INTO deletion_log (xid, deleted) SELECT txid_current(), count(*) FROM gone;
        RETURN NULL;
    END
    $log$;
    CREATE TRIGGER log_deletion AFTER DELETE ON idempotency_records
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION log_deletion();
"""


def expired_rows(conn: psycopg.Connection, rows: int) -> None:
    """Expired records created 10 days ago, one expiring a second before the next."""
    records.insert_many(conn, rows, Record(created_at=-10 * DAY, expires_at=dt.timedelta(0)), spread=-SECOND)


def valid_rows(conn: psycopg.Connection, rows: int) -> None:
    """Valid records, a second apart, the first expiring in an hour."""
    records.insert_many(conn, rows, records.live(age=12 * HOUR, lifetime=13 * HOUR), spread=SECOND)


EXPIRED, VALID = 2500, 1000
EXPECTED_BATCHES = [1000, 1000, 500]


@pytest.fixture
def backlog(conn: psycopg.Connection) -> set[uuid.UUID]:
    """2,500 expired and 1,000 valid records with a deletion log; returns the valid keys."""
    conn.execute(DELETION_LOG)
    expired_rows(conn, EXPIRED)
    valid_rows(conn, VALID)
    return {row[0] for row in conn.execute("SELECT request_id FROM idempotency_records WHERE expires_at > now()")}


def remaining(conn: psycopg.Connection) -> set[uuid.UUID]:
    return {row[0] for row in conn.execute("SELECT request_id FROM idempotency_records")}


def deletions(conn: psycopg.Connection) -> list[tuple[int, int]]:
    """(transaction id, rows deleted) of every DELETE statement, in order."""
    return [(int(x), int(n)) for x, n in conn.execute("SELECT xid, deleted FROM deletion_log ORDER BY statement_id")]


def test_batches_run_by_the_caller_delete_exactly_the_expired_rows(
    conn: psycopg.Connection, backlog: set[uuid.UUID]
) -> None:
    batches: list[int] = []
    while True:
        deleted = conn.execute(CLEANUP_BATCH).rowcount
        batches.append(deleted)
        if deleted < BATCH_SIZE:
            break
    assert batches == EXPECTED_BATCHES, "bounded batches of 1000, stopping at the first short one"
    assert remaining(conn) == backlog, "exactly the expired rows are gone, every valid one is kept"
    log = deletions(conn)
    assert len({xid for xid, _ in log}) == len(EXPECTED_BATCHES), "each batch committed in its own transaction"


def test_naive_cleanup_function_deletes_the_whole_backlog_in_one_transaction(
    conn: psycopg.Connection, backlog: set[uuid.UUID]
) -> None:
    deleted = conn.execute("SELECT deleted_count FROM cleanup_expired_idempotency_records()").fetchone()
    assert deleted == (EXPIRED,)
    assert deletions(conn) == [(deletions(conn)[0][0], EXPIRED)], "one statement, one transaction, all rows"
    assert remaining(conn) == backlog


def test_do_loop_outside_a_transaction_commits_every_batch(conn: psycopg.Connection, backlog: set[uuid.UUID]) -> None:
    conn.execute(CLEANUP_LOOP)
    log = deletions(conn)
    assert [deleted for _, deleted in log] == EXPECTED_BATCHES, "the loop stops after the first short batch"
    assert len({xid for xid, _ in log}) == len(EXPECTED_BATCHES), "COMMIT inside DO: one transaction per batch"
    assert remaining(conn) == backlog, "exactly the expired rows are gone"


def test_do_loop_runs_from_psql_c(pg_server: servers.Server, database: str, backlog: set[uuid.UUID]) -> None:
    """The way a cron job runs it: psql -c sends the block as a statement of its own."""
    result = psql(pg_server, database, "-v", "ON_ERROR_STOP=1", "-c", CLEANUP_LOOP)
    assert result.returncode == 0, f"psql -c failed: {result.stderr}"
    with pg_server.connect(database, autocommit=True) as conn:
        assert [deleted for _, deleted in deletions(conn)] == EXPECTED_BATCHES
        assert remaining(conn) == backlog


def test_do_loop_inside_a_transaction_block_is_refused(conn: psycopg.Connection, backlog: set[uuid.UUID]) -> None:
    with pytest.raises(psycopg.errors.InvalidTransactionTermination), conn.transaction():
        conn.execute(CLEANUP_LOOP)
    assert count(conn) == EXPIRED + VALID, "nothing was deleted"


def test_do_loop_in_a_multi_statement_query_is_refused(conn: psycopg.Connection, backlog: set[uuid.UUID]) -> None:
    """Several statements sent as one query string run in one implicit transaction."""
    with pytest.raises(psycopg.errors.InvalidTransactionTermination):
        conn.execute(CLEANUP_LOOP + ";\nSELECT 1")
    assert count(conn) == EXPIRED + VALID, "nothing was deleted"


@pytest.mark.parametrize("cleanup", ["batch", "function", "naive delete"])
def test_batch_and_function_skip_a_record_an_in_flight_request_is_taking_over(
    pg_server: servers.Server, database: str, conn: psycopg.Connection, cleanup: str
) -> None:
    """A request that claims an expired key holds its row until it commits. The batch and
    the function both pass over that row (SKIP LOCKED) instead of waiting behind the
    request: under lock_timeout = 1ms, any wait on it would fail with 55P03."""
    key = uuid.uuid4()
    records.insert(conn, records.expired(key, ago=DAY, lifetime=3 * DAY))
    expired_rows(conn, 10)
    gate_key = 900_002

    def request(barrier: threading.Barrier) -> list[tuple[uuid.UUID]]:
        with pg_server.connect(database, autocommit=True) as session, session.transaction():
            barrier.wait()
            claimed = session.execute(CLAIM, {"request_id": key, "operation": "payment"}).fetchall()
            session.execute("SELECT pg_advisory_xact_lock(%s)", (gate_key,))  # the operation, in flight
            return claimed

    with gate(conn, gate_key) as open_gate, together(1, request, release=open_gate) as futures:
        wait_for_waiters(conn, "advisory", 1)
        with pg_server.connect(database, autocommit=True) as cleaner:
            cleaner.execute("SET lock_timeout = '1ms'")
            if cleanup == "naive delete":  # the report's DELETE waits behind the request
                with pytest.raises(psycopg.errors.LockNotAvailable):
                    cleaner.execute("DELETE FROM idempotency_records WHERE expires_at <= now()")
                deleted = cleaner.execute(CLEANUP_BATCH).rowcount
            elif cleanup == "batch":
                deleted = cleaner.execute(CLEANUP_BATCH).rowcount
            else:
                row = cleaner.execute("SELECT deleted_count FROM cleanup_expired_idempotency_records()").fetchone()
                deleted = row[0] if row else -1
        open_gate()
        assert results(futures) == [[(key,)]]
    assert deleted == 10, f"the {cleanup} deleted every expired row but the one in use, without waiting"
    assert remaining(conn) == {key}, "the taken-over record, now valid again, is kept"


# The usual way to write a batch: IN (subquery). Same rows, but see its plan below.
NAIVE_BATCH = """
    DELETE FROM idempotency_records
    WHERE request_id IN (
        SELECT request_id FROM idempotency_records
        WHERE expires_at <= now()
        ORDER BY expires_at
        LIMIT 1000
        FOR UPDATE SKIP LOCKED
    )
"""


@pytest.mark.slow
def test_planner_chooses_the_expires_index_and_a_tid_scan_for_a_batch_of_a_realistic_backlog(
    conn: psycopg.Connection,
) -> None:
    """The planner's choice on realistic data: 40,000 valid records (a day of 1M requests
    a month) and 200,000 expired ones (a week without cleanup), analyzed. The batch
    finds its rows through idx_idempotency_expires and deletes them by ctid (a Tid Scan,
    no descent of the primary key); the IN (subquery) form hash-joins them against a sequential scan of the whole
    table, once per batch."""
    valid_rows(conn, 40_000)
    expired_rows(conn, 200_000)
    conn.execute("ANALYZE idempotency_records")
    plan = explain(conn, CLEANUP_BATCH)
    indexes = {node.get("Index Name") for node in plan_nodes(plan)}
    kinds = {node["Node Type"] for node in plan_nodes(plan)}
    shown = describe_plan(plan)
    assert "idx_idempotency_expires" in indexes, f"expired rows are found through idx_idempotency_expires:\n{shown}"
    assert "Tid Scan" in kinds, f"and deleted by their ctid:\n{shown}"
    assert "Seq Scan" not in kinds, f"no sequential scan of the table:\n{shown}"
    assert "Limit" in kinds, f"the batch is bounded:\n{shown}"
    naive = explain(conn, NAIVE_BATCH)
    assert "Seq Scan" in {node["Node Type"] for node in plan_nodes(naive)}, (
        f"the IN (subquery) form reads the whole table for every batch:\n{describe_plan(naive)}"
    )
