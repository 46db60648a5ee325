"""The migrations work in a schema other than public, and the cleanup function deletes from the
table of the schema it was installed in, never from a same-named table that the caller's
search_path (or a temporary table) finds first."""

from __future__ import annotations

import uuid

import psycopg
from psycopg import sql

from tests import helpers
from tooling import records

CLEANUP = "SELECT deleted_count FROM cleanup_expired_idempotency_records()"


def _table(schema: str) -> sql.Identifier:
    return sql.Identifier(schema, "idempotency_records")


def _insert_expired(conn: psycopg.Connection, schema: str) -> None:
    records.insert(conn, records.expired(operation="old"), schema=schema)


def _count(conn: psycopg.Connection, schema: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(_table(schema))).fetchone()
    assert row is not None
    return int(row[0])


def _install(conn: psycopg.Connection, schema: str) -> None:
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
    helpers.apply_all(conn, helpers.UP_FILES)


def test_the_migrations_install_into_a_non_public_schema(empty_conn: psycopg.Connection) -> None:
    _install(empty_conn, "app")
    found = empty_conn.execute(
        "SELECT to_regclass('app.idempotency_records'), to_regclass('public.idempotency_records'), "
        "to_regprocedure('app.cleanup_expired_idempotency_records()'), "
        "to_regprocedure('public.cleanup_expired_idempotency_records()')"
    ).fetchone()
    assert found is not None
    assert found[0] is not None and found[2] is not None, "the table and the function are in schema app"
    assert found[1] is None and found[3] is None, "nothing is created in public"
    indexes = {r[0] for r in empty_conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'app'")}
    assert indexes == {"idempotency_records_pkey", "idx_idempotency_expires", "idx_idempotency_operation"}


def test_the_package_works_in_a_non_public_schema(empty_conn: psycopg.Connection) -> None:
    _install(empty_conn, "app")
    key = str(uuid.uuid4())
    records.insert(empty_conn, records.live(key, status_code=201))
    _insert_expired(empty_conn, "app")
    stored = empty_conn.execute(
        "SELECT status_code FROM idempotency_records WHERE request_id = %s AND expires_at > now()", (key,)
    ).fetchall()
    empty_conn.execute("SET search_path = public")
    deleted = empty_conn.execute("SELECT deleted_count FROM app.cleanup_expired_idempotency_records()").fetchall()
    assert stored == [(201,)], "the record stored under search_path = app is found"
    assert deleted == [(1,)], "the qualified function, called with another search_path, deletes app's expired record"
    assert _count(empty_conn, "app") == 1, "the live record stays"


def test_the_down_migrations_remove_the_non_public_install(empty_conn: psycopg.Connection) -> None:
    _install(empty_conn, "app")
    helpers.apply_all(empty_conn, helpers.DOWN_FILES)
    objects = empty_conn.execute("SELECT count(*) FROM pg_class WHERE relnamespace = 'app'::regnamespace").fetchone()
    functions = empty_conn.execute("SELECT count(*) FROM pg_proc WHERE pronamespace = 'app'::regnamespace").fetchone()
    assert (objects, functions) == ((0,), (0,)), "the down migrations leave schema app empty"


def test_cleanup_ignores_a_same_named_table_earlier_on_the_search_path(conn: psycopg.Connection) -> None:
    conn.execute("CREATE SCHEMA decoy")
    conn.execute("CREATE TABLE decoy.idempotency_records (LIKE public.idempotency_records INCLUDING ALL)")
    _insert_expired(conn, "public")
    _insert_expired(conn, "decoy")
    conn.execute("SET search_path = decoy, public")
    deleted = conn.execute(CLEANUP).fetchall()
    assert deleted == [(1,)], "the function deletes one record: the one in its own schema"
    assert _count(conn, "public") == 0, "public's expired record is deleted"
    assert _count(conn, "decoy") == 1, "the decoy table, first on the search_path, is untouched"


def test_cleanup_ignores_a_temporary_table_of_the_same_name(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TEMPORARY TABLE idempotency_records (LIKE public.idempotency_records INCLUDING ALL)")
    _insert_expired(conn, "public")
    _insert_expired(conn, "pg_temp")
    deleted = conn.execute(CLEANUP).fetchall()
    assert deleted == [(1,)], "the function deletes one record: the one in its own schema"
    assert _count(conn, "public") == 0, "public's expired record is deleted"
    assert _count(conn, "pg_temp") == 1, "the temporary table, searched first, is untouched"
