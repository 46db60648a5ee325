"""The planner chooses the indexes on realistic data.

The table holds the report's 40,000 active records plus 2,000 expired ones (5 %),
inserted in time order as an application writes them, then ANALYZEd. No planner
setting is changed: these tests prove "the planner chooses the index on realistic
data", not merely "the index is usable"."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from tests.helpers import describe_plan, explain, plan_nodes
from tooling import records
from tooling.records import HOUR, Record

ACTIVE, EXPIRED = 40_000, 2_000


@pytest.fixture
def realistic(conn: psycopg.Connection) -> psycopg.Connection:
    total = ACTIVE + EXPIRED
    # Created over 25 hours, one every 90000 / total seconds, each valid for 24 hours.
    first = Record(status_code=200, created_at=-25 * HOUR, expires_at=-HOUR)
    records.insert_many(
        conn,
        total,
        first,
        operations=("payment", "transfer", "refund", "login"),
        spread=25 * HOUR / total,
        result_payload=sql.SQL("""'{{"transaction_id": "' || md5({}::text) || '", "status": "ok"}}'""").format(
            records.ROW
        ),
    )
    expired = conn.execute("SELECT count(*) FROM idempotency_records WHERE expires_at <= now()").fetchone()
    assert expired is not None and 1_500 <= expired[0] <= 2_500, f"fixture: expected about {EXPIRED} expired rows"
    conn.execute("ANALYZE idempotency_records")
    return conn


def test_duplicate_lookup_is_an_index_scan_on_the_primary_key(realistic: psycopg.Connection) -> None:
    key = realistic.execute("SELECT request_id FROM idempotency_records LIMIT 1 OFFSET 12345").fetchone()
    assert key is not None
    plan = explain(
        realistic,
        "SELECT result_payload, status_code FROM idempotency_records WHERE request_id = %s AND expires_at > now()",
        key,
    )
    assert plan["Node Type"] == "Index Scan", f"expected an Index Scan at the top, got:\n{describe_plan(plan)}"
    assert plan["Index Name"] == "idempotency_records_pkey", describe_plan(plan)
    assert "request_id" in plan["Index Cond"], describe_plan(plan)
    assert "expires_at > now()" in plan.get("Filter", ""), f"expiry must be a filter:\n{describe_plan(plan)}"


def test_cleanup_delete_uses_the_expiry_index(realistic: psycopg.Connection) -> None:
    plan = explain(realistic, "DELETE FROM idempotency_records WHERE expires_at <= now()")
    assert plan["Node Type"] == "ModifyTable" and plan["Operation"] == "Delete", describe_plan(plan)
    used = [
        node.get("Index Name") for node in plan_nodes(plan) if node["Node Type"] in {"Index Scan", "Bitmap Index Scan"}
    ]
    assert used == ["idx_idempotency_expires"], (
        f"expected a scan of idx_idempotency_expires, got:\n{describe_plan(plan)}"
    )
    assert not any(node["Node Type"] == "Seq Scan" for node in plan_nodes(plan)), describe_plan(plan)


def test_cleanup_function_deletes_what_the_planned_delete_would(realistic: psycopg.Connection) -> None:
    expected = realistic.execute("SELECT count(*) FROM idempotency_records WHERE expires_at <= now()").fetchone()
    assert realistic.execute("SELECT * FROM cleanup_expired_idempotency_records()").fetchone() == expected
