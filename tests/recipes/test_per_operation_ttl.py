"""Recipe 5: the lifetime of a record depends on its operation (the claim's CASE).

payment and transfer 72 hours, login and auth 1 hour, anything else 24 hours; the
same lifetime applies when the claim takes over an expired record of any operation.
"""

from __future__ import annotations

import datetime
import uuid

import psycopg
import pytest

from tests.statements import CLAIM, REPORT_SAVE
from tooling import records
from tooling.records import DAY, save_params

LIFETIMES = {
    "payment": datetime.timedelta(hours=72),
    "transfer": datetime.timedelta(hours=72),
    "login": datetime.timedelta(hours=1),
    "auth": datetime.timedelta(hours=1),
    "refund": datetime.timedelta(hours=24),
    "export": datetime.timedelta(hours=24),
}


def lifetime(conn: psycopg.Connection, key: uuid.UUID) -> datetime.timedelta:
    row = conn.execute(
        "SELECT expires_at - created_at FROM idempotency_records WHERE request_id = %s", (key,)
    ).fetchone()
    assert row is not None
    return row[0]


@pytest.mark.parametrize("operation", sorted(LIFETIMES))
def test_claim_gives_each_operation_its_lifetime(conn: psycopg.Connection, operation: str) -> None:
    key = uuid.uuid4()
    conn.execute(CLAIM, {"request_id": key, "operation": operation})
    assert lifetime(conn, key) == LIFETIMES[operation], f"operation {operation}: expected {LIFETIMES[operation]}"


def test_a_taken_over_expired_record_gets_the_new_operations_lifetime(conn: psycopg.Connection) -> None:
    key = uuid.uuid4()
    records.insert(conn, records.expired(key, ago=DAY, lifetime=3 * DAY))
    conn.execute(CLAIM, {"request_id": key, "operation": "login"})
    assert lifetime(conn, key) == LIFETIMES["login"], "the old payment's 72 hours do not carry over"


def test_naive_fixed_ttl_gives_every_operation_the_same_lifetime(conn: psycopg.Connection) -> None:
    """The report's save takes one TTL for every call: a payment saved by a caller that
    passes the default keeps its key for 24 hours, not 72."""
    key = uuid.uuid4()
    conn.execute(REPORT_SAVE, save_params(key, "payment", "{}", 201, 24))
    assert lifetime(conn, key) != LIFETIMES["payment"]
