"""Bad arguments fail at once, before anything is read or written: each with its SQLSTATE, a
message naming the function and the argument, and a DETAIL that says what was found and what
was expected. The table is the same afterwards, row for row."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tests.protocol_calls import CASES, HASH, KNOWN, Bad, claim, sqlstate_and_diagnostics


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
