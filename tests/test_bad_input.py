"""Bad input gets PostgreSQL's clear error, names the constraint, and writes nothing.

Each case is inserted with parameters into a table that already holds one record;
the test asserts the SQLSTATE, the constraint name where there is one, and that
the table still holds exactly that record."""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg
import pytest

from tests.helpers import count

EXISTING = "11111111-1111-1111-1111-111111111111"

INSERT = (
    "INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, created_at, expires_at) "
    "VALUES (%(request_id)s, %(operation)s, %(result_payload)s, %(status_code)s, "
    "coalesce(%(created_at)s, now()), %(expires_at)s)"
)

GOOD: dict[str, Any] = {
    "request_id": "22222222-2222-2222-2222-222222222222",
    "operation": "payment",
    "result_payload": "{}",
    "status_code": 200,
    "created_at": None,
    "expires_at": "2999-01-01T00:00:00Z",
}


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    changes: dict[str, Any]
    sqlstate: str
    constraint: str | None = None
    sql: str = INSERT


CASES = [
    Case("null request_id", {"request_id": None}, "23502"),
    Case("null operation", {"operation": None}, "23502"),
    Case("null result_payload", {"result_payload": None}, "23502"),
    Case("null expires_at", {"expires_at": None}, "23502"),
    Case("operation of 101 characters", {"operation": "x" * 101}, "22001"),
    Case("malformed uuid", {"request_id": "not-a-uuid"}, "22P02"),
    Case("plain insert of an existing key", {"request_id": EXISTING}, "23505", "idempotency_records_pkey"),
    Case(
        "expires_at equal to created_at",
        {"created_at": "2030-01-01T00:00:00Z", "expires_at": "2030-01-01T00:00:00Z"},
        "23514",
        "chk_expires_at",
    ),
    Case(
        "expires_at before created_at",
        {"created_at": "2030-01-01T00:00:00Z", "expires_at": "2029-12-31T23:59:59Z"},
        "23514",
        "chk_expires_at",
    ),
]


@pytest.fixture
def one_record(conn: psycopg.Connection) -> psycopg.Connection:
    conn.execute(INSERT, {**GOOD, "request_id": EXISTING})
    return conn


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_rejected_and_writes_nothing(one_record: psycopg.Connection, case: Case) -> None:
    with pytest.raises(psycopg.Error) as raised:
        one_record.execute(case.sql, {**GOOD, **case.changes})
    error = raised.value
    assert error.sqlstate == case.sqlstate, (
        f"{case.name}: expected SQLSTATE {case.sqlstate}, got {error.sqlstate} ({error})"
    )
    if case.constraint is not None:
        assert error.diag.constraint_name == case.constraint, f"{case.name}: constraint {error.diag.constraint_name}"
    if case.sqlstate == "23502":
        assert error.diag.column_name == next(iter(case.changes)), f"{case.name}: column {error.diag.column_name}"
    assert count(one_record) == 1, f"{case.name}: the table must still hold only the existing record"
    assert one_record.execute(
        "SELECT operation, result_payload FROM idempotency_records WHERE request_id = %s", (EXISTING,)
    ).fetchone() == ("payment", "{}"), f"{case.name}: the existing record must be unchanged"


def test_operation_of_exactly_100_characters_is_accepted(conn: psycopg.Connection) -> None:
    conn.execute(INSERT, {**GOOD, "operation": "x" * 100})
    assert count(conn, "length(operation) = 100") == 1
