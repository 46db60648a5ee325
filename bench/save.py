"""Save phase: the repository's upsert of a new key and of an existing key, into the
migrated table and into the same table with only its primary key (the anchor)."""

from __future__ import annotations

import datetime as dt

from bench.config import LOOKUP_PAYLOAD
from bench.context import Context, progress, rotate
from bench.database import checkpoint, load_rows, migrated_schema, read_sql, vacuum
from bench.pgbench import payload_text, script

CONTENDERS = {
    "save-new": ("save", "save_new.sql"),
    "save-existing": ("save", "save_existing.sql"),
    "pk-only-new": ("pk_only", "save_new.sql"),
    "pk-only-existing": ("pk_only", "save_existing.sql"),
}
# Each save against its anchor on the PK-only table.
ANCHORS = {"save-new": "pk-only-new", "save-existing": "pk-only-existing"}


def load_tables(ctx: Context, rows: int) -> None:
    now = dt.datetime.now(dt.UTC)
    progress(f"save: loading {rows:,} rows into the migrated table and the PK-only table")
    with migrated_schema(ctx.server, ctx.db, "save") as conn:
        load_rows(conn, rows, 0, LOOKUP_PAYLOAD, now)
        vacuum(conn)
    with ctx.connect() as admin:
        admin.execute("CREATE SCHEMA pk_only")
    with ctx.connect("pk_only") as conn:
        conn.execute(read_sql("pk_only_table.sql"))
        load_rows(conn, rows, 0, LOOKUP_PAYLOAD, now)
        vacuum(conn)


def run(ctx: Context) -> None:
    rows = ctx.config.save_rows
    load_tables(ctx, rows)
    variables: dict[str, object] = {"size": rows, "payload": payload_text(LOOKUP_PAYLOAD)}
    for round_ in range(ctx.config.rounds):
        progress(f"save: round {round_ + 1}/{ctx.config.rounds}")
        tps: dict[str, float] = {}
        for workload in rotate(list(CONTENDERS), round_):
            where, name = CONTENDERS[workload]
            with ctx.connect() as conn:
                checkpoint(conn)
            run = ctx.bench.run(where, script(name), variables)
            ctx.samples.add_run("save", workload, rows, run)
            tps[workload] = run.tps
        for workload, anchor in ANCHORS.items():
            ctx.samples.add("save", workload, rows, "ratio_to_pk_only", "x", tps[workload] / tps[anchor])
    ctx.notes["save_payload_bytes"] = LOOKUP_PAYLOAD
