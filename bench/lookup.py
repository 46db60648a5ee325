"""Lookup phase: the hit lookup (all six columns, and the narrow form a duplicate is
answered with) at each table size against pgbench -S (the built-in primary key lookup),
judged by server time per call (pg_stat_statements) and by throughput of separate runs,
with a control: pgbench -S plus a fixed, known extra server cost. All of them, with the
miss and hit-on-expired lookups, also run together in one mixed run, to show what such a
run does to differences: the control's ratio there against its ratio in separate runs."""

from __future__ import annotations

import datetime as dt
import json
import random
import statistics
from typing import Any

import psycopg
from psycopg import sql

from bench.config import EXPIRED_FRACTION, KEY_BASE, KEY_MODULUS, KEY_PREFIX, KEY_STEP, LOOKUP_PAYLOAD, SEED
from bench.context import Context, progress, rotate
from bench.database import (
    ANCHOR_PATTERN,
    CONTROL_PATTERN,
    LOOKUP_PATTERN,
    NARROW_PATTERN,
    autovacuum_off,
    checkpoint,
    load_rows,
    migrated_schema,
    plan_of,
    reset_statements,
    script_statement,
    statements_stats,
    vacuum,
)
from bench.pgbench import script
from tooling.plans import describe_plan, plan_nodes

# The lookup the hit/miss/expired scripts run, with the key as pgbench's prepared statement binds it.
LOOKUP_QUERY = script_statement("lookup_hit.sql").replace("(:prefix || :k)::uuid", "$1")
# The mixed run: these scripts and pgbench -S in one pgbench run, each transaction picking
# one at random. Shown beside the separate runs, never a verdict: on few cores the clients
# queue for the CPU, which adds the same wait to every script and compresses differences.
SAME_RUN = ("lookup-hit", "lookup-miss", "lookup-expired", "lookup-hit-narrow", "control")
SCRIPTS = {
    "lookup-hit": "lookup_hit.sql",
    "lookup-miss": "lookup_miss.sql",
    "lookup-expired": "lookup_expired.sql",
    "lookup-hit-narrow": "lookup_hit_narrow.sql",
    "control": "control_fixed_cost.sql",
}
ANCHOR = "pgbench -S"
CONTROL = "control"
EXTRA_WORK = 1000  # rows the control counts on top of pgbench -S's lookup: its fixed extra cost
# The separate-run contenders, each with the pg_stat_statements pattern of its statement.
SEPARATE = {
    "lookup-hit": LOOKUP_PATTERN,
    "lookup-hit-narrow": NARROW_PATTERN,
    ANCHOR: ANCHOR_PATTERN,
    CONTROL: CONTROL_PATTERN,
}
JUDGED = ("lookup-hit", "lookup-hit-narrow", CONTROL)


def key_of(row: int) -> str:
    """Row `row`'s key, as the scripts bind it."""
    return KEY_PREFIX + str(KEY_BASE + row * KEY_STEP % KEY_MODULUS)


def explain_lookup(conn: psycopg.Connection, key: int) -> dict[str, Any]:
    """The lookup's plan with the key as pgbench sends it: custom plan (executed) and generic plan."""
    plan = plan_of(
        conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + LOOKUP_QUERY.replace("$1", "%s::uuid"), (key_of(key),)
        ).fetchone()
    )
    with conn.transaction():
        conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        conn.execute("PREPARE bench_lookup(uuid) AS " + LOOKUP_QUERY)
        generic_plan = plan_of(
            conn.execute(
                sql.SQL("EXPLAIN (FORMAT JSON) EXECUTE bench_lookup({})").format(sql.Literal(key_of(key)))
            ).fetchone()
        )
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
        autovacuum_off(conn)
        load_rows(conn, size, expired, LOOKUP_PAYLOAD, now)
        vacuum(conn)
        prewarm(conn, "idempotency_records", "idempotency_records_pkey")
    return schema


def prewarm(conn: psycopg.Connection, *relations: str) -> None:
    """Read relations into shared_buffers (pg_prewarm, where the server has it)."""
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm SCHEMA public")
        for relation in relations:
            conn.execute("SELECT public.pg_prewarm(%s::regclass)", (relation,))
    except psycopg.Error:
        return


def anchor_table(ctx: Context, size: int, anchors: set[int]) -> str:
    """pgbench -i at the scale nearest to `size` rows (100,000 per unit), once per scale."""
    scale = max(1, round(size / 100_000))
    schema = f"anchor_{scale}"
    if scale not in anchors:
        progress(f"lookup: pgbench -i -s {scale} into {schema}")
        ctx.bench.initialize(schema, scale)
        with ctx.connect(schema) as conn:
            autovacuum_off(conn, "pgbench_accounts")
            prewarm(conn, "pgbench_accounts", "pgbench_accounts_pkey")
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


def run_same_run(ctx: Context, size: int, where: str, variables: dict[str, object]) -> None:
    mixed = [*(arg for name in SAME_RUN for arg in script(SCRIPTS[name])), "-b", "select-only"]
    run = ctx.bench.run(where, mixed, variables)
    means = [statistics.fmean(run.latencies_of_script(n)) for n in range(len(SAME_RUN) + 1)]
    for number, name in enumerate(SAME_RUN):
        ctx.samples.add("lookup", name, size, "same_run_speed_ratio", "x", means[-1] / means[number])


def run_separate(
    ctx: Context, stats: psycopg.Connection, size: int, workload: str, where: str, variables: dict[str, object]
) -> None:
    """One contender alone; its throughput, latencies and server time per call."""
    args = ["--select-only"] if workload == ANCHOR else script(SCRIPTS[workload])
    reset_statements(stats)
    run = ctx.bench.run(where, args, variables)
    ctx.samples.add_run("lookup", workload, size, run)
    if ctx.notes["pg_stat_statements"]:
        ctx.samples.add_statements("lookup", workload, size, statements_stats(stats, SEPARATE[workload]))
    else:
        with ctx.connect(where) as conn:
            ctx.samples.add_statements("lookup", workload, size, explained_calls(conn, workload, variables))


# Without pg_stat_statements (PostgreSQL 16 from pgserver ships without it), the server
# time per call comes from EXPLAIN (ANALYZE, TIMING OFF): the executor's time for one
# call, as pg_stat_statements counts it, for EXPLAINED_CALLS keys drawn as the script
# draws them, one connection, after each run.
EXPLAINED_CALLS = 200
STATEMENTS = {
    "lookup-hit": LOOKUP_QUERY,
    "lookup-hit-narrow": script_statement("lookup_hit_narrow.sql").replace("(:prefix || :k)::uuid", "$1"),
    ANCHOR: "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    CONTROL: script_statement("control_fixed_cost.sql").replace(":aid", "$1"),
}


def explained_calls(conn: psycopg.Connection, workload: str, variables: dict[str, object]) -> dict[str, float]:
    """Mean server time, buffers and blocks read per call, by EXPLAIN (ANALYZE, TIMING OFF, BUFFERS)."""
    draw = random.Random(ctx_seed(variables))
    statement = STATEMENTS[workload].replace(":extra_work", str(EXTRA_WORK))
    size, expired, anchor_rows = (int(str(variables[name])) for name in ("size", "expired", "anchor_rows"))
    totals = {"server_exec_ms": 0.0, "buffers_per_call": 0.0, "reads_per_call": 0.0}
    for _ in range(EXPLAINED_CALLS):
        if workload in (ANCHOR, CONTROL):
            key: object = draw.randint(1, anchor_rows)
        else:
            key = key_of(draw.randint(expired + 1, size))
        query = sql.SQL("EXPLAIN (ANALYZE, TIMING OFF, BUFFERS, FORMAT JSON) {}").format(
            sql.SQL(statement.replace("$1", "{}")).format(sql.Literal(key))
        )
        row = conn.execute(query).fetchone()
        assert row is not None
        document = row[0] if not isinstance(row[0], str) else json.loads(row[0])
        plan = document[0]["Plan"]
        totals["server_exec_ms"] += float(document[0]["Execution Time"])
        totals["buffers_per_call"] += plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
        totals["reads_per_call"] += plan.get("Shared Read Blocks", 0)
    return {metric: total / EXPLAINED_CALLS for metric, total in totals.items()}


def ctx_seed(variables: dict[str, object]) -> int:
    """The fixed seed, varied by table size so that each size draws its own keys."""
    return SEED + int(str(variables["size"]))


def add_round_ratios(ctx: Context, size: int) -> None:
    """This round's speed ratios to pgbench -S: by throughput and by server time per call."""
    last = ctx.samples.last
    for workload in JUDGED:
        tps = last("lookup", workload, size, "tps", "tx/s") / last("lookup", ANCHOR, size, "tps", "tx/s")
        ctx.samples.add("lookup", workload, size, "ratio_to_pgbench_S", "x", tps)
        if ctx.samples.of("lookup", ANCHOR, size, "server_exec_ms") and ctx.samples.of(
            "lookup", workload, size, "server_exec_ms"
        ):
            server = last("lookup", ANCHOR, size, "server_exec_ms", "ms") / last(
                "lookup", workload, size, "server_exec_ms", "ms"
            )
            ctx.samples.add("lookup", workload, size, "server_time_ratio_to_pgbench_S", "x", server)


def measure_size(ctx: Context, size: int, schema: str, anchor_schema: str) -> None:
    scale = int(anchor_schema.removeprefix("anchor_"))
    variables: dict[str, object] = {
        "size": size,
        "expired": int(size * EXPIRED_FRACTION),
        "anchor_rows": scale * 100_000,
        "extra_work": EXTRA_WORK,
    }
    where = {name: schema for name in SCRIPTS} | {ANCHOR: anchor_schema, CONTROL: anchor_schema}
    both = f"{schema},{anchor_schema}"
    with ctx.connect() as stats:
        checkpoint(stats)
        for workload in SEPARATE:  # warm-up, not recorded
            ctx.bench.run(
                where[workload],
                ["--select-only"] if workload == ANCHOR else script(SCRIPTS[workload]),
                variables,
                duration=1,
            )
        for round_ in range(ctx.config.rounds):
            progress(f"lookup: {size:,} rows, round {round_ + 1}/{ctx.config.rounds}")
            for workload in rotate([*SEPARATE, "same-run"], round_):
                if workload == "same-run":
                    run_same_run(ctx, size, both, variables)
                else:
                    run_separate(ctx, stats, size, workload, where[workload], variables)
            add_round_ratios(ctx, size)


def run(ctx: Context) -> None:
    now = dt.datetime.now(dt.UTC)
    anchors: set[int] = set()
    ctx.notes["lookup_control"] = {"extra_work_rows": EXTRA_WORK, "script": "bench/control_fixed_cost.sql"}
    for size in ctx.config.sizes:
        schema = load_table(ctx, size, now)
        anchor_schema = anchor_table(ctx, size, anchors)
        record_plans(ctx, size, schema, anchor_schema)
        measure_size(ctx, size, schema, anchor_schema)
