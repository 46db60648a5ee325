"""Records of idempotency_records, made one way. Every record the suite and the benchmark store to
start from is built here, so that the columns, and what a record holds unless a caller says
otherwise, are written once: a column added to the table is a field of Record here (COLUMNS
follows), not an edit of every test.

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

MILLISECOND, SECOND, MINUTE, HOUR, DAY = (
    dt.timedelta(milliseconds=1),
    dt.timedelta(seconds=1),
    dt.timedelta(minutes=1),
    dt.timedelta(hours=1),
    dt.timedelta(days=1),
)
LIFETIME = 24 * HOUR
SAVED_STATUS_CODE = 201  # what a save stores unless the caller says otherwise

# An offset from the instant the records are made relative to, or a timestamp of its own.
Stamp = dt.timedelta | dt.datetime | str
STAMPS = ("created_at", "expires_at")


@dataclasses.dataclass(frozen=True)
class Record:
    """One record: a field per column of the table, in the table's order, with what it holds
    unless the caller says otherwise (no status code: a record claimed before its result is
    stored); its two times as offsets from `now`, or timestamps."""

    request_id: uuid.UUID | str = dataclasses.field(default_factory=uuid.uuid4)
    operation: str = "payment"
    result_payload: str = "{}"
    status_code: int | None = None
    created_at: Stamp = dt.timedelta(0)
    expires_at: Stamp = LIFETIME
    # The optional protocol's (047), nullable without a default: a record of the report's
    # statements holds NULL in both.
    request_hash: bytes | None = None
    lease_token: uuid.UUID | None = None


COLUMNS = tuple(field.name for field in dataclasses.fields(Record))
# Named in an INSERT only when a record holds a value there: the records then store on a table
# without 047 too, and hold what they would hold on one with it.
PROTOCOL_COLUMNS = ("request_hash", "lease_token")


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
    ago: dt.timedelta = HOUR,
    lifetime: dt.timedelta = HOUR,
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


def _columns(columns: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(column) for column in columns)


def _named(*values: dict[str, object]) -> tuple[str, ...]:
    """The columns an INSERT names: all but those of 047 that hold no value in any record."""
    return tuple(c for c in COLUMNS if c not in PROTOCOL_COLUMNS or any(v.get(c) is not None for v in values))


def _table(schema: str | None) -> sql.Identifier:
    return sql.Identifier(TABLE) if schema is None else sql.Identifier(schema, TABLE)


def insert(
    conn: psycopg.Connection, *records: Record, now: dt.datetime | None = None, schema: str | None = None
) -> list[uuid.UUID]:
    """Store the records in one statement, into the table the search_path finds or the one of
    `schema`; return their keys, in order."""
    instant = _instant(now)
    columns = _named(*(dataclasses.asdict(record) for record in records))
    rows = []
    params: list[object] = []
    for record in records:
        values = []
        for column in columns:
            value = getattr(record, column)
            if column in STAMPS:
                values.append(_stamp(value, instant))
            else:
                values.append(sql.Placeholder())
                params.append(value)
        rows.append(sql.SQL("({})").format(sql.SQL(", ").join(values)))
    query = sql.SQL("INSERT INTO {} ({}) VALUES {} RETURNING request_id").format(
        _table(schema), _columns(columns), sql.SQL(", ").join(rows)
    )
    keys = [row[0] for row in conn.execute(query, params).fetchall()]
    assert len(keys) == len(records), f"stored {len(keys)} of {len(records)} records"
    return keys


# In an expression given to insert_many(): the row's number, the instant the records are made
# relative to, and the row's created_at.
ROW = sql.SQL("i")
NOW = sql.SQL("instant.now")
CREATED_AT = sql.SQL("stamp.created_at")
RANDOM_KEY = sql.SQL("gen_random_uuid()")


def insert_many(
    conn: psycopg.Connection,
    count: int,
    like: Record | None = None,
    *,
    first: int = 1,
    operations: Sequence[str] = (),
    spread: dt.timedelta = dt.timedelta(0),
    lifetime: dt.timedelta | None = None,
    now: dt.datetime | None = None,
    shuffled: bool = False,
    returning: bool = False,
    schema: str | None = None,
    **expressions: sql.Composable,
) -> list[uuid.UUID]:
    """Store `count` records like `like` (a Record, live() or expired()), rows `first` to
    `first + count - 1`, in one statement, each with a random key; with `returning`, return the keys.

    `operations` are dealt out in turn (row i gets operations[i % len]). Row i is made `i * spread`
    later than `like` says, its created_at and expires_at both (a negative spread: earlier); with
    `lifetime`, it expires that long after its created_at. A column given in `expressions` is that SQL expression instead, of ROW (the row's
    number), NOW and, for expires_at, CREATED_AT. Stored in row order, or with `shuffled` in random
    order, so that the table's physical order says nothing of the times.
    """
    like = like or Record()
    unknown = expressions.keys() - set(COLUMNS)
    assert not unknown, f"no such column: {sorted(unknown)}"
    values: dict[str, sql.Composable] = {column: sql.Literal(getattr(like, column)) for column in COLUMNS}
    values["request_id"] = RANDOM_KEY
    if operations:
        values["operation"] = sql.SQL("({}::text[])[1 + {} % {}]").format(
            sql.Literal(list(operations)), ROW, sql.Literal(len(operations))
        )
    later = sql.SQL(" + {} * {}::interval").format(ROW, sql.Literal(spread)) if spread else sql.SQL("")
    created = expressions.pop("created_at", sql.Composed([_stamp(like.created_at, NOW), later]))
    values["created_at"] = CREATED_AT
    if lifetime is not None:
        values["expires_at"] = sql.SQL("{} + {}::interval").format(CREATED_AT, sql.Literal(lifetime))
    else:
        values["expires_at"] = sql.Composed([_stamp(like.expires_at, NOW), later])
    values.update(expressions)
    columns = _named(dataclasses.asdict(like), {column: values[column] for column in expressions})
    query = sql.SQL(
        "INSERT INTO {table} ({columns})\n"
        "SELECT {values}\n"
        "FROM generate_series({first}::bigint, {last}::bigint) AS i\n"
        "CROSS JOIN (SELECT {instant} AS now) AS instant\n"
        "CROSS JOIN LATERAL (SELECT {created} AS created_at) AS stamp\n"
        "{order}"
        "{returning}"
    ).format(
        table=_table(schema),
        columns=_columns(columns),
        values=sql.SQL(", ").join(values[column] for column in columns),
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
    operation: str = "payment",
    result_payload: str = "{}",
    status_code: int | None = SAVED_STATUS_CODE,
    ttl_hours: float | None = LIFETIME / HOUR,
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
