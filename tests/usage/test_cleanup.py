"""cleanup_expired_idempotency_records() deletes exactly the expired rows."""

from __future__ import annotations

import datetime as dt

import psycopg

from tests.helpers import count
from tooling import records
from tooling.records import DAY, HOUR, SECOND, Record

CLEANUP = "SELECT deleted_count FROM cleanup_expired_idempotency_records()"


def _seed(conn: psycopg.Connection) -> None:
    """Rows around the boundary, inside one transaction so that now() is one
    instant for the inserts and for the cleanup: expired long ago, expiring
    exactly now (the boundary, which counts as expired), still valid by one
    microsecond, valid for an hour, valid forever."""
    records.insert(
        conn,
        records.expired(operation="old", ago=DAY, lifetime=DAY),
        Record(operation="boundary", created_at=-HOUR, expires_at=dt.timedelta(0)),
        Record(operation="just-valid", created_at=-HOUR, expires_at=dt.timedelta(microseconds=1)),
        records.live(operation="valid", lifetime=HOUR),
        Record(operation="forever", expires_at="infinity"),
    )


def test_cleanup_deletes_expired_rows_including_the_boundary(conn: psycopg.Connection) -> None:
    with conn.transaction():
        _seed(conn)
        deleted = conn.execute(CLEANUP).fetchall()
        left = [r[0] for r in conn.execute("SELECT operation FROM idempotency_records ORDER BY expires_at")]
    assert deleted == [(2,)], "one row, deleted_count = 2 (the old row and the one expiring exactly at now())"
    assert left == ["just-valid", "valid", "forever"], "rows with expires_at > now() are kept"


def test_cleanup_returns_zero_on_an_empty_table(conn: psycopg.Connection) -> None:
    assert conn.execute(CLEANUP).fetchall() == [(0,)]


def test_cleanup_returns_zero_when_nothing_has_expired(conn: psycopg.Connection) -> None:
    records.insert_many(conn, 100, records.live(lifetime=HOUR))
    assert conn.execute(CLEANUP).fetchall() == [(0,)]
    assert count(conn) == 100


def test_cleanup_count_matches_a_large_expired_set(conn: psycopg.Connection) -> None:
    records.insert_many(conn, 1250, Record(created_at=-2 * DAY, expires_at=DAY))
    records.insert_many(conn, 3750, Record(created_at=-2 * DAY, expires_at=dt.timedelta(0)), spread=-SECOND)
    assert conn.execute(CLEANUP).fetchall() == [(3750,)]
    assert count(conn) == 1250
    assert count(conn, "expires_at <= now()") == 0


def test_a_second_cleanup_finds_nothing(conn: psycopg.Connection) -> None:
    records.insert(conn, records.expired())
    assert conn.execute(CLEANUP).fetchall() == [(1,)]
    assert conn.execute(CLEANUP).fetchall() == [(0,)]
