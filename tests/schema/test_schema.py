"""The catalog holds exactly the schema the design report describes."""

from __future__ import annotations

import os

import psycopg
import pytest

from tests import catalog

TABLE = "idempotency_records"

# column: (type, not null, default)
EXPECTED_COLUMNS = {
    "request_id": ("uuid", True, None),
    "operation": ("character varying(100)", True, None),
    "result_payload": ("text", True, None),
    "status_code": ("integer", False, None),
    "created_at": ("timestamp with time zone", True, "now()"),
    "expires_at": ("timestamp with time zone", True, None),
}

# The optional 047's columns: a fresh migrate applies every pair in sql/, 047 included.
PROTOCOL_COLUMNS = {
    "request_hash": ("bytea", False, None),
    "lease_token": ("uuid", False, None),
}

# index: (columns, access method, unique, primary)
EXPECTED_INDEXES = {
    "idempotency_records_pkey": (["request_id"], "btree", True, True),
    "idx_idempotency_expires": (["expires_at"], "btree", False, False),
    "idx_idempotency_operation": (["operation"], "btree", False, False),
}


def test_table_exists_in_the_public_schema(conn: psycopg.Connection) -> None:
    row = conn.execute(
        "SELECT n.nspname, c.relkind FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
        "WHERE c.relname = %s",
        (TABLE,),
    ).fetchall()
    assert row == [("public", "r")], f"table {TABLE}: expected one ordinary table in public, got {row}"


def _columns(conn: psycopg.Connection) -> dict[str, tuple[str, bool, str | None]]:
    rows = conn.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid)
        FROM pg_attribute AS a
        LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid = 'idempotency_records'::regclass AND a.attnum > 0 AND NOT a.attisdropped
        """
    ).fetchall()
    return {name: (typ, notnull, default) for name, typ, notnull, default in rows}


def test_no_column_is_missing_or_extra(conn: psycopg.Connection) -> None:
    assert sorted(_columns(conn)) == sorted({**EXPECTED_COLUMNS, **PROTOCOL_COLUMNS}), "the report's six and 047's two"


@pytest.mark.parametrize("column", {**EXPECTED_COLUMNS, **PROTOCOL_COLUMNS})
def test_column_type_nullability_and_default(conn: psycopg.Connection, column: str) -> None:
    expected_type, expected_notnull, expected_default = {**EXPECTED_COLUMNS, **PROTOCOL_COLUMNS}[column]
    got_type, got_notnull, got_default = _columns(conn)[column]
    assert got_type == expected_type, f"column {column}: expected {expected_type}, got {got_type}"
    assert got_notnull == expected_notnull, f"column {column}: expected NOT NULL={expected_notnull}, got {got_notnull}"
    assert got_default == expected_default, f"column {column}: expected default {expected_default}, got {got_default}"


def _indexes(conn: psycopg.Connection) -> dict[str, tuple[list[str], str, bool, bool]]:
    rows = conn.execute(
        """
        SELECT ic.relname,
               array_agg(a.attname ORDER BY k.ord),
               am.amname, i.indisunique, i.indisprimary
        FROM pg_index AS i
        JOIN pg_class AS ic ON ic.oid = i.indexrelid
        JOIN pg_am AS am ON am.oid = ic.relam
        CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = 'idempotency_records'::regclass
        GROUP BY ic.relname, am.amname, i.indisunique, i.indisprimary
        """
    ).fetchall()
    return {name: (list(cols), am, unique, primary) for name, cols, am, unique, primary in rows}


def test_exactly_the_primary_key_and_two_indexes(conn: psycopg.Connection) -> None:
    assert sorted(_indexes(conn)) == sorted(EXPECTED_INDEXES)


@pytest.mark.parametrize("index", EXPECTED_INDEXES)
def test_index_columns_and_access_method(conn: psycopg.Connection, index: str) -> None:
    got = _indexes(conn).get(index)
    assert got == EXPECTED_INDEXES[index], (
        f"index {index}: expected (columns, am, unique, primary) {EXPECTED_INDEXES[index]}, got {got}"
    )


def test_primary_key_constraint_is_on_request_id(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'idempotency_records'::regclass AND contype = 'p'"
    ).fetchall()
    assert rows == [("idempotency_records_pkey", "PRIMARY KEY (request_id)")]


def test_chk_expires_at_definition(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        "SELECT conname, pg_get_constraintdef(oid), convalidated FROM pg_constraint "
        "WHERE conrelid = 'idempotency_records'::regclass AND contype = 'c'"
    ).fetchall()
    assert rows == [("chk_expires_at", "CHECK ((expires_at > created_at))", True)], (
        f"check constraints of {TABLE}: expected only chk_expires_at, got {rows}"
    )


def test_no_foreign_keys_triggers_or_rules(conn: psycopg.Connection) -> None:
    extra = conn.execute(
        """
        SELECT 'constraint ' || conname FROM pg_constraint
        WHERE conrelid = 'idempotency_records'::regclass AND contype NOT IN ('p', 'c', 'n')
        UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE tgrelid = 'idempotency_records'::regclass
        UNION ALL SELECT 'rule ' || rulename FROM pg_rules WHERE tablename = 'idempotency_records'
        """
    ).fetchall()
    assert extra == []


@pytest.mark.parametrize("column", [None, *EXPECTED_COLUMNS])
def test_table_and_every_column_have_a_comment(conn: psycopg.Connection, column: str | None) -> None:
    if column is None:
        row = conn.execute("SELECT obj_description('idempotency_records'::regclass, 'pg_class')").fetchone()
        what = f"table {TABLE}"
    else:
        row = conn.execute(
            "SELECT col_description('idempotency_records'::regclass, attnum) FROM pg_attribute "
            "WHERE attrelid = 'idempotency_records'::regclass AND attname = %s",
            (column,),
        ).fetchone()
        what = f"column {column}"
    assert row is not None and row[0], f"{what}: no comment"
    assert len(row[0]) >= 15, f"{what}: comment too short to document anything: {row[0]!r}"


def test_cleanup_function_signature(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        """
        SELECT n.nspname, pg_get_function_identity_arguments(p.oid), pg_get_function_result(p.oid),
               l.lanname, p.prosecdef, p.proretset
        FROM pg_proc AS p
        JOIN pg_namespace AS n ON n.oid = p.pronamespace
        JOIN pg_language AS l ON l.oid = p.prolang
        WHERE p.proname = 'cleanup_expired_idempotency_records'
        """
    ).fetchall()
    assert rows == [("public", "", "TABLE(deleted_count bigint)", "plpgsql", False, True)], (
        f"function cleanup_expired_idempotency_records: expected one plpgsql SECURITY INVOKER "
        f"function returning TABLE(deleted_count bigint), got {rows}"
    )


def test_cleanup_function_has_a_comment(conn: psycopg.Connection) -> None:
    row = conn.execute(
        "SELECT obj_description('cleanup_expired_idempotency_records()'::regprocedure, 'pg_proc')"
    ).fetchone()
    assert row is not None and row[0] and "expires_at" in row[0], f"function comment: got {row}"


def test_cleanup_function_search_path_is_pinned_to_its_schema(conn: psycopg.Connection) -> None:
    row = conn.execute(
        "SELECT proconfig FROM pg_proc WHERE oid = 'cleanup_expired_idempotency_records()'::regprocedure"
    ).fetchone()
    assert row == (["search_path=pg_catalog, public, pg_temp"],)


def test_the_catalog_is_the_committed_snapshot(conn: psycopg.Connection) -> None:
    """Every object of the schema, as tests/schema/catalog.json holds it: a change of the schema
    is a change of that file, one diff in review (`make snapshot` writes it)."""
    if os.environ.get(catalog.WRITE) == "1":
        changed = catalog.write(conn)
        print(f"{'wrote' if changed else 'unchanged'}: {catalog.SNAPSHOT}")
        return
    diff = catalog.difference(conn)
    assert not diff, (
        f"the catalog is not the committed snapshot; if the change is meant, run `{catalog.REGENERATE}` "
        f"and commit it:\n{diff}"
    )
