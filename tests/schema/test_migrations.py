"""The four files apply, re-apply, roll back and re-apply, leaving exact catalogs."""

from __future__ import annotations

import re

import psycopg
import pytest

from tests import helpers
from tooling import migrations, records

# The contract's two migrations (docs/README_IDEMPOTENCY.md); any other pair in sql/ is read too.
CONTRACT = ("045_create_idempotency_records", "046_create_idempotency_cleanup_job")


def test_migration_file_names() -> None:
    found = migrations.migrations(helpers.SQL_DIR)  # raises, naming the file, on anything else in sql/
    names = sorted(path.name for path in helpers.SQL_DIR.iterdir())
    assert names == sorted(name for m in found for name in (m.up.name, m.down.name)), "sql/ holds migrations only"
    assert set(CONTRACT) <= {m.stem for m in found}, f"sql/ holds {CONTRACT}"
    for name in names:
        assert re.fullmatch(r"\d{3}_[a-z_]+(\.down)?\.sql", name), f"{name}: expected NNN_snake_name[.down].sql"


@pytest.mark.parametrize("path", [*helpers.UP_FILES, *helpers.DOWN_FILES], ids=lambda p: p.name)
def test_files_have_no_transaction_control_or_meta_commands(path: object) -> None:
    text = path.read_text()  # type: ignore[attr-defined]
    code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
    assert not re.search(r"^\s*\\", code, re.MULTILINE), f"{path}: psql meta-command"
    assert not re.search(r"\b(BEGIN|COMMIT|ROLLBACK|START\s+TRANSACTION)\s*;", code, re.IGNORECASE), (
        f"{path}: transaction control"
    )
    assert "CASCADE" not in code.upper(), f"{path}: CASCADE"


def test_up_down_up_leaves_the_same_catalog(empty_conn: psycopg.Connection) -> None:
    empty = helpers.catalog_snapshot(empty_conn)
    helpers.apply_all(empty_conn, helpers.UP_FILES)
    first = helpers.catalog_snapshot(empty_conn)
    assert first["relations"], "the up migrations created nothing"
    helpers.apply_all(empty_conn, helpers.DOWN_FILES)
    assert helpers.catalog_snapshot(empty_conn) == empty, "down must leave nothing behind"
    helpers.apply_all(empty_conn, helpers.UP_FILES)
    assert helpers.catalog_snapshot(empty_conn) == first, "up after down must rebuild the same catalog"


def test_down_with_data_present_leaves_nothing(conn: psycopg.Connection) -> None:
    records.insert_many(conn, 1000, records.live(operation="x", lifetime=records.HOUR))
    helpers.apply_all(conn, helpers.DOWN_FILES)
    assert helpers.catalog_snapshot(conn) == {kind: [] for kind in helpers.catalog_snapshot(conn)}


@pytest.mark.parametrize("path", helpers.UP_FILES, ids=lambda p: p.name)
def test_every_up_file_applied_twice_changes_nothing(conn: psycopg.Connection, path: object) -> None:
    before = helpers.catalog_snapshot(conn)
    helpers.apply(conn, path)  # type: ignore[arg-type]
    assert helpers.catalog_snapshot(conn) == before


@pytest.mark.parametrize("path", helpers.DOWN_FILES, ids=lambda p: p.name)
def test_every_down_file_applied_twice_succeeds(conn: psycopg.Connection, path: object) -> None:
    helpers.apply(conn, path)  # type: ignore[arg-type]
    after_once = helpers.catalog_snapshot(conn)
    helpers.apply(conn, path)  # type: ignore[arg-type]
    assert helpers.catalog_snapshot(conn) == after_once


def test_downs_without_their_ups_succeed_and_change_nothing(empty_conn: psycopg.Connection) -> None:
    empty = helpers.catalog_snapshot(empty_conn)
    helpers.apply_all(empty_conn, helpers.DOWN_FILES)
    assert helpers.catalog_snapshot(empty_conn) == empty


def test_up_keeps_rows_already_stored(conn: psycopg.Connection) -> None:
    records.insert(conn, records.live(operation="kept", lifetime=records.HOUR))
    helpers.apply_all(conn, helpers.UP_FILES)
    assert conn.execute("SELECT operation FROM idempotency_records").fetchall() == [("kept",)]


@pytest.mark.parametrize("stop_after", range(1, len(helpers.split_statements(helpers.UP_045.read_text()))))
def test_045_interrupted_part_way_completes_when_applied_again(empty_conn: psycopg.Connection, stop_after: int) -> None:
    """Without a wrapping transaction each statement commits on its own (psql -f
    without -1): a run cut after `stop_after` statements, then the whole file
    again, ends with the same catalog as one clean run."""
    statements = helpers.split_statements(helpers.UP_045.read_text())
    for statement in statements[:stop_after]:
        empty_conn.execute(statement)
    helpers.apply(empty_conn, helpers.UP_045)
    partial_then_full = helpers.catalog_snapshot(empty_conn)
    helpers.apply(empty_conn, helpers.DOWN_045)
    helpers.apply(empty_conn, helpers.UP_045)
    assert partial_then_full == helpers.catalog_snapshot(empty_conn)


def test_045_refuses_a_different_table_of_the_same_name(empty_conn: psycopg.Connection) -> None:
    empty_conn.execute("CREATE TABLE idempotency_records (request_id TEXT PRIMARY KEY, payload JSONB)")
    with pytest.raises(psycopg.errors.DuplicateTable) as raised:
        helpers.apply(empty_conn, helpers.UP_045)
    assert "already exists with other columns" in str(raised.value)
    assert raised.value.diag.message_detail and "request_id text not null" in raised.value.diag.message_detail
    # the whole file ran in one transaction: no index was added to the foreign table
    assert empty_conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'idempotency_records'").fetchone() == (
        1,
    )


def test_045_accepts_columns_a_project_added_later(conn: psycopg.Connection) -> None:
    conn.execute("ALTER TABLE idempotency_records ADD COLUMN tenant_id BIGINT")
    helpers.apply(conn, helpers.UP_045)
    assert conn.execute(
        "SELECT count(*) FROM pg_attribute WHERE attrelid = 'idempotency_records'::regclass AND attname = 'tenant_id'"
    ).fetchone() == (1,)
