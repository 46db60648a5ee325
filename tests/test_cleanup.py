"""cleanup_expired_idempotency_records() deletes exactly the expired rows."""

from __future__ import annotations

import psycopg

from tests.helpers import count

CLEANUP = "SELECT deleted_count FROM cleanup_expired_idempotency_records()"


def _seed(conn: psycopg.Connection) -> None:
    """Rows around the boundary, inside one transaction so that now() is one
    instant for the inserts and for the cleanup: expired long ago, expiring
    exactly now (the boundary, which counts as expired), still valid by one
    microsecond, valid for an hour, valid forever."""
    conn.execute(
        """
        INSERT INTO idempotency_records (request_id, operation, result_payload, created_at, expires_at)
        VALUES
            ('00000000-0000-0000-0000-000000000001', 'old', '{}', now() - INTERVAL '2 days', now() - INTERVAL '1 day'),
            ('00000000-0000-0000-0000-000000000002', 'boundary', '{}', now() - INTERVAL '1 hour', now()),
            ('00000000-0000-0000-0000-000000000003', 'just-valid', '{}', now() - INTERVAL '1 hour',
             now() + INTERVAL '1 microsecond'),
            ('00000000-0000-0000-0000-000000000004', 'valid', '{}', now(), now() + INTERVAL '1 hour'),
            ('00000000-0000-0000-0000-000000000005', 'forever', '{}', now(), 'infinity')
        """
    )


def test_cleanup_deletes_expired_rows_including_the_boundary(conn: psycopg.Connection) -> None:
    with conn.transaction():
        _seed(conn)
        deleted = conn.execute(CLEANUP).fetchall()
        left = [r[0] for r in conn.execute("SELECT operation FROM idempotency_records ORDER BY request_id")]
    assert deleted == [(2,)], "one row, deleted_count = 2 (the old row and the one expiring exactly at now())"
    assert left == ["just-valid", "valid", "forever"], "rows with expires_at > now() are kept"


def test_cleanup_returns_zero_on_an_empty_table(conn: psycopg.Connection) -> None:
    assert conn.execute(CLEANUP).fetchall() == [(0,)]


def test_cleanup_returns_zero_when_nothing_has_expired(conn: psycopg.Connection) -> None:
    conn.execute(
        "INSERT INTO idempotency_records (request_id, operation, result_payload, expires_at) "
        "SELECT gen_random_uuid(), 'live', '{}', now() + INTERVAL '1 hour' FROM generate_series(1, 100)"
    )
    assert conn.execute(CLEANUP).fetchall() == [(0,)]
    assert count(conn) == 100


def test_cleanup_count_matches_a_large_expired_set(conn: psycopg.Connection) -> None:
    conn.execute(
        """
        INSERT INTO idempotency_records (request_id, operation, result_payload, created_at, expires_at)
        SELECT gen_random_uuid(), 'bulk', '{}', now() - INTERVAL '2 days',
               CASE WHEN i % 4 = 0 THEN now() + INTERVAL '1 day' ELSE now() - INTERVAL '1 second' * i END
        FROM generate_series(1, 5000) AS i
        """
    )
    assert conn.execute(CLEANUP).fetchall() == [(3750,)]
    assert count(conn) == 1250
    assert count(conn, "expires_at <= now()") == 0


def test_a_second_cleanup_finds_nothing(conn: psycopg.Connection) -> None:
    conn.execute(
        "INSERT INTO idempotency_records (request_id, operation, result_payload, created_at, expires_at) "
        "VALUES (gen_random_uuid(), 'old', '{}', now() - INTERVAL '2 hours', now() - INTERVAL '1 hour')"
    )
    assert conn.execute(CLEANUP).fetchall() == [(1,)]
    assert conn.execute(CLEANUP).fetchall() == [(0,)]
