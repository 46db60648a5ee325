"""Concurrent claims of one key: exactly one is claimed, every other one is told in_progress, and
no claim waits for another transaction to end.

Every claimer is a real session (a thread with its own connection) released on a barrier. "No
claim waits for another transaction to end" is asserted without timing: the transactions that
hold the key stay open until every claim has returned (a second barrier, or the test's own
holder, checked idle in transaction in pg_stat_activity when the claim returns), so a claim that
waited for one of them to end would never return and the barrier would break."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import psycopg
import pytest

from tests.protocol_calls import HASH, Claim, claim, complete, expire, release, stored
from tests.sessions import results, together
from tests.statements import CLAIM as RECIPE_CLAIM
from tests.statements import RECORD_RESULT, REPORT_SAVE
from tooling.records import save_params
from tooling.servers import Server

CLAIMERS = 32


def _session(pg_server: Server, database: str) -> psycopg.Connection:
    """A claimer's session: no lock_timeout of its own (only the function's can end a wait),
    and a statement_timeout, so that a claim that waits fails the test instead of hanging it."""
    connection = pg_server.connect(database, autocommit=True)
    connection.execute("SET lock_timeout = 0")
    connection.execute("SET statement_timeout = '20s'")
    return connection


def test_32_concurrent_claims_of_a_new_key_give_one_claimed_and_31_in_progress(
    pg_server: Server, protocol_database: str, pconn: psycopg.Connection
) -> None:
    key = uuid.uuid4()

    def claimer(barrier: threading.Barrier) -> Claim:
        with _session(pg_server, protocol_database) as conn:
            barrier.wait()
            return claim(conn, key)

    with together(CLAIMERS, claimer) as futures:
        answers = results(futures)

    outcomes = sorted(answer.outcome for answer in answers)
    assert outcomes == ["claimed"] + ["in_progress"] * (CLAIMERS - 1), f"outcomes: {outcomes}"
    (winner,) = [answer for answer in answers if answer.outcome == "claimed"]
    record = stored(pconn, key)
    assert record is not None and record.lease_token == winner.token, "the record holds the winner's token"
    assert pconn.execute("SELECT count(*) FROM idempotency_records").fetchone() == (1,), "one record"


def test_32_claims_made_while_every_claimer_keeps_its_transaction_open_give_one_claimed(
    pg_server: Server, protocol_database: str, pconn: psycopg.Connection
) -> None:
    """Each claimer claims inside its own transaction and commits only once all 32 claims have
    returned: the 31 losers cannot have waited for the winner's commit."""
    key = uuid.uuid4()
    returned = threading.Barrier(CLAIMERS, timeout=60)

    def claimer(barrier: threading.Barrier) -> Claim:
        with _session(pg_server, protocol_database) as conn, conn.transaction():
            barrier.wait()
            answer = claim(conn, key)
            returned.wait()  # breaks (BrokenBarrierError) if a claim never returns
            return answer

    with together(CLAIMERS, claimer, timeout=60) as futures:
        answers = results(futures, timeout=90)

    outcomes = sorted(answer.outcome for answer in answers)
    assert outcomes == ["claimed"] + ["in_progress"] * (CLAIMERS - 1), f"outcomes: {outcomes}"
    (winner,) = [answer for answer in answers if answer.outcome == "claimed"]
    record = stored(pconn, key)
    assert record is not None and record.lease_token == winner.token


def test_32_concurrent_claims_of_an_expired_key_give_one_takeover(
    pg_server: Server, protocol_database: str, pconn: psycopg.Connection
) -> None:
    key = uuid.uuid4()
    assert complete(pconn, key, claim(pconn, key).token)
    expire(pconn, key)

    def claimer(barrier: threading.Barrier) -> Claim:
        with _session(pg_server, protocol_database) as conn:
            barrier.wait()
            return claim(conn, key)

    with together(CLAIMERS, claimer) as futures:
        outcomes = sorted(answer.outcome for answer in results(futures))
    assert outcomes == ["claimed"] + ["in_progress"] * (CLAIMERS - 1), f"outcomes: {outcomes}"


# --- a transaction that writes the key and stays open -------------------------------------

Setup = Callable[[psycopg.Connection, uuid.UUID], None]
Hold = Callable[[psycopg.Connection, uuid.UUID], None]


def _nothing(conn: psycopg.Connection, key: uuid.UUID) -> None:
    """No record before the holder writes."""


def _claimed(conn: psycopg.Connection, key: uuid.UUID) -> None:
    assert claim(conn, key).outcome == "claimed"


def _expired(conn: psycopg.Connection, key: uuid.UUID) -> None:
    assert complete(conn, key, claim(conn, key).token)
    expire(conn, key)


def _hold_claim(conn: psycopg.Connection, key: uuid.UUID) -> None:
    assert claim(conn, key).outcome == "claimed"


def _hold_completion(conn: psycopg.Connection, key: uuid.UUID) -> None:
    token = stored(conn, key).lease_token  # type: ignore[union-attr]
    assert complete(conn, key, token, '{"payment_id": 5}', 201)


def _hold_release(conn: psycopg.Connection, key: uuid.UUID) -> None:
    assert release(conn, key, stored(conn, key).lease_token)  # type: ignore[union-attr]


def _hold_report_save(conn: psycopg.Connection, key: uuid.UUID) -> None:
    conn.execute(REPORT_SAVE, save_params(key, "payment", '{"payment_id": 6}', 201, 24))


def _hold_recipe_claim(conn: psycopg.Connection, key: uuid.UUID) -> None:
    assert conn.execute(RECIPE_CLAIM, {"request_id": key, "operation": "payment"}).fetchone() is not None
    conn.execute(RECORD_RESULT, {"request_id": key, "result_payload": '{"payment_id": 8}', "status_code": 201})


# What the holder's open transaction does; the claim's answer while it is open, and once it
# has committed.
HOLDERS = {
    "a claim of a new key": (_nothing, _hold_claim, "in_progress", "in_progress"),
    "a takeover of an expired key": (_expired, _hold_claim, "in_progress", "in_progress"),
    "a completion": (_claimed, _hold_completion, "in_progress", "replay"),
    "a release": (_claimed, _hold_release, "in_progress", "claimed"),
    "the repository's save over an expired key": (_expired, _hold_report_save, "in_progress", "replay"),
    "recipe 1's claim of a new key": (_nothing, _hold_recipe_claim, "in_progress", "replay"),
}


@contextmanager
def _open_transaction(pg_server: Server, database: str, hold: Hold, key: uuid.UUID) -> Iterator[Callable[[], None]]:
    """A session that runs `hold` in a transaction left open; yields the function that commits it."""
    with pg_server.connect(database) as holder:
        hold(holder, key)
        yield holder.commit
        holder.rollback()


@pytest.mark.parametrize("name", list(HOLDERS))
def test_a_claim_does_not_wait_for_a_transaction_that_holds_the_key(
    pg_server: Server, protocol_database: str, pconn: psycopg.Connection, name: str
) -> None:
    setup, hold, while_open, after_commit = HOLDERS[name]
    key = uuid.uuid4()
    setup(pconn, key)
    with _open_transaction(pg_server, protocol_database, hold, key) as commit:
        holder_pid = pconn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction'"
        ).fetchall()
        assert len(holder_pid) == 1, f"{name}: the holder's transaction is open"
        with ThreadPoolExecutor(max_workers=1) as pool, _session(pg_server, protocol_database) as other:
            answer = pool.submit(claim, other, key).result(timeout=30)
        state = pconn.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", holder_pid[0]).fetchone()
        assert state == ("idle in transaction",), f"{name}: the claim returned while the holder was still open"
        assert answer.outcome == while_open, f"{name}: while it is open, a claim answers {while_open}: {answer}"
        commit()
    assert claim(pconn, key).outcome == after_commit, f"{name}: once it has committed, {after_commit}"


@pytest.mark.parametrize("deadlock_timeout", ["1s", "10ms"])
def test_claims_of_two_keys_in_opposite_orders_in_open_transactions_do_not_deadlock(
    pg_server: Server, protocol_database: str, deadlock_timeout: str
) -> None:
    """Callers that claim two keys in one transaction (not how the protocol is meant to be
    called), in opposite orders: each second claim is told in_progress instead of waiting, so
    no deadlock error (40P01) reaches them, also where the deadlock detector runs before the
    claim's own lock_timeout ends its wait."""
    first, second = uuid.uuid4(), uuid.uuid4()
    both_claimed_one = threading.Barrier(2, timeout=30)

    def caller(keys: tuple[uuid.UUID, uuid.UUID]) -> tuple[str, str]:
        with _session(pg_server, protocol_database) as conn, conn.transaction():
            conn.execute(f"SET LOCAL deadlock_timeout = '{deadlock_timeout}'")
            one = claim(conn, keys[0], request_hash=HASH).outcome
            both_claimed_one.wait()
            two = claim(conn, keys[1], request_hash=HASH).outcome
            return one, two

    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = [pool.submit(caller, keys) for keys in ((first, second), (second, first))]
        outcomes = [answer.result(timeout=60) for answer in answers]
    assert outcomes == [("claimed", "in_progress"), ("claimed", "in_progress")], outcomes
