"""Floor phase: the bulk-expiry floor, the same expired rows removed by TRUNCATE and by
dropping a partition, each right after a checkpoint."""

from __future__ import annotations

import datetime as dt
import time

import psycopg
from psycopg import sql

from bench.context import Context, progress, rotate
from bench.database import checkpoint, wal_bytes, wal_lsn

SCHEMA = "expiry_floor"


def copy_expired(conn: psycopg.Connection, source: sql.Identifier, now: dt.datetime) -> sql.Composed:
    """A plain copy of the expired rows; returns the statement that removes them."""
    conn.execute(sql.SQL("CREATE TABLE expiry_floor.copy (LIKE {} INCLUDING ALL)").format(source))
    conn.execute(
        sql.SQL("INSERT INTO expiry_floor.copy SELECT * FROM {} WHERE expires_at <= %s").format(source),
        (now,),
    )
    return sql.SQL("TRUNCATE expiry_floor.copy").format()


def partition_expired(conn: psycopg.Connection, source: sql.Identifier, now: dt.datetime) -> sql.Composed:
    """The expired rows in the expired partition of a table partitioned by expires_at,
    with the table's three indexes; returns the statement that drops that partition."""
    conn.execute(
        sql.SQL(
            "CREATE TABLE expiry_floor.by_expiry (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            " PARTITION BY RANGE (expires_at)"
        ).format(source)
    )
    conn.execute(
        sql.SQL(
            "CREATE TABLE expiry_floor.old PARTITION OF expiry_floor.by_expiry FOR VALUES FROM (MINVALUE) TO ({})"
        ).format(sql.Literal(now))
    )
    conn.execute(
        sql.SQL(
            "CREATE TABLE expiry_floor.live PARTITION OF expiry_floor.by_expiry FOR VALUES FROM ({}) TO (MAXVALUE)"
        ).format(sql.Literal(now))
    )
    for column in ("request_id", "expires_at", "operation"):
        conn.execute(sql.SQL("CREATE INDEX ON expiry_floor.by_expiry ({})").format(sql.Identifier(column)))
    conn.execute(
        sql.SQL("INSERT INTO expiry_floor.by_expiry SELECT * FROM {} WHERE expires_at <= %s").format(source),
        (now,),
    )
    return sql.SQL("DROP TABLE expiry_floor.old").format()


PREPARE = {"truncate": copy_expired, "drop-partition": partition_expired}


def measure(ctx: Context, conn: psycopg.Connection, workload: str, statement: sql.Composed, rows: int) -> None:
    size = max(ctx.config.sizes)
    checkpoint(conn)
    start_lsn, started = wal_lsn(conn), time.perf_counter()
    conn.execute(statement)
    seconds = time.perf_counter() - started
    ctx.samples.add("floor", workload, size, "rows_deleted", "rows", rows)
    ctx.samples.add("floor", workload, size, "duration", "s", seconds)
    ctx.samples.add("floor", workload, size, "rows_per_s", "rows/s", rows / seconds)
    ctx.samples.add("floor", workload, size, "wal_bytes", "bytes", wal_bytes(conn, start_lsn, wal_lsn(conn)))


def run(ctx: Context) -> None:
    size = max(ctx.config.sizes)
    source = sql.Identifier(f"size_{size}", "idempotency_records")
    now = dt.datetime.now(dt.UTC)
    with ctx.connect() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
        row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE expires_at <= %s").format(source), (now,)).fetchone()
        assert row is not None
        rows = int(row[0])
        for round_ in range(ctx.config.rounds):
            progress(f"floor: TRUNCATE / DROP partition of {rows:,} rows, round {round_ + 1}/{ctx.config.rounds}")
            for workload in rotate(list(PREPARE), round_):
                conn.execute("DROP TABLE IF EXISTS expiry_floor.copy, expiry_floor.by_expiry")
                statement = PREPARE[workload](conn, source, now)
                measure(ctx, conn, workload, statement, rows)
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(SCHEMA)))
    ctx.notes["floor_rows"] = rows
