"""The benchmark's server and scratch database, and what the phases ask of them: the
migrations applied to a schema, rows loaded, vacuum, WAL positions, checkpoints,
pg_stat_statements and plans. The SQL text lives in the bench/*.sql files; the rows loaded are
the record factory's (tooling/records.py), from the expressions here."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from bench.config import BENCH_DIR, key_variables
from tooling import UP_FILES, records, servers

LOAD_BATCH = 250_000  # rows per INSERT when loading a table

# Settings for a throwaway benchmark server. fsync and full_page_writes stay ON: with
# fsync off a commit never waits for the disk, so every write workload (save, cleanup)
# would look cheaper than on any real server and the WAL volume would lack the page
# images a checkpoint forces. shared_buffers is sized like a small production server
# (the default 128 MB would leave the 1M-row table to the OS cache); checkpoints are
# issued by the driver between measurements instead of firing in the middle of one.
BENCH_SETTINGS = {
    **servers.FAST_SETTINGS,
    "fsync": "on",
    "full_page_writes": "on",
    "shared_buffers": "'1GB'",
    "max_wal_size": "'8GB'",
    "checkpoint_timeout": "'30min'",
    "shared_preload_libraries": "'pg_stat_statements'",
}


def read_sql(name: str) -> str:
    """A bench/*.sql file's SQL: its text without the `--` comment lines that head it."""
    lines = (BENCH_DIR / name).read_text().splitlines()
    while lines and lines[0].startswith("--"):
        lines.pop(0)
    return "\n".join(lines).strip()


def script_statement(name: str) -> str:
    """The one statement of a pgbench script: without its comments, `\\set` lines and final semicolon."""
    lines = [line for line in read_sql(name).splitlines() if not line.startswith("\\")]
    return "\n".join(lines).strip().removesuffix(";")


BYTES_PER_CACHED_ROW = 600  # a lookup table's row with its primary key, pgbench_accounts' beside it, and room
# for the pages of the secondary indexes that the save and cleanup phases write


def shared_buffers_for(rows: int) -> str:
    """shared_buffers that hold `rows` (all the lookup tables' rows together) with their
    primary keys and the pgbench -S tables beside them (1 GB up to 1M rows; 7 GB at 10M),
    so that the growth verdict tells log n apart from cache misses."""
    gib = max(1, math.ceil(rows * BYTES_PER_CACHED_ROW / 2**30))
    return f"'{gib}GB'"


@contextlib.contextmanager
def bench_server(rows: int) -> Iterator[servers.Server]:
    """The user's server (DATABASE_URL / PG*), else a throwaway one with normal durability
    and shared_buffers that hold `rows` (see shared_buffers_for)."""
    settings = {**BENCH_SETTINGS, "shared_buffers": shared_buffers_for(rows)}
    lib = servers.bindir().parent / "lib"
    if not (lib / "pg_stat_statements.so").exists() and not list(lib.glob("*/pg_stat_statements.so")):
        settings.pop("shared_preload_libraries")
    with servers.session_server("idempotency-bench-", settings) as server:
        yield server


@contextlib.contextmanager
def bench_database(server: servers.Server) -> Iterator[str]:
    """A database idempotency_bench_<pid>, dropped at the end."""
    name = f"idempotency_bench_{os.getpid()}"
    with server.connect(autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with server.connect(autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def connect(server: servers.Server, db: str, schema: str | None = None) -> psycopg.Connection:
    options = f"-c search_path={schema}" if schema else None
    return server.connect(db, autocommit=True, options=options) if options else server.connect(db, autocommit=True)


def apply_migrations(conn: psycopg.Connection) -> None:
    """The up migrations, each file in one transaction as a runner applies it."""
    for path in UP_FILES:
        with conn.transaction():
            conn.execute(path.read_text())


def migrated_schema(server: servers.Server, db: str, schema: str) -> psycopg.Connection:
    """A schema with the migrations applied (they create objects in the first schema of search_path)."""
    with connect(server, db) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn = connect(server, db, schema)
    apply_migrations(conn)
    return conn


# The rows every phase loads, written by the record factory (tooling/records.py). Row i's key is
# the UUID the pgbench scripts bind for it (bench/config.py, KEY_PREFIX): keys are scattered, as
# random UUIDs are, while rows arrive in time order. Rows 1..expired were created over the 23
# hours before the 48 hours ago, so they have all expired; the others over the last 23 hours, so
# they live for up to 22 more hours; every row lives 24 hours. result_payload is a JSON text of
# `payload` bytes: md5 digits (incompressible) or, with kind json, repeated words as an
# application's JSON compresses. Stamps are relative to `now`, so that a reload of the expired
# rows matches the rest.
LOADED_KEY = sql.SQL(
    "({prefix} || ({key_base}::bigint + ({row} * {key_step}::bigint) % {key_modulus}::bigint)::text)::uuid"
)
LOADED_OPERATIONS = ("payment", "transfer", "refund", "login")
LOADED_CREATED_AT = sql.SQL(
    "CASE WHEN {row} <= {expired} "
    "THEN {now} - INTERVAL '48 hours' + INTERVAL '23 hours' * {row} / greatest({expired}, 1) "
    "ELSE {now} - INTERVAL '23 hours' + INTERVAL '22 hours' * ({row} - {expired}) / greatest({total} - {expired}, 1) "
    "END"
)
LOADED_PAYLOAD = sql.SQL(
    """(SELECT '{{"d":"' || left(
        CASE {kind}
            WHEN 'json' THEN repeat('status=captured;currency=EUR;amount=' || {row} % 1000 || ';', {payload} / 16 + 1)
            ELSE string_agg(md5({row}::text || ':' || k::text), '' ORDER BY k)
        END,
        {payload} - 8
    ) || '"}}'
    FROM generate_series(1, ({payload} + 31) / 32) AS k)"""
)


def load_rows(
    conn: psycopg.Connection,
    total: int,
    expired: int,
    payload: int,
    now: dt.datetime,
    last: int | None = None,
    kind: str = "md5",
) -> None:
    """Rows 1..last (default: all `total`) keyed as the scripts bind them, the first `expired`
    of them expired, in time order; payloads of md5 digits, or compressible with kind json."""
    keys = {name: sql.Literal(value) for name, value in key_variables().items()}
    row = records.ROW
    request_id = LOADED_KEY.format(row=row, **keys)
    created_at = LOADED_CREATED_AT.format(
        row=row, now=records.NOW, expired=sql.Literal(expired), total=sql.Literal(total)
    )
    result_payload = LOADED_PAYLOAD.format(row=row, kind=sql.Literal(kind), payload=sql.Literal(payload))
    end = total if last is None else last
    for first in range(1, end + 1, LOAD_BATCH):
        records.insert_many(
            conn,
            min(end, first + LOAD_BATCH - 1) - first + 1,
            records.Record(status_code=200),
            first=first,
            now=now,
            operations=LOADED_OPERATIONS,
            lifetime=24 * records.HOUR,
            request_id=request_id,
            created_at=created_at,
            result_payload=result_payload,
        )


def vacuum(conn: psycopg.Connection) -> None:
    conn.execute("VACUUM (ANALYZE) idempotency_records")


def autovacuum_off(conn: psycopg.Connection, table: str = "idempotency_records") -> None:
    """No autovacuum on a measured table: it would run in some rounds and not others.
    The driver vacuums explicitly between phases and rounds instead."""
    conn.execute(
        sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = off, toast.autovacuum_enabled = off)").format(
            sql.Identifier(table)
        )
    )


def expired_count(conn: psycopg.Connection, now: dt.datetime) -> int:
    row = conn.execute("SELECT count(*) FROM idempotency_records WHERE expires_at <= %s", (now,)).fetchone()
    assert row is not None
    return int(row[0])


def wal_lsn(conn: psycopg.Connection) -> str:
    row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def wal_bytes(conn: psycopg.Connection, start: str, end: str) -> int:
    row = conn.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", (end, start)).fetchone()
    assert row is not None
    return int(row[0])


def checkpoint(conn: psycopg.Connection) -> None:
    """Start a measurement from a fresh checkpoint, where the role may (superuser or pg_checkpoint).

    The next write to every page then logs a full-page image, as it does after any checkpoint,
    so WAL volumes are comparable between contenders; and no checkpoint falls inside a run."""
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute("CHECKPOINT")


LOOKUP_PATTERN = "SELECT request_id, operation, result_payload%"
NARROW_PATTERN = "SELECT result_payload, status_code%"
ANCHOR_PATTERN = "SELECT abalance FROM pgbench_accounts%"
CONTROL_PATTERN = "SELECT abalance, (SELECT count(*)%"
SAVE_PATTERN = "INSERT INTO idempotency_records%"


def statements_stats(conn: psycopg.Connection, pattern: str = LOOKUP_PATTERN) -> dict[str, float]:
    """Per call of a statement, from pg_stat_statements when it is loaded: mean server-side
    execution time, shared buffers touched and read from outside shared_buffers, WAL bytes."""
    try:
        row = conn.execute(
            "SELECT sum(total_exec_time) / nullif(sum(calls), 0),"
            " sum(shared_blks_hit + shared_blks_read)::float / nullif(sum(calls), 0),"
            " sum(shared_blks_read)::float / nullif(sum(calls), 0),"
            " sum(wal_bytes)::float / nullif(sum(calls), 0)"
            " FROM pg_stat_statements WHERE query LIKE %s",
            (pattern,),
        ).fetchone()
    except psycopg.Error:
        return {}
    if row is None or row[0] is None:
        return {}
    return {
        "server_exec_ms": float(row[0]),
        "buffers_per_call": float(row[1]),
        "reads_per_call": float(row[2]),
        "wal_bytes_per_call": float(row[3]),
    }


def reset_statements(conn: psycopg.Connection) -> bool:
    try:
        conn.execute("SELECT pg_stat_statements_reset()")
    except psycopg.Error:
        return False
    return True


def plan_of(row: tuple[Any, ...] | None) -> dict[str, Any]:
    """The top plan node of an EXPLAIN (FORMAT JSON) result row."""
    assert row is not None
    document = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    return dict(document[0]["Plan"])


def explain(conn: psycopg.Connection, query: str) -> dict[str, Any]:
    """The top plan node of EXPLAIN (FORMAT JSON) for a query (not executed)."""
    return plan_of(conn.execute(f"EXPLAIN (FORMAT JSON) {query}").fetchone())
