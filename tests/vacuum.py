"""VACUUM of the table as the tests watch it: expired records stored and cleaned up, the table's
statistics (vacuum_count, n_dead_tup) read once they arrive (a session reports its counts late),
the dead rows a VACUUM left; what holds vacuum back, as the guide's query lists it and as it listed
it before (kept as the counter-example of the tests that show what it got wrong)."""

from __future__ import annotations

import time

import psycopg

from tests.docblocks import GUIDE, block_with
from tooling import records

# The guide's "What holds back vacuum" query as it printed it before: sessions by backend_xmin
# only, of every database; every slot, logical ones included; every database's prepared
# transactions.
OLD_HOLDERS = """
SELECT 'session' AS holder, pid::TEXT AS id, age(backend_xmin) AS xmin_age, state, xact_start AS since
FROM pg_stat_activity
WHERE backend_xmin IS NOT NULL
UNION ALL
SELECT 'replication slot', slot_name::TEXT, greatest(age(xmin), age(catalog_xmin)),
       CASE WHEN active THEN 'active' ELSE 'inactive' END, NULL
FROM pg_replication_slots
WHERE xmin IS NOT NULL OR catalog_xmin IS NOT NULL
UNION ALL
SELECT 'prepared transaction', gid, age(transaction), 'prepared', prepared
FROM pg_prepared_xacts
ORDER BY xmin_age DESC
"""


def guide_holders() -> str:
    """The guide's "What holds back vacuum" query, as it prints it now."""
    return block_with("FROM pg_prepared_xacts", GUIDE).text


def holders(conn: psycopg.Connection, query: str) -> set[tuple[str, str]]:
    """What a holders query (the guide's, or the old one) lists: (holder, id) pairs."""
    return {(row[0], row[1]) for row in conn.execute(query)}


def clean_up(conn: psycopg.Connection, rows: int) -> None:
    """The cleanup function, which deletes exactly `rows` records."""
    assert conn.execute("SELECT deleted_count FROM cleanup_expired_idempotency_records()").fetchone() == (rows,)


def expired_and_cleaned_up(conn: psycopg.Connection, rows: int) -> None:
    """Store `rows` expired records and clean them up: `rows` dead rows for vacuum."""
    records.insert_many(conn, rows, records.expired())
    clean_up(conn, rows)


def statistics(
    conn: psycopg.Connection, until: str = "TRUE", columns: tuple[str, ...] = ("vacuum_count", "n_dead_tup")
) -> tuple[int, ...]:
    """The table's statistics `columns` (of pg_stat_user_tables: vacuum_count and n_dead_tup unless
    told), once `until` holds; this session's own counts are flushed first, so that none of them
    arrives afterwards."""
    for _ in range(400):
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            f"SELECT {', '.join(columns)}, {until} FROM pg_stat_user_tables "
            "WHERE relid = 'idempotency_records'::regclass"
        ).fetchone()
        assert row is not None
        if row[-1]:
            return tuple(int(value) for value in row[:-1])
        time.sleep(0.05)
    raise AssertionError(f"the table's statistics never showed {until}")


def dead_rows_after_vacuum(conn: psycopg.Connection) -> int:
    """VACUUM the table, as the connection's role: the dead rows it could not remove."""
    before, _ = statistics(conn)
    conn.execute("VACUUM idempotency_records")
    _, dead = statistics(conn, f"vacuum_count > {before}")
    return dead


def dead_rows_after_cleanup(conn: psycopg.Connection, rows: int) -> int:
    """Store `rows` expired records, clean up, VACUUM: the dead rows vacuum could not remove."""
    expired_and_cleaned_up(conn, rows)
    return dead_rows_after_vacuum(conn)
