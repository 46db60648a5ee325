"""Save phase: the repository's upsert of a new key and of an existing key, into the
migrated table and into the same table with only its primary key (the anchor), with
the WAL each save writes and the share of existing-key updates that were HOT (no index
entry written) on each side. Then the key-order study: new keys in time order (as UUIDv7
keys arrive) against random ones (UUIDv4), saved into the lookup tables of 1M rows and
more, where a random key's leaf page is rarely one a save since the last checkpoint
already wrote."""

from __future__ import annotations

import datetime as dt
import time

import psycopg

from bench import database
from bench.config import DEFAULT_SIZE, LOOKUP_PAYLOAD, Config
from bench.context import Context, progress, rotate
from bench.pgbench import payload_text, script

CONTENDERS = {
    "save-new": ("save", "save_new.sql"),
    "save-existing": ("save", "save_existing.sql"),
    "pk-only-new": ("pk_only", "save_new.sql"),
    "pk-only-existing": ("pk_only", "save_existing.sql"),
    "save-new-v7": ("save", "save_new_v7.sql"),
}
# Time-ordered keys: a prefix above every other key; each client counts its own saves.
V7_VARIABLES: dict[str, object] = {"v7_prefix": "ffffffff00000000", "n": 0}
# Each save against its anchor on the PK-only table.
ANCHORS = {"save-new": "pk-only-new", "save-existing": "pk-only-existing"}
UPDATES = "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE schemaname = %s AND relname = %s"


def load_tables(ctx: Context, rows: int, now: dt.datetime) -> None:
    progress(f"save: loading {rows:,} rows into the migrated table and the PK-only table")
    with database.migrated_schema(ctx.server, ctx.db, "save") as conn:
        database.autovacuum_off(conn)
        database.load_rows(conn, rows, 0, LOOKUP_PAYLOAD, now)
        database.vacuum(conn)
    with ctx.connect() as admin:
        admin.execute("CREATE SCHEMA pk_only")
    with ctx.connect("pk_only") as conn:
        conn.execute(database.read_sql("pk_only_table.sql"))
        database.autovacuum_off(conn)
        database.load_rows(conn, rows, 0, LOOKUP_PAYLOAD, now)
        database.vacuum(conn)


def restore(ctx: Context, schema: str, now: dt.datetime) -> None:
    """The table as loaded: the rows a new-key run added deleted, the dead rows vacuumed,
    so that every round starts from the same table (new rows have created_at after `now`;
    an existing-key save leaves created_at alone)."""
    with ctx.connect(schema) as conn:
        conn.execute("DELETE FROM idempotency_records WHERE created_at > %s", (now,))
        database.vacuum(conn)


def updates(conn: psycopg.Connection, schema: str) -> tuple[int, int]:
    """The table's (updates, HOT updates) counters once the finished run's backends have
    reported them: each backend flushes its counters as it exits, so read until stable."""
    previous: tuple[int, int] | None = None
    for _ in range(50):
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(UPDATES, (schema, "idempotency_records")).fetchone()
        current = (int(row[0]), int(row[1])) if row else (0, 0)
        if current == previous:
            return current
        previous = current
        time.sleep(0.2)
    return previous or (0, 0)


def measure(ctx: Context, workload: str, variables: dict[str, object], where: str, size: int) -> float:
    """One pgbench run of `workload` into the table of schema `where`, which holds `size`
    rows, recorded under that size; returns its throughput."""
    name = CONTENDERS[workload][1]
    with ctx.connect() as conn:
        database.checkpoint(conn)
        database.reset_statements(conn)
        before, start_lsn = updates(conn, where), database.wal_lsn(conn)
        run = ctx.bench.run(where, script(name), variables | (V7_VARIABLES if workload.endswith("v7") else {}))
        wal = database.wal_bytes(conn, start_lsn, database.wal_lsn(conn))
        after = updates(conn, where)
        ctx.samples.add_run("save", workload, size, run)
        ctx.samples.add("save", workload, size, "wal_bytes_per_save", "bytes", wal / len(run.latencies_us))
        stats = database.statements_stats(conn, database.SAVE_PATTERN)
        if "server_exec_ms" in stats:
            ctx.samples.add("save", workload, size, "server_exec_ms", "ms", stats["server_exec_ms"])
        if workload.endswith("existing") and after[0] > before[0]:
            hot = (after[1] - before[1]) / (after[0] - before[0])
            ctx.samples.add("save", workload, size, "hot_update_share", "share", hot)
    return run.tps


KEY_ORDER = ("save-new", "save-new-v7")


def key_order_sizes(config: Config) -> list[int]:
    """The lookup tables the key-order study saves into: those of 1M rows and more (none in
    a quick run)."""
    return [size for size in config.sizes if size >= DEFAULT_SIZE and size != config.save_rows]


def add_key_order_ratio(ctx: Context, size: int, tps: dict[str, float]) -> None:
    """This round's throughput of time-ordered new keys over random ones, into `size` rows."""
    ratio = tps["save-new-v7"] / tps["save-new"]
    ctx.samples.add("save", "save-new-v7", size, "ratio_to_random_keys", "x", ratio)


def key_order(ctx: Context) -> None:
    """Random against time-ordered new keys into the lookup table of each size, interleaved
    round by round; the table is restored (new rows deleted, vacuumed) after every run."""
    now = dt.datetime.now(dt.UTC)  # every loaded row is older: restore() deletes only the new ones
    for size in key_order_sizes(ctx.config):
        where = f"size_{size}"
        variables: dict[str, object] = {"size": size, "payload": payload_text(LOOKUP_PAYLOAD)}
        for round_ in range(ctx.config.rounds):
            progress(f"save: key order at {size:,} rows, round {round_ + 1}/{ctx.config.rounds}")
            tps: dict[str, float] = {}
            for workload in rotate(list(KEY_ORDER), round_):
                tps[workload] = measure(ctx, workload, variables, where, size)
                restore(ctx, where, now)
            add_key_order_ratio(ctx, size, tps)


def run(ctx: Context) -> None:
    rows = ctx.config.save_rows
    now = dt.datetime.now(dt.UTC)
    load_tables(ctx, rows, now)
    variables: dict[str, object] = {"size": rows, "payload": payload_text(LOOKUP_PAYLOAD)}
    for round_ in range(ctx.config.rounds):
        progress(f"save: round {round_ + 1}/{ctx.config.rounds}")
        tps: dict[str, float] = {}
        for workload in rotate(list(CONTENDERS), round_):
            tps[workload] = measure(ctx, workload, variables, CONTENDERS[workload][0], rows)
            restore(ctx, CONTENDERS[workload][0], now)
        for workload, anchor in ANCHORS.items():
            ctx.samples.add("save", workload, rows, "ratio_to_pk_only", "x", tps[workload] / tps[anchor])
        add_key_order_ratio(ctx, rows, tps)
    ctx.notes["save_payload_bytes"] = LOOKUP_PAYLOAD
    key_order(ctx)
