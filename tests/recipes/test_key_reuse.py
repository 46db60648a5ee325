"""Recipe 2: a key stored by one operation is not silently overwritten by another.

request_id alone is the primary key, so a client that reuses a UUID for another
operation collides with the first record. The report's save overwrites it; the
guarded save and the claim refuse, and the application answers 422.
"""

from __future__ import annotations

import uuid

import psycopg

from tests.statements import CLAIM, GUARDED_SAVE, LOOKUP, REPORT_SAVE
from tooling import records
from tooling.records import DAY, save_params


def record(conn: psycopg.Connection, key: uuid.UUID) -> tuple[str, str, int | None]:
    row = conn.execute(
        "SELECT operation, result_payload, status_code FROM idempotency_records WHERE request_id = %s", (key,)
    ).fetchone()
    assert row is not None, f"record {key} is stored"
    return row[0], row[1], row[2]


def test_naive_report_save_overwrites_another_operations_record(conn: psycopg.Connection) -> None:
    key = uuid.uuid4()
    conn.execute(REPORT_SAVE, save_params(key, "payment", '{"payment_id": 1}', 201))
    conn.execute(REPORT_SAVE, save_params(key, "login", '{"session": "s-1"}', 200))
    assert record(conn, key) == ("login", '{"session": "s-1"}', 200), (
        "the payment's record is gone: a retry of the payment would now replay a login"
    )


def test_guarded_save_refuses_another_operation_and_leaves_the_record_untouched(conn: psycopg.Connection) -> None:
    key = uuid.uuid4()
    first = conn.execute(GUARDED_SAVE, save_params(key, "payment", '{"payment_id": 1}', 201)).fetchall()
    reused = conn.execute(GUARDED_SAVE, save_params(key, "login", '{"session": "s-1"}', 200)).fetchall()
    assert first == [(key,)], "the first save stores the record and returns its key"
    assert reused == [], "a save for another operation returns no row: the application answers 422"
    assert record(conn, key) == ("payment", '{"payment_id": 1}', 201), "the payment's record is kept"


def test_guarded_save_still_updates_a_record_of_the_same_operation(conn: psycopg.Connection) -> None:
    key = uuid.uuid4()
    conn.execute(GUARDED_SAVE, save_params(key, "payment", '{"payment_id": 1}', 500))
    again = conn.execute(GUARDED_SAVE, save_params(key, "payment", '{"payment_id": 2}', 201)).fetchall()
    assert again == [(key,)], "a save for the same operation goes through, as the report's save does"
    assert record(conn, key) == ("payment", '{"payment_id": 2}', 201)


def test_claim_on_a_key_held_by_another_operation_returns_no_row_and_the_lookup_tells_422(
    conn: psycopg.Connection,
) -> None:
    key = uuid.uuid4()
    with conn.transaction():
        assert conn.execute(CLAIM, {"request_id": key, "operation": "payment"}).fetchall() == [(key,)]
    with conn.transaction():
        claimed = conn.execute(CLAIM, {"request_id": key, "operation": "login"}).fetchall()
        found = conn.execute(LOOKUP, {"request_id": key}).fetchone()
    assert claimed == [], "the login request does not own the key"
    assert found is not None and found[0] == "payment", (
        "the lookup shows the key belongs to a payment: the application answers 422, not a replay"
    )


def test_an_expired_record_of_another_operation_frees_its_key_for_the_claim(conn: psycopg.Connection) -> None:
    key = uuid.uuid4()
    records.insert(conn, records.expired(key, ago=DAY, lifetime=3 * DAY))
    with conn.transaction():
        claimed = conn.execute(CLAIM, {"request_id": key, "operation": "login"}).fetchall()
    assert claimed == [(key,)], "an expired record no longer holds its key"
    assert record(conn, key)[0] == "login"
