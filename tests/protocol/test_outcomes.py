"""The protocol's state machine, one transition per test: claimed, replay, in_progress, mismatch
(by operation, by hash), takeover of an expired lease or result, completion fenced by the token,
release. Each function is called in its own transaction (an autocommit connection); expired
records are built by moving a record's timestamps into the past, as the clock would."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import psycopg
import pytest

from tests.protocol_calls import (
    HASH,
    IN_PROGRESS_PAYLOAD,
    IN_PROGRESS_STATUS,
    OTHER_HASH,
    Claim,
    claim,
    complete,
    expire,
    release,
    stored,
)


def test_a_new_key_is_claimed_and_holds_an_in_progress_record_for_the_lease(pconn: psycopg.Connection) -> None:
    key = uuid.uuid4()
    claimed = claim(pconn, key, lease=dt.timedelta(seconds=45))
    assert claimed.outcome == "claimed" and claimed.token is not None, f"a new key is claimed: {claimed}"
    assert (claimed.result_payload, claimed.status_code) == (None, None), "a claim returns no result"
    record = stored(pconn, key)
    assert record is not None, "the claim stored a record"
    assert (record.operation, record.request_hash, record.lease_token) == ("payment", HASH, claimed.token)
    assert (record.status_code, record.result_payload) == (IN_PROGRESS_STATUS, IN_PROGRESS_PAYLOAD), (
        "an in-progress record holds 409 and the problem document"
    )
    assert record.expires_at - record.created_at == dt.timedelta(seconds=45), "expires_at is the lease's end"


def test_every_claim_gets_a_token_of_its_own(pconn: psycopg.Connection) -> None:
    tokens = {claim(pconn, uuid.uuid4()).token for _ in range(50)}
    assert len(tokens) == 50 and None not in tokens, "each claim's token is new"


def test_a_completed_key_is_replayed_with_its_result_and_status(pconn: psycopg.Connection) -> None:
    key = uuid.uuid4()
    token = claim(pconn, key).token
    assert complete(pconn, key, token, '{"payment_id": 7}', 201, dt.timedelta(hours=72)), "the holder completes"
    record = stored(pconn, key)
    assert record is not None and record.lease_token is None, "completion ends the lease"
    assert record.expires_at - record.created_at >= dt.timedelta(hours=72), "the result lives for the ttl"
    for _ in range(3):
        assert claim(pconn, key) == Claim("replay", None, '{"payment_id": 7}', 201), "every duplicate replays it"


def test_a_result_without_status_is_replayed_with_null(pconn: psycopg.Connection) -> None:
    key = uuid.uuid4()
    assert complete(pconn, key, claim(pconn, key, operation="import").token, '{"rows": 12}', None)
    assert claim(pconn, key, operation="import") == Claim("replay", None, '{"rows": 12}', None)


def test_a_key_held_by_another_caller_is_in_progress(pconn: psycopg.Connection) -> None:
    key = uuid.uuid4()
    first = claim(pconn, key)
    assert claim(pconn, key) == Claim("in_progress", None, None, None), "a duplicate of a request in flight"
    record = stored(pconn, key)
    assert record is not None and record.lease_token == first.token, "and the lease stays the first caller's"


@pytest.mark.parametrize("completed", [False, True], ids=["in progress", "completed"])
def test_the_key_of_another_operation_is_a_mismatch_and_nothing_of_it_comes_back(
    pconn: psycopg.Connection, completed: bool
) -> None:
    key = uuid.uuid4()
    token = claim(pconn, key, operation="payment").token
    if completed:
        assert complete(pconn, key, token)
    before = stored(pconn, key)
    assert claim(pconn, key, operation="refund") == Claim("mismatch", None, None, None)
    assert stored(pconn, key) == before, "a mismatch changes nothing"


@pytest.mark.parametrize("completed", [False, True], ids=["in progress", "completed"])
def test_the_same_key_with_another_request_hash_is_a_mismatch(pconn: psycopg.Connection, completed: bool) -> None:
    key = uuid.uuid4()
    token = claim(pconn, key, request_hash=HASH).token
    if completed:
        assert complete(pconn, key, token)
    before = stored(pconn, key)
    assert claim(pconn, key, request_hash=OTHER_HASH) == Claim("mismatch", None, None, None)
    assert stored(pconn, key) == before, "a mismatch changes nothing"
    expected = "replay" if completed else "in_progress"
    assert claim(pconn, key, request_hash=HASH).outcome == expected, "the same request still gets its answer"


def test_an_expired_lease_is_taken_over_with_a_new_token_and_a_whole_new_lifetime(pconn: psycopg.Connection) -> None:
    key = uuid.uuid4()
    first = claim(pconn, key, operation="payment", request_hash=HASH)
    expire(pconn, key)
    second = claim(pconn, key, operation="transfer", request_hash=OTHER_HASH, lease=dt.timedelta(seconds=20))
    assert second.outcome == "claimed" and second.token not in (None, first.token), f"taken over: {second}"
    record = stored(pconn, key)
    assert record is not None
    assert (record.operation, record.request_hash, record.lease_token) == ("transfer", OTHER_HASH, second.token)
    now = pconn.execute("SELECT now()").fetchone()
    assert now is not None and record.created_at <= now[0], "created_at is the takeover's"
    assert record.expires_at - record.created_at == dt.timedelta(seconds=20), "a whole new lease"


def test_an_expired_result_is_taken_over_whatever_its_operation_and_hash(pconn: psycopg.Connection) -> None:
    key = uuid.uuid4()
    assert complete(pconn, key, claim(pconn, key, operation="login").token, '{"session": 1}', 200)
    expire(pconn, key)
    assert claim(pconn, key, operation="payment", request_hash=OTHER_HASH).outcome == "claimed"


def test_a_lease_runs_out_by_the_clock(pconn: psycopg.Connection) -> None:
    """The one test here that waits for real time: a lease of 200 ms, then the key is free. Each
    claim runs in a transaction that first reads now(), the instant it compares with the lease."""
    key = uuid.uuid4()
    first = claim(pconn, key, lease=dt.timedelta(milliseconds=200))
    record = stored(pconn, key)
    assert record is not None
    while True:
        with pconn.transaction():
            now = pconn.execute("SELECT now()").fetchone()
            answer = claim(pconn, key)
        assert now is not None
        if now[0] >= record.expires_at:
            break
        assert answer.outcome == "in_progress", f"the lease holds until its end, at {now[0]}: {answer}"
        time.sleep(0.05)
    assert answer.outcome == "claimed" and answer.token != first.token, "then the key is taken over"


def test_the_stale_holders_completion_is_refused_and_writes_nothing(pconn: psycopg.Connection) -> None:
    key = uuid.uuid4()
    stale = claim(pconn, key).token
    expire(pconn, key)
    fresh = claim(pconn, key).token
    before = stored(pconn, key)
    assert complete(pconn, key, stale, '{"payment_id": "stale"}', 201) is False, "the stale holder gets false"
    assert stored(pconn, key) == before, "and wrote nothing"
    assert release(pconn, key, stale) is False, "nor can it release the key"
    assert stored(pconn, key) == before
    assert complete(pconn, key, fresh, '{"payment_id": "fresh"}', 201) is True, "the new holder completes"
    assert claim(pconn, key) == Claim("replay", None, '{"payment_id": "fresh"}', 201)


def test_a_lease_that_ran_out_but_nobody_took_over_is_still_the_tokens(pconn: psycopg.Connection) -> None:
    """Fencing is by token: until another claim takes the key, the holder's result is stored
    (and replayed from then on), rather than lost."""
    key = uuid.uuid4()
    token = claim(pconn, key).token
    expire(pconn, key)
    assert complete(pconn, key, token, '{"payment_id": 3}', 201) is True
    assert claim(pconn, key) == Claim("replay", None, '{"payment_id": 3}', 201)


def test_a_completion_counts_once(pconn: psycopg.Connection) -> None:
    key = uuid.uuid4()
    token = claim(pconn, key).token
    assert complete(pconn, key, token, '{"payment_id": 1}', 201) is True
    assert complete(pconn, key, token, '{"payment_id": 2}', 201) is False, "a second completion is refused"
    assert claim(pconn, key).result_payload == '{"payment_id": 1}', "the first result stays"


def test_a_released_key_is_claimable_at_once(pconn: psycopg.Connection) -> None:
    key = uuid.uuid4()
    token = claim(pconn, key, operation="payment").token
    assert release(pconn, key, token) is True
    assert stored(pconn, key) is None, "release deletes the in-progress record"
    assert release(pconn, key, token) is False, "a second release finds nothing"
    assert complete(pconn, key, token) is False, "nor can the released token complete"
    again = claim(pconn, key, operation="refund", request_hash=OTHER_HASH)
    assert again.outcome == "claimed" and again.token != token, "the next claim takes the key at once"


def test_a_completed_key_cannot_be_released(pconn: psycopg.Connection) -> None:
    key = uuid.uuid4()
    token = claim(pconn, key).token
    assert complete(pconn, key, token)
    assert release(pconn, key, token) is False
    assert claim(pconn, key).outcome == "replay"


def test_completion_stores_the_ttl_from_its_own_transaction(pconn: psycopg.Connection) -> None:
    key = uuid.uuid4()
    token = claim(pconn, key).token
    with pconn.transaction():
        assert complete(pconn, key, token, "{}", 200, dt.timedelta(minutes=5))
        now = pconn.execute("SELECT now()").fetchone()
    record = stored(pconn, key)
    assert now is not None and record is not None
    assert record.expires_at == now[0] + dt.timedelta(minutes=5), "expires_at = now() + ttl"


def test_a_replay_changes_nothing(pconn: psycopg.Connection) -> None:
    """A replay reads only: neither the record nor its expiry changes, whatever lease it asks for."""
    key = uuid.uuid4()
    assert complete(pconn, key, claim(pconn, key).token)
    before = stored(pconn, key)
    claim(pconn, key, lease=dt.timedelta(hours=9))
    assert stored(pconn, key) == before
