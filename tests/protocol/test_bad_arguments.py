"""Bad arguments fail at once, before anything is read or written: each with its SQLSTATE, a
message naming the function and the argument, and a DETAIL that says what was found and what
was expected. The table is the same afterwards, row for row."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import psycopg
import pytest

from tests.protocol.library import (
    CLAIM,
    COMPLETE,
    HASH,
    IN_PROGRESS_PAYLOAD,
    KEY,
    LEASE,
    RELEASE,
    TTL,
    claim,
    sqlstate_and_diagnostics,
)

KNOWN = uuid.UUID("0f6e5d4c-3b2a-4190-8877-665544332211")
TOKEN = uuid.UUID("11111111-2222-4333-8444-555555555555")


@dataclasses.dataclass(frozen=True)
class Bad:
    query: str
    params: tuple[object, ...]
    sqlstate: str
    names: str  # what the message must name

    def __str__(self) -> str:
        return self.names


Call = tuple[str, tuple[object, ...]]


def _claim(
    key: object = KNOWN, operation: object = "payment", request_hash: object = HASH, lease: object = LEASE
) -> Call:
    return CLAIM, (key, operation, request_hash, lease)


def _complete(
    key: object = KNOWN, token: object = TOKEN, payload: object = "{}", status: object = 201, ttl: object = TTL
) -> Call:
    return COMPLETE, (key, token, payload, status, ttl)


CASES = [
    Bad(*_claim(key=None), "22004", "idempotency_claim: request_id is NULL"),
    Bad(*_claim(operation=None), "22004", "idempotency_claim: operation is NULL"),
    Bad(*_claim(operation="x" * 101), "22001", "idempotency_claim: operation is longer than 100 characters"),
    Bad(*_claim(operation="é" * 101), "22001", "idempotency_claim: operation is longer than 100 characters"),
    Bad(*_claim(request_hash=None), "22004", "idempotency_claim: request_hash is NULL"),
    Bad(*_claim(request_hash=b"\x01" * 15), "22023", "idempotency_claim: request_hash is not a digest"),
    Bad(*_claim(request_hash=b"\x01" * 65), "22023", "idempotency_claim: request_hash is not a digest"),
    Bad(*_claim(request_hash=b'{"amount": 1500}' * 8), "22023", "idempotency_claim: request_hash is not a digest"),
    Bad(*_claim(lease=None), "22004", "idempotency_claim: lease is not a positive, finite interval"),
    Bad(*_claim(lease=dt.timedelta(0)), "22023", "idempotency_claim: lease is not a positive, finite interval"),
    Bad(*_claim(lease=dt.timedelta(seconds=-1)), "22023", "idempotency_claim: lease is not a positive"),
    Bad(*_complete(key=None), "22004", "idempotency_complete: request_id is NULL"),
    Bad(*_complete(token=None), "22004", "idempotency_complete: token is NULL"),
    Bad(*_complete(payload=None), "22004", "idempotency_complete: result_payload is NULL"),
    Bad(*_complete(ttl=None), "22004", "idempotency_complete: ttl is not a positive, finite interval"),
    Bad(*_complete(ttl=dt.timedelta(0)), "22023", "idempotency_complete: ttl is not a positive, finite interval"),
    Bad(*_complete(ttl=dt.timedelta(hours=-24)), "22023", "idempotency_complete: ttl is not a positive"),
    Bad(*_complete(payload=IN_PROGRESS_PAYLOAD, status=409), "22023", "idempotency_complete: the result is the in"),
    Bad(RELEASE, (None, TOKEN), "22004", "idempotency_release: request_id is NULL"),
    Bad(RELEASE, (KNOWN, None), "22004", "idempotency_release: token is NULL"),
    Bad(KEY, (None, "order-1"), "22004", "idempotency_key: scope is NULL"),
    Bad(KEY, ("tenant-a", None), "22004", "idempotency_key: client_key is NULL"),
    Bad(KEY, ("", "order-1"), "22023", "idempotency_key: scope is empty"),
    Bad(KEY, ("tenant-a", ""), "22023", "idempotency_key: client_key is empty"),
]


def _table(conn: psycopg.Connection) -> list[tuple[object, ...]]:
    return conn.execute("SELECT * FROM idempotency_records ORDER BY request_id").fetchall()


@pytest.mark.parametrize("bad", CASES, ids=str)
def test_a_bad_argument_fails_at_once_naming_it_and_writes_nothing(pconn: psycopg.Connection, bad: Bad) -> None:
    token = claim(pconn, KNOWN).token  # a record in progress under the key the calls name
    assert token is not None
    before = _table(pconn)
    with pytest.raises(psycopg.Error) as raised:
        pconn.execute(bad.query, bad.params)
    sqlstate, message, detail, _ = sqlstate_and_diagnostics(raised.value)
    assert sqlstate == bad.sqlstate, f"{bad}: expected SQLSTATE {bad.sqlstate}, got {sqlstate}: {message}"
    assert message.startswith(bad.names), f"expected a message naming {bad.names!r}, got {message!r}"
    assert detail.startswith("found: ") and "; expected: " in detail, f"{bad}: DETAIL says found/expected: {detail}"
    assert _table(pconn) == before, f"{bad}: the table changed"


def test_a_lease_with_a_sign_change_that_ends_before_it_starts_is_refused(pconn: psycopg.Connection) -> None:
    """1 day minus 25 hours: positive in its day part, negative in all."""
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="lease is not a positive"):
        pconn.execute(
            "SELECT * FROM idempotency_claim(%s, 'payment'::VARCHAR, %s, INTERVAL '1 day -25 hours')", (KNOWN, HASH)
        )


def test_an_infinite_lease_or_ttl_is_refused_where_the_server_has_them(pconn: psycopg.Connection) -> None:
    """PostgreSQL 17 added infinite intervals: a lease that never ends would hold its key for
    good. On 15 and 16 the literal does not parse at all (22007)."""
    version = pconn.execute("SELECT current_setting('server_version_num')::INTEGER").fetchone()
    assert version is not None
    expected = "22023" if version[0] >= 170000 else "22007"
    for query in (
        "SELECT * FROM idempotency_claim(%s, 'payment'::VARCHAR, %s, 'infinity'::INTERVAL)",
        "SELECT idempotency_complete(%s, gen_random_uuid(), '{}', 200, 'infinity'::INTERVAL)",
    ):
        params = (KNOWN, HASH) if "claim" in query else (KNOWN,)
        with pytest.raises(psycopg.Error) as raised:
            pconn.execute(query, params)
        assert raised.value.sqlstate == expected, f"{query}: {raised.value.sqlstate} {raised.value}"


def test_an_operation_of_exactly_100_characters_is_accepted(pconn: psycopg.Connection) -> None:
    assert claim(pconn, uuid.uuid4(), operation="é" * 100).outcome == "claimed"
