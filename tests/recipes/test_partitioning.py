"""Scaling past one server: why the key does not fit time-based partitioning, and
what does fit (hash on request_id, the shape Citus distributes by).

Every table here is a scratch table in the test's own database; idempotency_records
is never touched.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import sql

from tests.docblocks import PATTERNS, block_with

# The docs' example of time-based partitions with the store's primary key, as the page prints it.
RANGE_WITH_KEY_PK = block_with("PARTITION BY RANGE (expires_at)", PATTERNS).text

# The store's columns, with their types, NOT NULL and defaults, and nothing else of it.
COLUMNS = "LIKE idempotency_records INCLUDING DEFAULTS"

SAVE = """
    INSERT INTO {} (request_id, operation, result_payload, status_code, expires_at)
    VALUES (%(request_id)s, 'payment', %(payload)s, 201, %(expires_at)s)
    ON CONFLICT (request_id) DO UPDATE SET
        result_payload = EXCLUDED.result_payload,
        expires_at = EXCLUDED.expires_at
"""

PLAIN_INSERT = """
    INSERT INTO scratch_by_expiry (request_id, operation, result_payload, status_code, expires_at)
    VALUES (%(request_id)s, 'payment', %(payload)s, 201, %(expires_at)s)
"""


def test_range_partitions_on_expires_at_refuse_a_primary_key_on_request_id_alone(conn: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.FeatureNotSupported) as raised:
        conn.execute(RANGE_WITH_KEY_PK)
    assert raised.value.sqlstate == "0A000"
    assert "unique constraint on partitioned table must include all partitioning columns" in str(raised.value)


def test_with_expires_at_in_the_key_the_upsert_has_no_target_and_a_key_can_be_stored_twice(
    conn: psycopg.Connection,
) -> None:
    conn.execute(f"""
        CREATE TABLE scratch_by_expiry ({COLUMNS}, PRIMARY KEY (request_id, expires_at))
        PARTITION BY RANGE (expires_at);
        CREATE TABLE scratch_by_expiry_past PARTITION OF scratch_by_expiry
            FOR VALUES FROM (MINVALUE) TO ('2026-01-01');
        CREATE TABLE scratch_by_expiry_future PARTITION OF scratch_by_expiry
            FOR VALUES FROM ('2026-01-01') TO (MAXVALUE);
    """)
    key = uuid.uuid4()
    with pytest.raises(psycopg.errors.InvalidColumnReference) as raised:
        conn.execute(
            sql.SQL(SAVE).format(sql.Identifier("scratch_by_expiry")),
            {"request_id": key, "payload": "first", "expires_at": "2027-01-01T00:00:00Z"},
        )
    assert raised.value.sqlstate == "42P10", "ON CONFLICT (request_id) matches no unique constraint"
    for payload, expires_at in (("first", "2027-01-01T00:00:00Z"), ("second", "2027-01-02T00:00:00Z")):
        conn.execute(PLAIN_INSERT, {"request_id": key, "payload": payload, "expires_at": expires_at})
    stored = conn.execute("SELECT count(*) FROM scratch_by_expiry WHERE request_id = %s", (key,)).fetchone()
    assert stored == (2,), "the same key is stored twice: the store no longer deduplicates"


def test_hash_partitions_on_request_id_keep_the_primary_key_and_the_upsert(conn: psycopg.Connection) -> None:
    conn.execute(f"""
        CREATE TABLE scratch_by_key ({COLUMNS}, PRIMARY KEY (request_id)) PARTITION BY HASH (request_id);
        CREATE TABLE scratch_by_key_0 PARTITION OF scratch_by_key FOR VALUES WITH (MODULUS 2, REMAINDER 0);
        CREATE TABLE scratch_by_key_1 PARTITION OF scratch_by_key FOR VALUES WITH (MODULUS 2, REMAINDER 1);
    """)
    key = uuid.uuid4()
    for payload in ("first", "second"):
        conn.execute(
            sql.SQL(SAVE).format(sql.Identifier("scratch_by_key")),
            {"request_id": key, "payload": payload, "expires_at": "2027-01-01T00:00:00Z"},
        )
    rows = conn.execute("SELECT result_payload FROM scratch_by_key WHERE request_id = %s", (key,)).fetchall()
    assert rows == [("second",)], "one row per key, updated in place by the upsert"
