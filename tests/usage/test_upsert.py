"""Storing, reading and overwriting records: the repository's get and save queries."""

from __future__ import annotations

import uuid

import psycopg

from tests.helpers import count
from tests.statements import REPORT_GET, REPORT_SAVE
from tooling import records
from tooling.records import HOUR, MINUTE, Record, save_params


def test_insert_then_query_returns_the_stored_record(conn: psycopg.Connection) -> None:
    key = uuid.uuid4()
    conn.execute(REPORT_SAVE, save_params(key, "payment", '{"id": 1}', 201, 24))
    row = conn.execute(REPORT_GET, {"request_id": key}).fetchone()
    assert row is not None, "a record saved with a 24 h TTL must be found"
    assert row[:4] == (key, "payment", '{"id": 1}', 201)
    assert row[5] > row[4], "expires_at must be after created_at"


def test_expiry_filter_separates_valid_from_expired(conn: psycopg.Connection) -> None:
    valid, expired = uuid.uuid4(), uuid.uuid4()
    conn.execute(REPORT_SAVE, save_params(valid, "payment", "{}", 200, 1))
    records.insert(conn, records.expired(expired))
    assert count(conn) == 2, "both records are stored"
    assert conn.execute(REPORT_GET, {"request_id": valid}).fetchone() is not None, "the valid record is returned"
    assert conn.execute(REPORT_GET, {"request_id": expired}).fetchone() is None, "the expired record is not returned"


def test_upsert_replaces_the_fields_and_keeps_created_at(conn: psycopg.Connection) -> None:
    key = uuid.uuid4()
    first = Record(key, "transfer", "first", 500, created_at=-10 * MINUTE, expires_at=HOUR)
    records.insert(conn, first)
    before = conn.execute(
        "SELECT created_at, expires_at FROM idempotency_records WHERE request_id = %s", (key,)
    ).fetchone()
    conn.execute(REPORT_SAVE, save_params(key, "payment", "second", 200, 72))
    rows = conn.execute(
        "SELECT operation, result_payload, status_code, created_at, expires_at FROM idempotency_records "
        "WHERE request_id = %s",
        (key,),
    ).fetchall()
    assert len(rows) == 1, "the upsert leaves one row per request_id"
    operation, payload, status, created_at, expires_at = rows[0]
    assert (operation, payload, status) == ("payment", "second", 200)
    assert before is not None
    assert created_at == before[0], "created_at is not in the SET list, so it keeps the first write's value"
    assert expires_at > before[1], "expires_at takes the new 72 h TTL"


def test_on_conflict_do_nothing_keeps_the_first_write(conn: psycopg.Connection) -> None:
    key = uuid.uuid4()
    insert = (
        "INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, expires_at) "
        "VALUES (%s, %s, %s, %s, now() + INTERVAL '1 hour') ON CONFLICT (request_id) DO NOTHING"
    )
    first = conn.execute(insert, (key, "payment", "first", 201))
    second = conn.execute(insert, (key, "payment", "second", 409))
    assert (first.rowcount, second.rowcount) == (1, 0), "the second insert must be a no-op"
    row = conn.execute(REPORT_GET, {"request_id": key}).fetchone()
    assert row is not None and row[2:4] == ("first", 201)


def test_an_already_expired_record_can_be_stored_with_a_backdated_created_at(conn: psycopg.Connection) -> None:
    """The report's test 6, corrected: its own INSERT, with created_at before expires_at."""
    key = uuid.uuid4()
    conn.execute(
        "INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, created_at, expires_at) "
        "VALUES (%s, 'test', '{}', 200, now() - INTERVAL '2 hours', now() - INTERVAL '1 hour')",
        (key,),
    )
    assert count(conn, "expires_at <= now()") == 1


def test_the_reports_expired_insert_with_default_created_at_is_rejected(conn: psycopg.Connection) -> None:
    """The report's test 6 inserts an expired record without created_at: the
    default now() is then later than expires_at and chk_expires_at rejects it,
    which is why its cleanup test 8 passed with nothing to clean."""
    try:
        conn.execute(
            "INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, expires_at) "
            "VALUES (gen_random_uuid(), 'test', '{}', 200, now() - INTERVAL '1 hour')"
        )
    except psycopg.errors.CheckViolation as error:
        assert error.diag.constraint_name == "chk_expires_at"
    else:
        raise AssertionError("an expired record with the default created_at must violate chk_expires_at")
    assert count(conn) == 0
