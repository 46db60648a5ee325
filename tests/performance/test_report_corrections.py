"""Where the design report is wrong, the guide says so, and these tests prove the guide right.

Each test fails on the report's original statement: the primary key is a hash index with O(1)
lookups; an expired record can be inserted as is; any TTL works; the retention UPDATE is safe for
the application role; 40,000 rows take about 12 MB. The guide quotes the measured storage figures,
and a test keeps them within a tolerance of what a real table measures.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid

import psycopg
import pytest
from psycopg import sql

from tests.helpers import ROOT, explain, plan_nodes, sqlstate_of
from tests.statements import REPORT_SAVE
from tooling import records
from tooling.records import HOUR, MINUTE, Record, save_params

GUIDE = ROOT / "docs" / "performance.md"  # the guide's evidence page: plans and storage

REPORT_CLEANUP = "DELETE FROM idempotency_records WHERE expires_at <= NOW()"

STORAGE_ROWS = 40_000
PAYLOAD_BYTES = 200
STORAGE_TOLERANCE = 0.15  # random UUIDs split primary-key pages differently from run to run


def test_the_primary_key_is_a_btree_not_a_hash_index(conn: psycopg.Connection) -> None:
    methods = conn.execute(
        """
        SELECT c.relname, am.amname
        FROM pg_index AS i
        JOIN pg_class AS c ON c.oid = i.indexrelid
        JOIN pg_am AS am ON am.oid = c.relam
        WHERE i.indrelid = 'idempotency_records'::regclass
        ORDER BY 1
        """
    ).fetchall()
    assert ("idempotency_records_pkey", "btree") in methods, (
        f"the primary key is a B-tree (O(log n) lookups), not a hash index: {methods}"
    )
    assert all(method == "btree" for _, method in methods), f"no index of the table is a hash index: {methods}"


def test_an_expired_record_with_the_default_created_at_is_rejected(conn: psycopg.Connection) -> None:
    state = sqlstate_of(
        conn,
        "INSERT INTO idempotency_records (request_id, operation, result_payload, expires_at) "
        "VALUES (%s, 'test', '{}', NOW() - INTERVAL '1 hour')",
        (str(uuid.uuid4()),),
    )
    assert state == "23514", f"an already expired record needs an earlier created_at; got SQLSTATE {state}"


@pytest.mark.parametrize("ttl_hours", [0, -1])
def test_the_reports_save_rejects_a_ttl_that_is_not_positive(conn: psycopg.Connection, ttl_hours: int) -> None:
    state = sqlstate_of(conn, REPORT_SAVE, save_params(str(uuid.uuid4()), "payment", "{}", 201, ttl_hours))
    assert state == "23514", f"a TTL of {ttl_hours} hours violates chk_expires_at; got SQLSTATE {state}"


def test_the_reports_save_rejects_a_missing_ttl(conn: psycopg.Connection) -> None:
    state = sqlstate_of(conn, REPORT_SAVE, save_params(str(uuid.uuid4()), "payment", "{}", 201, None))
    assert state == "23502", f"a NULL TTL makes expires_at NULL, which NOT NULL rejects; got SQLSTATE {state}"


def test_infinity_is_allowed_and_never_cleaned_up(conn: psycopg.Connection) -> None:
    key = str(uuid.uuid4())
    records.insert(conn, Record(key, operation="audit", expires_at="infinity"))
    conn.execute("SELECT cleanup_expired_idempotency_records()")
    conn.execute(REPORT_CLEANUP)
    left = conn.execute("SELECT count(*) FROM idempotency_records WHERE request_id = %s", (key,)).fetchone()
    assert left == (1,), "a record with expires_at = 'infinity' survives every cleanup"


def test_status_code_may_be_null(conn: psycopg.Connection) -> None:
    state = sqlstate_of(conn, REPORT_SAVE, save_params(str(uuid.uuid4()), "payment", "{}", None, 24))
    assert state is None, f"status_code is nullable; the save failed with SQLSTATE {state}"


RETENTION = "UPDATE idempotency_records SET expires_at = created_at + %s::interval"


@pytest.mark.parametrize(
    ("interval", "sqlstate"),
    [
        ("1 hour", None),
        ("1 microsecond", None),
        ("0.4 microseconds", "23514"),  # rounds to zero: created_at + 0 is not later than created_at
        ("0", "23514"),
        ("-1 hour", "23514"),
    ],
)
def test_the_retention_update_violates_the_check_exactly_when_the_interval_is_not_positive(
    conn: psycopg.Connection, interval: str, sqlstate: str | None
) -> None:
    records.insert(conn, records.live(lifetime=72 * HOUR))
    state = sqlstate_of(conn, RETENTION, (interval,))
    assert state == sqlstate, f"expires_at = created_at + '{interval}': expected SQLSTATE {sqlstate}, got {state}"


def test_the_safe_retention_update_only_shortens(conn: psycopg.Connection) -> None:
    short, long_ = str(uuid.uuid4()), str(uuid.uuid4())
    records.insert(
        conn,
        records.live(short, operation="login", lifetime=10 * MINUTE),
        records.live(long_, operation="login", lifetime=72 * HOUR),
    )
    conn.execute(
        "UPDATE idempotency_records SET expires_at = created_at + INTERVAL '1 hour' "
        "WHERE operation = 'login' AND expires_at > created_at + INTERVAL '1 hour'"
    )
    rows = dict(conn.execute("SELECT request_id::text, expires_at - created_at FROM idempotency_records").fetchall())
    assert str(rows[short]) == "0:10:00", "a record already shorter than the limit is left as it is"
    assert str(rows[long_]) == "1:00:00", "a longer record is cut to created_at + 1 hour"


# --- storage at the report's 40,000 rows ---------------------------------------------------------

STORAGE_ROW = re.compile(r"^\| `?([a-z_]+|total)`? \|[^|]*\| ([0-9.]+) (kB|MB) \|", re.MULTILINE)
RELATIONS = ("idempotency_records", "idempotency_records_pkey", "idx_idempotency_expires", "idx_idempotency_operation")


def _fill(conn: psycopg.Connection, rows: int, payload_bytes: int) -> None:
    """`rows` live records arriving evenly over the last 24 hours with a 24-hour TTL, as the report
    assumes (1M requests a month), each with a result_payload of exactly `payload_bytes` bytes."""
    payload = sql.SQL("""rpad('{{"transaction_id": "' || {row} || '", "note": "', {bytes}, 'x') || '"}}'""")
    records.insert_many(
        conn,
        rows,
        Record(status_code=201, created_at=-24 * HOUR, expires_at=dt.timedelta(0)),
        operations=("payment", "transfer", "login", "refund"),
        spread=24 * HOUR / rows,
        result_payload=payload.format(row=records.ROW, bytes=sql.Literal(payload_bytes - 2)),
    )


def measure_storage(conn: psycopg.Connection) -> dict[str, int]:
    """Bytes of the heap, each index, and pg_total_relation_size."""
    sizes = {name: conn.execute("SELECT pg_relation_size(%s::regclass)", (name,)).fetchone()[0] for name in RELATIONS}  # type: ignore[index]
    sizes["total"] = conn.execute("SELECT pg_total_relation_size('idempotency_records')").fetchone()[0]  # type: ignore[index]
    return sizes


def documented_storage() -> dict[str, int]:
    """The storage table of the guide, in bytes."""
    found = {}
    for name, number, unit in STORAGE_ROW.findall(GUIDE.read_text()):
        if name in (*RELATIONS, "total"):
            found[name] = int(float(number) * (1024 if unit == "kB" else 1024 * 1024))
    return found


def test_the_guide_states_the_storage_assumptions() -> None:
    text = GUIDE.read_text()
    assert "40,000" in text and f"{PAYLOAD_BYTES}-byte" in text, (
        f"the guide states the row count (40,000) and the payload size ({PAYLOAD_BYTES}-byte) its figures assume"
    )


def test_storage_at_40000_rows_matches_the_guide(conn: psycopg.Connection) -> None:
    _fill(conn, STORAGE_ROWS, PAYLOAD_BYTES)
    assert conn.execute("SELECT octet_length(result_payload) FROM idempotency_records LIMIT 1").fetchone() == (
        PAYLOAD_BYTES,
    )
    measured = measure_storage(conn)
    documented = documented_storage()
    assert set(documented) == {*RELATIONS, "total"}, f"the guide's storage table lists every relation: {documented}"
    off = {
        name: (documented[name], size)
        for name, size in measured.items()
        if abs(documented[name] - size) > STORAGE_TOLERANCE * size
    }
    assert not off, f"documented vs measured bytes differ by more than {STORAGE_TOLERANCE:.0%}: {off}"
    assert measured["total"] > 12 * 1024 * 1024, "the report's ~12 MB total underestimates 40,000 such rows"


# --- the plans the guide shows --------------------------------------------------------------------


@pytest.fixture
def realistic(conn: psycopg.Connection) -> psycopg.Connection:
    """40,000 records, the oldest hour of them (1/24, what an hourly cleanup finds) expired."""
    _fill(conn, STORAGE_ROWS, PAYLOAD_BYTES)
    conn.execute(
        "UPDATE idempotency_records SET created_at = created_at - INTERVAL '24 hours', "
        "expires_at = expires_at - INTERVAL '24 hours' WHERE expires_at < now() + INTERVAL '1 hour'"
    )
    conn.execute("ANALYZE idempotency_records")
    return conn


def test_the_guide_shows_the_plans_the_planner_chooses(realistic: psycopg.Connection) -> None:
    text = GUIDE.read_text()
    lookup = explain(
        realistic,
        "SELECT result_payload, status_code FROM idempotency_records WHERE request_id = %s AND expires_at > now()",
        (str(uuid.uuid4()),),
    )
    cleanup = explain(realistic, REPORT_CLEANUP)
    lookup_nodes = {(n["Node Type"], n.get("Index Name")) for n in plan_nodes(lookup)}
    cleanup_nodes = {(n["Node Type"], n.get("Index Name")) for n in plan_nodes(cleanup)}
    assert ("Index Scan", "idempotency_records_pkey") in lookup_nodes, f"duplicate check: {lookup_nodes}"
    assert ("Bitmap Index Scan", "idx_idempotency_expires") in cleanup_nodes, f"hourly cleanup: {cleanup_nodes}"
    assert "Index Scan using idempotency_records_pkey on idempotency_records" in text
    assert "Bitmap Index Scan on idx_idempotency_expires" in text
