"""Protocol phase (migration 047): what the protocol costs against the report's statements, on the
same table in the same run. A claim and its completion of a new key (two statements, each its
own transaction) against the report's single save of a new key; a claim that replays a completed
result against the plain lookup (the narrow duplicate check). The table, in schema `protocol`
with 045, 046 and 047 applied, holds save_rows completed records of the protocol. Contenders
alternate within every round, as in the other phases; each round gives a throughput ratio and a
WAL-per-request figure, and a server-time ratio where pg_stat_statements is loaded."""

from __future__ import annotations

import datetime as dt
import hashlib

import psycopg

from bench.config import LOOKUP_PAYLOAD, key_variables
from bench.context import Context, progress, rotate
from bench.database import (
    LOAD_BATCH,
    NARROW_PATTERN,
    SAVE_PATTERN,
    autovacuum_off,
    checkpoint,
    migrated_schema,
    read_sql,
    reset_statements,
    statements_stats,
    vacuum,
    wal_bytes,
    wal_lsn,
)
from bench.pgbench import payload_text, script
from bench.save import NEW
from tooling import SQL_DIR

SCHEMA = "protocol"
PROTOCOL_FILE = SQL_DIR / "047_create_idempotency_protocol.sql"
# The digest every loaded record and every request of the phase carries.
HASH = hashlib.sha256(b'{"amount_cents":1500,"currency":"EUR"}').digest()
CONTENDERS = {
    "protocol-claim-complete": "protocol_claim_complete.sql",
    "protocol-save-new": "save.sql",  # with :keys NEW, a new random key
    "protocol-replay": "protocol_replay.sql",
    "protocol-lookup": "lookup_hit_narrow.sql",
}
# Each protocol path against the report's statement it replaces.
ANCHORS = {"protocol-claim-complete": "protocol-save-new", "protocol-replay": "protocol-lookup"}
# pg_stat_statements patterns of the statements each contender runs (one or two a transaction).
PATTERNS = {
    "protocol-claim-complete": ("SELECT token, (outcome = %", "SELECT idempotency_complete%"),
    "protocol-save-new": (SAVE_PATTERN,),
    "protocol-replay": ("SELECT outcome, result_payload, status_code%",),
    "protocol-lookup": (NARROW_PATTERN,),
}


def load_table(ctx: Context, rows: int, now: dt.datetime) -> None:
    progress(f"protocol: loading {rows:,} completed records of the protocol into schema {SCHEMA}")
    with migrated_schema(ctx.server, ctx.db, SCHEMA) as conn:
        with conn.transaction():
            conn.execute(PROTOCOL_FILE.read_text())
        autovacuum_off(conn)
        load = read_sql("protocol_rows.sql")
        for first in range(1, rows + 1, LOAD_BATCH):
            conn.execute(
                load,
                {
                    "first": first,
                    "last": min(rows, first + LOAD_BATCH - 1),
                    "payload": LOOKUP_PAYLOAD,
                    "now": now,
                    "hash": HASH,
                    **key_variables(),
                },
            )
        vacuum(conn)


def server_time(conn: psycopg.Connection, workload: str) -> float | None:
    """Server time per request: the sum over its statements of their mean time per call."""
    total = 0.0
    for pattern in PATTERNS[workload]:
        stats = statements_stats(conn, pattern)
        if "server_exec_ms" not in stats:
            return None
        total += stats["server_exec_ms"]
    return total


def measure(ctx: Context, workload: str, variables: dict[str, object], size: int) -> float:
    """One pgbench run of a contender; its throughput, latencies, WAL per request and server time."""
    with ctx.connect() as conn:
        checkpoint(conn)
        reset_statements(conn)
        start = wal_lsn(conn)
        run = ctx.bench.run(SCHEMA, script(CONTENDERS[workload]), variables)
        wal = wal_bytes(conn, start, wal_lsn(conn))
        ctx.samples.add_run(SCHEMA, workload, size, run)
        ctx.samples.add(SCHEMA, workload, size, "wal_bytes_per_request", "bytes", wal / len(run.latencies_us))
        if ctx.notes.get("pg_stat_statements") and (per_request := server_time(conn, workload)) is not None:
            ctx.samples.add(SCHEMA, workload, size, "server_exec_ms", "ms", per_request)
    return run.tps


def restore(ctx: Context, now: dt.datetime) -> None:
    """The table as loaded: the records a new-key run added deleted, the dead rows vacuumed."""
    with ctx.connect(SCHEMA) as conn:
        conn.execute("DELETE FROM idempotency_records WHERE created_at > %s", (now,))
        vacuum(conn)


def run(ctx: Context) -> None:
    rows = ctx.config.save_rows
    now = dt.datetime.now(dt.UTC)
    load_table(ctx, rows, now)
    variables: dict[str, object] = {
        "size": rows,
        "expired": 0,
        "payload": payload_text(LOOKUP_PAYLOAD),
        "hash": "\\x" + HASH.hex(),
        "keys": NEW,
    }
    samples, last = ctx.samples, ctx.samples.last
    for round_ in range(ctx.config.rounds):
        progress(f"protocol: round {round_ + 1}/{ctx.config.rounds}")
        for workload in rotate(list(CONTENDERS), round_):
            measure(ctx, workload, variables, rows)
            restore(ctx, now)
        for workload, anchor in ANCHORS.items():
            ratio = last(SCHEMA, workload, rows, "tps", "tx/s") / last(SCHEMA, anchor, rows, "tps", "tx/s")
            samples.add(SCHEMA, workload, rows, "throughput_ratio_to_anchor", "x", ratio)
            if samples.of(SCHEMA, workload, rows, "server_exec_ms") and samples.of(
                SCHEMA, anchor, rows, "server_exec_ms"
            ):
                server = last(SCHEMA, workload, rows, "server_exec_ms", "ms") / last(
                    SCHEMA, anchor, rows, "server_exec_ms", "ms"
                )
                samples.add(SCHEMA, workload, rows, "server_time_ratio_to_anchor", "x", server)
    ctx.notes["protocol"] = {"rows": rows, "anchors": ANCHORS, "payload_bytes": LOOKUP_PAYLOAD}
