"""Each function is meant to run in its own transaction, under READ COMMITTED. What happens when
a caller does otherwise, as docs/protocol.md states it:

- claim, operation and completion in one transaction behave as recipe 1 does: nobody sees the
  lease until the commit, a rollback leaves the key free, other claims meanwhile answer
  in_progress (tests/protocol/test_claim_concurrency.py);
- the lease runs from the transaction's start (now()) and is only seen from its commit: a
  transaction that outlives its lease hands the key to the next claim the moment it commits;
- under REPEATABLE READ (or SERIALIZABLE) a claim of a key another transaction wrote after the
  snapshot fails with 40001; a retry in a new transaction gets the answer."""

from __future__ import annotations

import datetime as dt
import uuid

import psycopg
import pytest

from tests.protocol_calls import Claim, claim, complete, expire, stored
from tooling.servers import Server


def test_claim_operation_and_completion_in_one_transaction_commit_together(
    pg_server: Server, protocol_database: str, pconn: psycopg.Connection
) -> None:
    key = uuid.uuid4()
    with pg_server.connect(protocol_database) as caller:
        token = claim(caller, key).token
        assert complete(caller, key, token, '{"payment_id": 1}', 201)
        assert stored(pconn, key) is None, "nothing is visible before the commit"
        caller.commit()
    assert claim(pconn, key) == Claim("replay", None, '{"payment_id": 1}', 201)


def test_a_claim_in_a_transaction_that_rolls_back_leaves_the_key_free(
    pg_server: Server, protocol_database: str, pconn: psycopg.Connection
) -> None:
    key = uuid.uuid4()
    with pg_server.connect(protocol_database) as caller:
        assert claim(caller, key).outcome == "claimed"
        caller.rollback()
    assert stored(pconn, key) is None
    assert claim(pconn, key).outcome == "claimed", "the key is free at once"


def test_a_transaction_that_outlives_its_lease_hands_the_key_over_as_it_commits(
    pg_server: Server, protocol_database: str, pconn: psycopg.Connection
) -> None:
    """The lease ends at the transaction's now() + lease: a 10 ms lease in a transaction that
    lasts 100 ms has run out before anyone could see it."""
    key = uuid.uuid4()
    with pg_server.connect(protocol_database) as caller:
        token = claim(caller, key, lease=dt.timedelta(milliseconds=10)).token
        caller.execute("SELECT pg_sleep(0.1)")
        caller.commit()
    taken = claim(pconn, key)
    assert taken.outcome == "claimed" and taken.token != token, "the next claim takes the key over at once"
    assert complete(pconn, key, token) is False, "and the first caller's completion is refused"


def test_a_claim_in_an_older_transaction_sees_less_of_the_clock(
    pg_server: Server, protocol_database: str, pconn: psycopg.Connection
) -> None:
    """now() is the transaction's start: a claim in a transaction that began before a lease was
    even taken finds it live (in_progress) after it ran out, where a new transaction takes the key
    over."""
    key = uuid.uuid4()
    with pg_server.connect(protocol_database) as old:
        started = old.execute("SELECT now()").fetchone()  # the old transaction begins
        claim(pconn, key, lease=dt.timedelta(milliseconds=50))
        record = stored(pconn, key)
        assert started is not None and record is not None and started[0] < record.expires_at
        pconn.execute("SELECT pg_sleep(0.1)")
        assert claim(old, key).outcome == "in_progress", "its now() is still inside the lease"
        old.rollback()
    assert claim(pconn, key).outcome == "claimed", "a new transaction's now() is past it"


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
@pytest.mark.parametrize("written", ["claimed", "taken over"])
def test_under_repeatable_read_a_key_written_after_the_snapshot_fails_with_40001(
    pg_server: Server, protocol_database: str, pconn: psycopg.Connection, isolation: str, written: str
) -> None:
    key = uuid.uuid4()
    if written == "taken over":
        assert complete(pconn, key, claim(pconn, key).token)
        expire(pconn, key)
    with pg_server.connect(protocol_database) as snapshot_holder:
        snapshot_holder.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
        snapshot_holder.execute("SELECT count(*) FROM idempotency_records").fetchone()  # the snapshot
        assert claim(pconn, key).outcome == "claimed", "another session claims the key and commits"
        with pytest.raises(psycopg.errors.SerializationFailure):
            claim(snapshot_holder, key)
        snapshot_holder.rollback()
        assert claim(snapshot_holder, key).outcome == "in_progress", "retried in a new transaction: the answer"
