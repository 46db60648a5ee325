"""Recipe 1: the business operation runs once when duplicates of a request arrive together.

Every request is a real session (a thread with its own connection). The business
operation inserts a row into a `payments` table the test creates, then waits on a
gate (an advisory lock the test holds), so the test decides when it finishes and
every duplicate provably arrives while the first request is still in flight.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
import pytest

from tests.sessions import gate, results, together, wait_for_waiters
from tests.statements import CLAIM, LOOKUP, RECORD_RESULT, REPORT_GET, REPORT_SAVE, TRY_LOCK
from tooling import records, servers
from tooling.records import DAY, save_params

DUPLICATES = 8
GATE = 900_001  # advisory lock key of the test's gate

PAYMENTS = """
    CREATE TABLE payments (
        payment_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        request_id UUID NOT NULL,
        amount_cents INTEGER NOT NULL
    )
"""


@dataclass(frozen=True)
class Response:
    kind: str  # "executed", "replayed", "in progress" (409) or "failed"
    payload: str | None
    status: int | None


@pytest.fixture
def payments(conn: psycopg.Connection) -> psycopg.Connection:
    conn.execute(PAYMENTS)
    return conn


def pay(conn: psycopg.Connection, key: uuid.UUID) -> str:
    """The business operation: one payment row, then wait at the gate. Returns the result."""
    row = conn.execute(
        "INSERT INTO payments (request_id, amount_cents) VALUES (%s, 1500) RETURNING payment_id", (key,)
    ).fetchone()
    assert row is not None
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (GATE,))
    return json.dumps({"payment_id": row[0]})


def claim_first(conn: psycopg.Connection, key: uuid.UUID, fail: threading.Event | None = None) -> Response:
    """Recipe 1: claim, operate and record in one transaction; duplicates read the result.
    With `fail` set, the first request that owns the key fails after its operation."""
    try:
        with conn.transaction():
            claimed = conn.execute(CLAIM, {"request_id": key, "operation": "payment"}).fetchone()
            if claimed is None:
                row = conn.execute(LOOKUP, {"request_id": key}).fetchone()
                assert row is not None, "a claim that returns no row leaves a valid record to read"
                return Response("replayed", row[1], row[2])
            payload = pay(conn, key)
            if fail is not None and not fail.is_set():
                fail.set()
                raise RuntimeError("the payment provider refused")
            conn.execute(RECORD_RESULT, {"request_id": key, "result_payload": payload, "status_code": 201})
            return Response("executed", payload, 201)
    except RuntimeError:
        return Response("failed", None, None)


def count_payments(conn: psycopg.Connection, key: uuid.UUID) -> int:
    row = conn.execute("SELECT count(*) FROM payments WHERE request_id = %s", (key,)).fetchone()
    assert row is not None
    return int(row[0])


def stored(conn: psycopg.Connection, key: uuid.UUID) -> tuple[str, int | None]:
    row = conn.execute(
        "SELECT result_payload, status_code FROM idempotency_records WHERE request_id = %s", (key,)
    ).fetchone()
    assert row is not None, "the request's record is stored"
    return row[0], row[1]


def session(pg_server: servers.Server, database: str) -> psycopg.Connection:
    connection = pg_server.connect(database, autocommit=True)
    connection.execute("SET lock_timeout = '30s'")  # a broken recipe fails the test instead of hanging it
    return connection


def duplicate(
    pg_server: servers.Server, database: str, handle: Callable[[psycopg.Connection], Response]
) -> Callable[[threading.Barrier], Response]:
    """One duplicate request: a session of its own, released with the others, then `handle`."""

    def request(barrier: threading.Barrier) -> Response:
        with session(pg_server, database) as conn:
            barrier.wait()
            return handle(conn)

    return request


@dataclasses.dataclass(frozen=True)
class Held:
    """Duplicates in flight: the first held at the gate until open_gate(); their futures."""

    open_gate: Callable[[], None]
    futures: list[Future[Response]]


@contextmanager
def held_at_the_gate(
    pg_server: servers.Server,
    database: str,
    payments: psycopg.Connection,
    handle: Callable[[psycopg.Connection], Response],
    count: int = DUPLICATES,
) -> Iterator[Held]:
    """`count` duplicates released together, each `handle` in a session of its own; the block runs
    once the first is inside its operation, held at the gate until the block opens it (or ends)."""
    request = duplicate(pg_server, database, handle)
    with gate(payments, GATE) as open_gate, together(count, request, release=open_gate) as futures:
        wait_for_waiters(payments, "advisory", 1)
        yield Held(open_gate, futures)


def test_naive_get_then_save_runs_the_operation_once_per_duplicate(
    pg_server: servers.Server, database: str, payments: psycopg.Connection
) -> None:
    """The report's flow: look up, run the operation when nothing is stored, save.
    Duplicates that all look up before the first save all run the operation."""
    key = uuid.uuid4()
    looked_up = threading.Barrier(DUPLICATES, timeout=30)

    def naive(barrier: threading.Barrier) -> Response:
        with session(pg_server, database) as conn:
            barrier.wait()
            assert conn.execute(REPORT_GET, {"request_id": key}).fetchone() is None
            looked_up.wait()  # every duplicate has found nothing stored
            with conn.transaction():
                row = conn.execute(
                    "INSERT INTO payments (request_id, amount_cents) VALUES (%s, 1500) RETURNING payment_id", (key,)
                ).fetchone()
                assert row is not None
                payload = json.dumps({"payment_id": row[0]})
            conn.execute(REPORT_SAVE, save_params(key, "payment", payload, 201, 72))
            return Response("executed", payload, 201)

    with together(DUPLICATES, naive) as futures:
        responses = results(futures)

    assert count_payments(payments, key) == DUPLICATES, "every duplicate charged the customer"
    assert len({response.payload for response in responses}) == DUPLICATES, "every duplicate got its own answer"
    assert stored(payments, key)[0] in {r.payload for r in responses}, "the last save overwrote the others"


def test_claim_first_runs_the_operation_once_and_every_duplicate_gets_its_result(
    pg_server: servers.Server, database: str, payments: psycopg.Connection
) -> None:
    key = uuid.uuid4()
    with held_at_the_gate(pg_server, database, payments, lambda conn: claim_first(conn, key)) as held:
        wait_for_waiters(payments, "transactionid", DUPLICATES - 1)  # the others wait on its claim
        held.open_gate()
        responses = results(held.futures)

    executed = [r for r in responses if r.kind == "executed"]
    assert len(executed) == 1, f"exactly one request runs the operation, got {[r.kind for r in responses]}"
    assert count_payments(payments, key) == 1, "the customer is charged once"
    assert {(r.payload, r.status) for r in responses} == {(executed[0].payload, 201)}, (
        "every duplicate is answered with the first request's result"
    )
    assert stored(payments, key) == (executed[0].payload, 201), "the stored record holds that result"


def test_claim_first_hands_the_key_to_a_waiting_duplicate_when_the_first_request_fails(
    pg_server: servers.Server, database: str, payments: psycopg.Connection
) -> None:
    """The claim is never committed without its result: a request that fails rolls it
    back with its operation, and one waiting duplicate runs the operation instead."""
    key = uuid.uuid4()
    failed_once = threading.Event()

    with held_at_the_gate(pg_server, database, payments, lambda conn: claim_first(conn, key, fail=failed_once)) as held:
        wait_for_waiters(payments, "transactionid", DUPLICATES - 1)
        held.open_gate()
        responses = results(held.futures)

    kinds = sorted(r.kind for r in responses)
    assert kinds == ["executed", "failed"] + ["replayed"] * (DUPLICATES - 2), f"unexpected outcomes {kinds}"
    executed = next(r for r in responses if r.kind == "executed")
    assert count_payments(payments, key) == 1, "the failed attempt's payment was rolled back with its claim"
    assert {r.payload for r in responses if r.kind != "failed"} == {executed.payload}
    assert stored(payments, key) == (executed.payload, 201)


def in_progress_aware(conn: psycopg.Connection, key: uuid.UUID) -> Response:
    """Recipe 1, 409 variant: a duplicate of a request in flight is told so at once."""
    with conn.transaction():
        acquired = conn.execute(TRY_LOCK, {"request_id": key}).fetchone()
        assert acquired is not None
        if not acquired[0]:
            return Response("in progress", None, 409)
        return claim_first(conn, key)  # the lock is held until this transaction ends


def test_try_lock_answers_409_to_duplicates_of_a_request_in_flight_without_waiting(
    pg_server: servers.Server, database: str, payments: psycopg.Connection
) -> None:
    key = uuid.uuid4()
    with held_at_the_gate(pg_server, database, payments, lambda conn: in_progress_aware(conn, key)) as held:
        deadline = time.monotonic() + 20
        while sum(future.done() for future in held.futures) < DUPLICATES - 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        early = [future.result() for future in held.futures if future.done()]
        assert len(early) == DUPLICATES - 1, "every duplicate is answered while the first request is in flight"
        assert {r.status for r in early} == {409}, "and the answer is 409 in progress"
        held.open_gate()
        responses = results(held.futures)

    executed = [r for r in responses if r.kind == "executed"]
    assert len(executed) == 1 and count_payments(payments, key) == 1, "the operation ran once"
    with session(pg_server, database) as retry:
        replay = in_progress_aware(retry, key)
    assert replay == Response("replayed", executed[0].payload, 201), "a retry after the 409 gets the stored result"


def test_naive_for_update_nowait_cannot_see_a_request_in_flight_and_the_bare_claim_waits(
    pg_server: servers.Server, database: str, payments: psycopg.Connection
) -> None:
    """Why the 409 variant needs the advisory lock: the first request's claim is not
    committed, so SELECT ... FOR UPDATE NOWAIT finds no row (no error to turn into a
    409), and a second claim blocks until the first request ends."""
    key = uuid.uuid4()
    with held_at_the_gate(pg_server, database, payments, lambda conn: claim_first(conn, key), 1) as held:
        with session(pg_server, database) as other:
            nowait = other.execute(
                "SELECT request_id FROM idempotency_records WHERE request_id = %s FOR UPDATE NOWAIT", (key,)
            ).fetchall()
            assert nowait == [], "FOR UPDATE NOWAIT sees nothing of an uncommitted claim"
            other.execute("SET lock_timeout = '200ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable), other.transaction():
                other.execute(CLAIM, {"request_id": key, "operation": "payment"})
        held.open_gate()
        (response,) = results(held.futures)
    assert response.kind == "executed"


def test_a_duplicate_that_waited_under_repeatable_read_fails_with_a_serialization_error(
    pg_server: servers.Server, database: str, payments: psycopg.Connection
) -> None:
    """The claim needs READ COMMITTED: under REPEATABLE READ the duplicate's snapshot
    predates the first request's commit, so its claim fails (SQLSTATE 40001) instead
    of returning no row; a retry in a new transaction replays the result."""
    key = uuid.uuid4()
    request = duplicate(pg_server, database, lambda conn: claim_first(conn, key))

    def repeatable_read_duplicate() -> str:
        with session(pg_server, database) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            try:
                with conn.transaction():
                    conn.execute(CLAIM, {"request_id": key, "operation": "payment"})
            except psycopg.errors.SerializationFailure as error:
                return str(error.sqlstate)
            return "no error"

    with gate(payments, GATE) as open_gate, together(1, request, release=open_gate) as futures:
        wait_for_waiters(payments, "advisory", 1)
        with ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(repeatable_read_duplicate)
            wait_for_waiters(payments, "transactionid", 1)
            open_gate()
            assert waiting.result(timeout=30) == "40001", "the waiting REPEATABLE READ claim fails"
        (first,) = results(futures)
    with session(pg_server, database) as retry:
        assert claim_first(retry, key) == Response("replayed", first.payload, 201), "its retry replays the result"


@pytest.mark.parametrize("length", [101, 150])
@pytest.mark.parametrize("existing", [False, True], ids=["new key", "key of a 100-character operation"])
def test_the_claim_refuses_an_over_long_operation_as_the_save_does(
    conn: psycopg.Connection, length: int, existing: bool
) -> None:
    """No truncation: a 101-character operation is not stored cut to 100, and so cannot pass
    for another operation that shares its first 100 characters (the 422 check of recipe 2)."""
    key = uuid.uuid4()
    operation = "x" * length
    if existing:
        records.insert(conn, records.expired(key, operation=operation[:100], ago=DAY, lifetime=DAY))
    with pytest.raises(psycopg.errors.StringDataRightTruncation) as save:
        conn.execute(REPORT_SAVE, save_params(key, operation))
    with pytest.raises(psycopg.errors.StringDataRightTruncation) as claim:
        conn.execute(CLAIM, {"request_id": key, "operation": operation})
    assert (save.value.sqlstate, claim.value.sqlstate) == ("22001", "22001"), "both refuse it with 22001"
    stored = conn.execute("SELECT operation FROM idempotency_records WHERE request_id = %s", (key,)).fetchall()
    assert stored == ([(operation[:100],)] if existing else []), "nothing was stored or changed"
