"""The record factory (tooling/records.py): the records it stores hold exactly the values and times
asked for, relative to the server's now() or to a given instant; it knows every column of the table."""

from __future__ import annotations

import datetime as dt
import uuid

import psycopg
from psycopg import sql

from tests.helpers import DOWN_047 as DOWN_047
from tests.statements import GUARDED_SAVE, PLACEHOLDER, REPORT_SAVE
from tooling import records

HOUR = dt.timedelta(hours=1)


def test_the_factory_knows_every_column_of_the_table(conn: psycopg.Connection) -> None:
    columns = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'idempotency_records'::regclass "
        "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
    ).fetchall()
    assert tuple(name for (name,) in columns) == records.COLUMNS, (
        "a column of the table is missing from records.COLUMNS"
    )


def test_a_live_and_an_expired_record_have_the_times_asked_for(conn: psycopg.Connection) -> None:
    with conn.transaction():
        keys = records.insert(
            conn,
            records.live(lifetime=2 * HOUR, age=HOUR, operation="login", status_code=200),
            records.expired(ago=HOUR, lifetime=3 * HOUR, result_payload='{"n": 1}'),
        )
        rows = conn.execute(
            "SELECT request_id, operation, result_payload, status_code, created_at - now(), expires_at - now() "
            "FROM idempotency_records ORDER BY expires_at DESC"
        ).fetchall()
    assert rows == [
        (keys[0], "login", "{}", 200, -HOUR, HOUR),
        (keys[1], "payment", '{"n": 1}', None, -4 * HOUR, -HOUR),
    ]


def test_records_are_made_relative_to_a_given_instant(conn: psycopg.Connection) -> None:
    instant = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    key = uuid.uuid4()
    records.insert(conn, records.Record(key, created_at=-HOUR, expires_at="infinity"), now=instant)
    records.insert_many(conn, 3, records.live(age=HOUR, lifetime=2 * HOUR), now=instant, spread=HOUR)
    stamps = conn.execute(
        "SELECT created_at, nullif(expires_at, 'infinity') FROM idempotency_records ORDER BY expires_at"
    ).fetchall()
    assert stamps == [
        (instant, instant + 2 * HOUR),
        (instant + HOUR, instant + 3 * HOUR),
        (instant + 2 * HOUR, instant + 4 * HOUR),
        (instant - HOUR, None),
    ]


def test_many_records_deal_out_operations_and_spread_their_expiry(conn: psycopg.Connection) -> None:
    with conn.transaction():  # one now() for the records and the query
        keys = records.insert_many(
            conn, 6, records.expired(lifetime=9 * HOUR), operations=("a", "b", "c"), spread=-HOUR, returning=True
        )
        rows = conn.execute(
            "SELECT operation, created_at - now(), expires_at - now() FROM idempotency_records ORDER BY expires_at DESC"
        ).fetchall()
    assert len(set(keys)) == 6
    assert rows == [(op, -(10 + i) * HOUR, -(1 + i) * HOUR) for i, op in enumerate("bcabca", start=1)]


def test_an_expression_of_the_row_number_makes_each_row(conn: psycopg.Connection) -> None:
    records.insert_many(
        conn,
        3,
        records.Record(created_at=-HOUR),
        first=5,
        request_id=sql.SQL("md5({}::text)::uuid").format(records.ROW),
        result_payload=sql.SQL("repeat('x', {}::integer)").format(records.ROW),
        lifetime=3 * HOUR,
        shuffled=True,
    )
    rows = conn.execute(
        "SELECT request_id = md5(length(result_payload)::text)::uuid, expires_at - created_at "
        "FROM idempotency_records ORDER BY length(result_payload)"
    ).fetchall()
    assert rows == [(True, 3 * HOUR)] * 3


def test_one_builder_fills_every_save() -> None:
    for name, statement in (("REPORT_SAVE", REPORT_SAVE), ("GUARDED_SAVE", GUARDED_SAVE)):
        wanted = set(PLACEHOLDER.findall(statement))
        assert wanted == set(records.save_params("k")), f"{name} takes {sorted(wanted)}"


def test_the_protocols_columns_are_named_only_where_a_record_holds_a_value(conn: psycopg.Connection) -> None:
    """047's two columns: a record holding a hash or a token stores it; records that hold none
    store on a table without them (047 rolled back) as well."""
    token, digest = uuid.uuid4(), b"\x01" * 32
    key = records.insert(conn, records.live(request_hash=digest, lease_token=token))[0]
    stored = conn.execute(
        "SELECT request_hash, lease_token FROM idempotency_records WHERE request_id = %s", (key,)
    ).fetchone()
    assert stored == (digest, token)
    records.insert_many(conn, 2, records.live(), lease_token=sql.Literal(token))
    assert conn.execute("SELECT count(*) FROM idempotency_records WHERE lease_token = %s", (token,)).fetchone() == (3,)
    conn.execute("DELETE FROM idempotency_records")
    conn.execute(DOWN_047.read_text())
    records.insert(conn, records.live(), records.expired())
    records.insert_many(conn, 3, records.live())
    assert conn.execute("SELECT count(*) FROM idempotency_records").fetchone() == (5,)
