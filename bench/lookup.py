"""Lookup phase: hit, miss and hit-on-expired at each table size against pgbench -S (the
built-in primary key lookup), in separate runs and all together in one run."""

from __future__ import annotations

import datetime as dt
import statistics
from typing import Any

import psycopg

from bench.config import EXPIRED_FRACTION, LOOKUP_PAYLOAD
from bench.context import Context, progress, rotate
from bench.database import (
    ANCHOR_PATTERN,
    LOOKUP_PATTERN,
    describe_plan,
    load_rows,
    migrated_schema,
    plan_nodes,
    plan_of,
    reset_statements,
    script_statement,
    statements_stats,
    vacuum,
)
from bench.pgbench import script

# The lookup the hit/miss/expired scripts run, with the key as pgbench's prepared statement binds it.
LOOKUP_QUERY = script_statement("lookup_hit.sql").replace(":i", "$1")
# The same-run contender: all four scripts in one pgbench run, each transaction
# picking one at random, so that they share every moment of the machine's noise.
SAME_RUN = ("lookup-hit", "lookup-miss", "lookup-expired", "lookup-hit-narrow")


def explain_lookup(conn: psycopg.Connection, key: int) -> dict[str, Any]:
    """The lookup's plan with the key as pgbench sends it: custom plan (executed) and generic plan."""
    plan = plan_of(
        conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + LOOKUP_QUERY.replace("$1", "%s"), (str(key),)
        ).fetchone()
    )
    with conn.transaction():
        conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        conn.execute("PREPARE bench_lookup(text) AS " + LOOKUP_QUERY)
        generic_plan = plan_of(conn.execute("EXPLAIN (FORMAT JSON) EXECUTE bench_lookup('1')").fetchone())
        conn.execute("DEALLOCATE bench_lookup")
    return {
        "plan": describe_plan(plan),
        "generic_plan": describe_plan(generic_plan),
        "uses_primary_key": all(
            any(node.get("Index Name") == "idempotency_records_pkey" for node in plan_nodes(p))
            and not any(node["Node Type"] == "Seq Scan" for node in plan_nodes(p))
            for p in (plan, generic_plan)
        ),
        "shared_buffers_hit": plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0),
    }


def explain_anchor(conn: psycopg.Connection) -> dict[str, Any]:
    plan = plan_of(
        conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT abalance FROM pgbench_accounts WHERE aid = 42"
        ).fetchone()
    )
    return {
        "plan": describe_plan(plan),
        "shared_buffers_hit": plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0),
    }


def load_table(ctx: Context, size: int, now: dt.datetime) -> str:
    """The migrated table of `size` rows, 10% expired, vacuumed, in schema size_<size>."""
    expired = int(size * EXPIRED_FRACTION)
    schema = f"size_{size}"
    progress(f"lookup: loading {size:,} rows ({expired:,} expired) into {schema}")
    with migrated_schema(ctx.server, ctx.db, schema) as conn:
        load_rows(conn, size, expired, LOOKUP_PAYLOAD, now)
        vacuum(conn)
    return schema


def anchor_table(ctx: Context, size: int, anchors: set[int]) -> str:
    """pgbench -i at the scale nearest to `size` rows (100,000 per unit), once per scale."""
    scale = max(1, round(size / 100_000))
    schema = f"anchor_{scale}"
    if scale not in anchors:
        progress(f"lookup: pgbench -i -s {scale} into {schema}")
        ctx.bench.initialize(schema, scale)
        anchors.add(scale)
    return schema


def record_plans(ctx: Context, size: int, schema: str, anchor_schema: str) -> None:
    expired = int(size * EXPIRED_FRACTION)
    with ctx.connect(schema) as conn:
        ctx.notes.setdefault("lookup_plans", {})[str(size)] = {
            "hit": explain_lookup(conn, size),
            "miss": explain_lookup(conn, 2 * size),
            "expired": explain_lookup(conn, max(1, expired)),
        }
    scale = int(anchor_schema.removeprefix("anchor_"))
    with ctx.connect(anchor_schema) as conn:
        ctx.notes.setdefault("anchor_plans", {})[str(scale)] = explain_anchor(conn)
        ctx.notes.setdefault("anchor_rows", {})[str(size)] = scale * 100_000


def run_same_run(ctx: Context, size: int, schema: str, anchor_schema: str, variables: dict[str, object]) -> None:
    mixed = [*(arg for name in SAME_RUN for arg in script(name.replace("-", "_") + ".sql")), "-b", "select-only"]
    run = ctx.bench.run(f"{schema},{anchor_schema}", mixed, variables)
    means = [statistics.fmean(run.latencies_of_script(n)) for n in range(len(SAME_RUN) + 1)]
    for number, name in enumerate(SAME_RUN):
        ctx.samples.add("lookup", name, size, "same_run_speed_ratio", "x", means[-1] / means[number])


def measure_size(ctx: Context, size: int, schema: str, anchor_schema: str) -> None:
    variables: dict[str, object] = {"size": size, "expired": int(size * EXPIRED_FRACTION)}
    contenders = {
        "lookup-hit": (schema, script("lookup_hit.sql")),
        "lookup-miss": (schema, script("lookup_miss.sql")),
        "lookup-expired": (schema, script("lookup_expired.sql")),
        "pgbench -S": (anchor_schema, ["--select-only"]),
    }
    for where, args in contenders.values():  # warm-up, not recorded
        ctx.bench.run(where, args, variables, duration=1)
    with ctx.connect() as stats:
        for round_ in range(ctx.config.rounds):
            progress(f"lookup: {size:,} rows, round {round_ + 1}/{ctx.config.rounds}")
            tps: dict[str, float] = {}
            for workload in rotate([*contenders, "same-run"], round_):
                if workload == "same-run":
                    run_same_run(ctx, size, schema, anchor_schema, variables)
                    continue
                where, args = contenders[workload]
                reset_statements(stats)
                run = ctx.bench.run(where, args, variables)
                ctx.samples.add_run("lookup", workload, size, run)
                pattern = ANCHOR_PATTERN if workload == "pgbench -S" else LOOKUP_PATTERN
                ctx.samples.add_statements("lookup", workload, size, statements_stats(stats, pattern))
                tps[workload] = run.tps
            for workload in ("lookup-hit", "lookup-miss", "lookup-expired"):
                ctx.samples.add("lookup", workload, size, "ratio_to_pgbench_S", "x", tps[workload] / tps["pgbench -S"])


def run(ctx: Context) -> None:
    now = dt.datetime.now(dt.UTC)
    anchors: set[int] = set()
    for size in ctx.config.sizes:
        schema = load_table(ctx, size, now)
        anchor_schema = anchor_table(ctx, size, anchors)
        record_plans(ctx, size, schema, anchor_schema)
        measure_size(ctx, size, schema, anchor_schema)
