"""Storage phase: bytes per row of the table and of each index at payloads of 50 B, 200 B
and 2 KB, and the design report's 40,000-row scenario against its size estimate."""

from __future__ import annotations

import datetime as dt

from psycopg import sql

from bench.config import LOOKUP_PAYLOAD
from bench.context import Context, progress
from bench.database import load_rows, migrated_schema, read_sql, vacuum

STORAGE_PAYLOADS = (50, 200, 2048)
SCENARIO_ROWS = 40_000  # the report: "~40,000 active records", "~8 MB table, ~4 MB indexes"
SCENARIO = "report scenario"


def run(ctx: Context) -> None:
    now = dt.datetime.now(dt.UTC)
    cases = [(f"payload {payload} B", ctx.config.storage_rows, payload, "md5") for payload in STORAGE_PAYLOADS]
    # The same sizes with a JSON payload that compresses, as an application's does: at 2 KB
    # PostgreSQL compresses it in the row (TOAST); the md5 digits above do not compress.
    cases += [(f"payload {payload} B json", ctx.config.storage_rows, payload, "json") for payload in STORAGE_PAYLOADS]
    cases.append((SCENARIO, SCENARIO_ROWS, LOOKUP_PAYLOAD, "md5"))
    scenario: dict[str, float] = {}
    # Sizes are deterministic for a given load: one round suffices.
    for label, rows, payload, kind in cases:
        schema = f"storage_{kind}_{payload}_{rows}"
        progress(f"storage: {label}, {rows:,} rows")
        with migrated_schema(ctx.server, ctx.db, schema) as conn:
            load_rows(conn, rows, 0, payload, now, kind=kind)
            vacuum(conn)
            for relation, size_bytes in conn.execute(read_sql("relation_sizes.sql")).fetchall():
                ctx.samples.add("storage", f"{label}: {relation}", rows, "bytes_per_row", "B", size_bytes / rows)
                if label == SCENARIO:
                    scenario[relation] = size_bytes / 2**20
        with ctx.connect() as admin:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    ctx.notes["scenario_mib"] = scenario
    ctx.notes["report_estimate_mib"] = {"table": 8, "indexes": 4, "total": 12}
