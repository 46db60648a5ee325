"""Records of idempotency_records, made one way. Every record the suite and the benchmark store to
start from is built here, so that the columns, and what a record holds unless a caller says
otherwise, are written once: a column added to the table gets its place in COLUMNS and its value
in Record and insert_many() here, not in every test.

Times are explicit: created_at and expires_at are always given, never left to the column's
default, each as an offset from one instant, the server's now() (the start of the transaction,
frozen inside it) or the instant a caller passes as `now`; or as a timestamp of its own
('infinity' too). An expired record and a live one are exactly what the caller says.

Not built here: the statements whose text is what a test proves (the report's save, a statement
the docs print, a recipe); tests/statements.py holds them, and save_params() fills them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

TABLE = "idempotency_records"
COLUMNS = ("request_id", "operation", "result_payload", "status_code", "created_at", "expires_at")

# What a record holds unless the caller says otherwise.
OPERATION = "payment"
RESULT_PAYLOAD = "{}"
STATUS_CODE = 201
LIFETIME = dt.timedelta(hours=24)

# An offset from the instant the records are made relative to, or a timestamp of its own.
Stamp = dt.timedelta | dt.datetime | str


@dataclasses.dataclass(frozen=True)
class Record:
    """One record: its values, and its two times as offsets from `now` or as timestamps."""

    request_id: uuid.UUID | str = dataclasses.field(default_factory=uuid.uuid4)
    operation: str = OPERATION
    result_payload: str = RESULT_PAYLOAD
    status_code: int | None = STATUS_CODE
    created_at: Stamp = dt.timedelta(0)
    expires_at: Stamp = LIFETIME


def live(
    request_id: uuid.UUID | str | None = None,
    *,
    lifetime: dt.timedelta = LIFETIME,
    age: dt.timedelta = dt.timedelta(0),
    **values: Any,
) -> Record:
    """A valid record, created `age` before now and valid for `lifetime` from its creation."""
    return Record(request_id or uuid.uuid4(), created_at=-age, expires_at=lifetime - age, **values)


def expired(
    request_id: uuid.UUID | str | None = None,
    *,
    ago: dt.timedelta = dt.timedelta(hours=1),
    lifetime: dt.timedelta = dt.timedelta(hours=1),
    **values: Any,
) -> Record:
    """A record that expired `ago` before now, `lifetime` after its creation."""
    return Record(request_id or uuid.uuid4(), created_at=-(ago + lifetime), expires_at=-ago, **values)


def _instant(now: dt.datetime | None) -> sql.Composable:
    return sql.SQL("now()") if now is None else sql.SQL("{}::timestamptz").format(sql.Literal(now))


def _stamp(value: Stamp, now: sql.Composable) -> sql.Composable:
    if isinstance(value, dt.timedelta):
        return sql.SQL("{} + {}::interval").format(now, sql.Literal(value))
    return sql.SQL("{}::timestamptz").format(sql.Literal(value))


def _columns() -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(column) for column in COLUMNS)


def insert(conn: psycopg.Connection, *records: Record, now: dt.datetime | None = None) -> list[uuid.UUID]:
    """Store the records in one statement; return their keys, in order."""
    instant = _instant(now)
    rows = [
        sql.SQL("({}::uuid, {}, {}, {}::integer, {}, {})").format(
            sql.Placeholder(),
            sql.Placeholder(),
            sql.Placeholder(),
            sql.Placeholder(),
            _stamp(record.created_at, instant),
            _stamp(record.expires_at, instant),
        )
        for record in records
    ]
    params = [
        value
        for record in records
        for value in (record.request_id, record.operation, record.result_payload, record.status_code)
    ]
    query = sql.SQL("INSERT INTO {} ({}) VALUES {} RETURNING request_id").format(
        sql.Identifier(TABLE), _columns(), sql.SQL(", ").join(rows)
    )
    cursor = conn.execute(query, params)
    keys = [row[0] for row in cursor.fetchall()]
    assert len(keys) == len(records), f"stored {len(keys)} of {len(records)} records"
    return keys


# In an expression given to insert_many(): the row's number, the instant the records are made
# relative to, and the row's created_at.
ROW = sql.SQL("i")
NOW = sql.SQL("instant.now")
CREATED_AT = sql.SQL("stamp.created_at")
RANDOM_KEY = sql.SQL("gen_random_uuid()")


def _value(value: object, cast: str) -> sql.Composable:
    if isinstance(value, sql.Composable):
        return value
    return sql.SQL("{}::{}").format(sql.Literal(value), sql.SQL(cast))


def insert_many(
    conn: psycopg.Connection,
    count: int,
    *,
    first: int = 1,
    request_id: sql.Composable = RANDOM_KEY,
    operation: str | Sequence[str] = OPERATION,
    result_payload: str | sql.Composable = RESULT_PAYLOAD,
    status_code: int | None = STATUS_CODE,
    created_at: Stamp | sql.Composable = dt.timedelta(0),
    expires_at: Stamp | sql.Composable | None = LIFETIME,
    lifetime: dt.timedelta | None = None,
    spread: dt.timedelta = dt.timedelta(0),
    now: dt.datetime | None = None,
    shuffled: bool = False,
    returning: bool = False,
) -> list[uuid.UUID]:
    """Store `count` records, rows `first` to `first + count - 1`, in one statement; with
    `returning`, return their keys.

    Every value is the same for each row unless given as an SQL expression of ROW (the row's
    number), NOW and, for expires_at, CREATED_AT. A sequence of operations is dealt out in turn
    (row i gets operations[i % len]). Row i expires `i * spread` later than expires_at says (a
    negative spread: earlier), or `lifetime` after its created_at. Stored in row order, or in
    random order with `shuffled`, so that the table's physical order says nothing of the times.
    """
    if isinstance(operation, str):
        operations: sql.Composable = sql.SQL("{}::text").format(sql.Literal(operation))
    else:
        operations = sql.SQL("({}::text[])[1 + {} % {}]").format(sql.Literal(list(operation)), ROW, len(operation))
    created = created_at if isinstance(created_at, sql.Composable) else _stamp(created_at, NOW)
    if lifetime is not None:
        assert expires_at is None or expires_at == LIFETIME, "give expires_at or lifetime, not both"
        expires: sql.Composable = sql.SQL("{} + {}::interval").format(CREATED_AT, sql.Literal(lifetime))
    elif isinstance(expires_at, sql.Composable):
        expires = expires_at
    else:
        assert expires_at is not None, "give expires_at or lifetime"
        expires = _stamp(expires_at, NOW)
    if spread:
        expires = sql.SQL("{} + {} * {}::interval").format(expires, ROW, sql.Literal(spread))
    query = sql.SQL(
        "INSERT INTO {table} ({columns})\n"
        "SELECT {request_id}, {operation}, {result_payload}, {status_code}, {created_at}, {expires_at}\n"
        "FROM generate_series({first}::bigint, {last}::bigint) AS i\n"
        "CROSS JOIN (SELECT {instant} AS now) AS instant\n"
        "CROSS JOIN LATERAL (SELECT {created} AS created_at) AS stamp\n"
        "{order}"
        "{returning}"
    ).format(
        table=sql.Identifier(TABLE),
        columns=_columns(),
        request_id=request_id,
        operation=operations,
        result_payload=_value(result_payload, "text"),
        status_code=_value(status_code, "integer"),
        created_at=CREATED_AT,
        expires_at=expires,
        first=sql.Literal(first),
        last=sql.Literal(first + count - 1),
        instant=_instant(now),
        created=created,
        order=sql.SQL("ORDER BY random()\n" if shuffled else ""),
        returning=sql.SQL("RETURNING request_id" if returning else ""),
    )
    cursor = conn.execute(query)
    return [row[0] for row in cursor.fetchall()] if returning else []


def save_params(
    request_id: uuid.UUID | str,
    operation: str = OPERATION,
    result_payload: str = RESULT_PAYLOAD,
    status_code: int | None = STATUS_CODE,
    ttl_hours: float | None = LIFETIME / dt.timedelta(hours=1),
) -> dict[str, object]:
    """The parameters of a save (the report's, the guarded one, a recipe's claim or insert-or-read),
    in the order of the report's $1..$5, by the names tests/statements.py gives them."""
    return {
        "request_id": request_id,
        "operation": operation,
        "result_payload": result_payload,
        "status_code": status_code,
        "ttl_hours": ttl_hours,
    }
