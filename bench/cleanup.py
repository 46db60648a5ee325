"""Cleanup phase: N expired rows among M deleted while hit lookups run, by the installed
cleanup_expired_idempotency_records(), by the design report's original body (the anchor,
bench/report_cleanup_function.sql), by the guide's batch (by ctid) from the caller and by the
same batch deleting by request_id; against a do-nothing control (pg_sleep for as long as the installed
function takes) measured the same way, the wait-event sampler running in its window as
in theirs; then the vacuum each cleanup leaves behind."""

from __future__ import annotations

import datetime as dt
import math
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable

import psycopg
from psycopg import sql

from bench import database
from bench.config import DEFAULT_SIZE, EXPIRED_FRACTION, LOOKUP_PAYLOAD
from bench.context import Context, progress, rotate
from bench.pgbench import script
from bench.samples import percentile
from tooling import servers
from tooling.plans import describe_plan

CLEANUP_BATCH = 5_000  # rows per transaction in the caller-batched cleanup
CLEANUP_PAUSE = 0.02  # seconds between two batches: lets concurrent lookups through


def batch_statement(name: str) -> str:
    """A bench/*.sql batch with its size a parameter in place of its one LIMIT 1000."""
    statement = database.read_sql(name).replace("LIMIT 1000", "LIMIT %s")
    assert statement.count("LIMIT %s") == 1, f"bench/{name}: expected one LIMIT 1000 to parametrise"
    return statement


BATCH_DELETE = batch_statement("cleanup_batch.sql")  # the guide's batch (Patterns, recipe 4)
KEY_BATCH_DELETE = batch_statement("cleanup_batch_key.sql")  # the same batch, deleting by request_id
CONTROL = "cleanup-control"
INSTALLED = "cleanup-single"
ANCHOR = "cleanup-anchor"
BATCHED = "cleanup-batched"
BATCHED_KEY = "cleanup-batched-key"
RECOMMENDED = (INSTALLED, BATCHED)  # the guide's two ways, each judged against the control


class WaitSampler(threading.Thread):
    """Samples the wait events of the benchmark database's active backends."""

    def __init__(self, server: servers.Server, db: str) -> None:
        super().__init__(daemon=True)
        self.server, self.db = server, db
        self.counts: Counter[str] = Counter()
        self.stop_event = threading.Event()

    def run(self) -> None:
        with self.server.connect(self.db, autocommit=True) as conn:
            while not self.stop_event.is_set():
                for backend_type, event_type, event in conn.execute(
                    "SELECT backend_type, coalesce(wait_event_type, 'CPU'), coalesce(wait_event, 'running')"
                    " FROM pg_stat_activity"
                    " WHERE state = 'active' AND pid <> pg_backend_pid()"
                    "   AND (datname = current_database() OR datname IS NULL)"
                ):
                    self.counts[f"{backend_type}: {event_type}/{event}"] += 1
                time.sleep(0.02)


def cleanup_function(name: str) -> Callable[[psycopg.Connection], int]:
    """A call of the cleanup function `name`, returning its deleted_count."""

    def call(conn: psycopg.Connection) -> int:
        row = conn.execute(sql.SQL("SELECT deleted_count FROM {}()").format(sql.Identifier(name))).fetchone()
        assert row is not None
        return int(row[0])

    return call


def cleanup_batched(statement: str) -> Callable[[psycopg.Connection], int]:
    """The caller's loop: delete at most CLEANUP_BATCH expired rows per transaction, pause, repeat."""

    def loop(conn: psycopg.Connection) -> int:
        deleted = 0
        while True:
            cursor = conn.execute(statement, (CLEANUP_BATCH,))
            deleted += cursor.rowcount
            if cursor.rowcount < CLEANUP_BATCH:
                return deleted
            time.sleep(CLEANUP_PAUSE)

    return loop


class DoNothing:
    """The control: holds the cleanup's connection busy for as long as the installed
    function last took (pg_sleep), deleting nothing."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, conn: psycopg.Connection) -> int:
        conn.execute("SELECT pg_sleep(%s)", (self.seconds,))
        return 0


DO_NOTHING = DoNothing(0.2)
CLEANUPS: dict[str, Callable[[psycopg.Connection], int]] = {
    CONTROL: DO_NOTHING,
    INSTALLED: cleanup_function("cleanup_expired_idempotency_records"),  # the migrations' function, as installed
    ANCHOR: cleanup_function("bench_cleanup_anchor"),  # the report's body, created by create_anchor()
    BATCHED: cleanup_batched(BATCH_DELETE),
    BATCHED_KEY: cleanup_batched(KEY_BATCH_DELETE),
}


def create_anchor(conn: psycopg.Connection) -> None:
    """bench_cleanup_anchor(): the report's function under the benchmark's own name, in the schema
    of the measured table (the connection's search_path) and pinned to it, as the installed one is."""
    report = database.read_sql("report_cleanup_function.sql")
    with conn.transaction():
        conn.execute(report.replace("cleanup_expired_idempotency_records()", "bench_cleanup_anchor()"))
        conn.execute("ALTER FUNCTION bench_cleanup_anchor() SET search_path FROM CURRENT")


def restore_expired(conn: psycopg.Connection, size: int, expired: int, now: dt.datetime) -> None:
    """Put the expired rows back after a cleanup, the table vacuumed as before."""
    if database.expired_count(conn, now) < expired:
        database.vacuum(conn)
        database.load_rows(conn, size, expired, LOOKUP_PAYLOAD, now, last=expired)
        database.vacuum(conn)


# The vacuum a cleanup leaves behind, alternately as a job runs it right after the cleanup
# (unthrottled) and as autovacuum would (its default cost-based throttling: a 2 ms pause
# every 200 cost units).
VACUUMS = {
    "vacuum-after-cleanup": "SET vacuum_cost_delay = 0",
    "vacuum-throttled": "SET vacuum_cost_delay = '2ms'",
}


def vacuum_after_cleanup(ctx: Context, conn: psycopg.Connection, size: int, now: dt.datetime, expired: int) -> None:
    """The cost a cleanup leaves behind: the vacuum that removes its dead rows and their
    entries in all three indexes. Measured only after a cleanup ran."""
    if database.expired_count(conn, now) >= expired:
        return
    done = sum(len(ctx.samples.of("cleanup", name, size, "duration")) for name in VACUUMS)
    workload = list(VACUUMS)[done % len(VACUUMS)]
    conn.execute(VACUUMS[workload])
    conn.execute("SET vacuum_cost_limit = 200")
    start_lsn, started = database.wal_lsn(conn), time.time()
    database.vacuum(conn)
    ctx.samples.add("cleanup", workload, size, "duration", "s", time.time() - started)
    ctx.samples.add(
        "cleanup", workload, size, "wal_bytes", "bytes", database.wal_bytes(conn, start_lsn, database.wal_lsn(conn))
    )
    conn.execute("RESET vacuum_cost_delay")
    conn.execute("RESET vacuum_cost_limit")


def measure_cleanup(
    ctx: Context, conn: psycopg.Connection, stats: psycopg.Connection, workload: str, size: int, duration: int
) -> tuple[float, Counter[str]]:
    """One cleanup while hit lookups run; returns its duration and the wait events sampled during it."""
    variables: dict[str, object] = {"size": size, "expired": int(size * EXPIRED_FRACTION)}
    schema = f"size_{size}"
    process, prefix = ctx.bench.start(schema, script("lookup_hit.sql"), variables, duration)
    time.sleep(1.0)
    sampler = WaitSampler(ctx.server, ctx.db)
    sampler.start()
    start_lsn, started = database.wal_lsn(conn), time.time()
    deleted = CLEANUPS[workload](conn)
    ended = time.time()
    end_lsn = database.wal_lsn(conn)
    sampler.stop_event.set()
    sampler.join()
    run = ctx.bench.finish(process, prefix)
    seconds = ended - started
    during = run.latencies_overlapping(started, ended)
    add = ctx.samples.add
    add("cleanup", workload, size, "duration", "s", seconds)
    if workload != CONTROL:
        add("cleanup", workload, size, "rows_deleted", "rows", deleted)
        add("cleanup", workload, size, "rows_per_s", "rows/s", deleted / seconds)
        add("cleanup", workload, size, "wal_bytes", "bytes", database.wal_bytes(conn, start_lsn, end_lsn))
    add("cleanup", workload, size, "lookups_during", "tx", len(during))
    add("cleanup", workload, size, "latency_p50", "ms", percentile(during, 0.50) / 1000)
    add("cleanup", workload, size, "latency_p99", "ms", percentile(during, 0.99) / 1000)
    ctx.samples.add_statements("cleanup", workload, size, database.statements_stats(stats))
    return seconds, sampler.counts


def contenders(size: int) -> list[str]:
    """Every cleanup up to the default size; above it (1M expired among 10M: each round
    reloads a million rows per cleanup) only the control and the two judged cleanups."""
    return list(CLEANUPS) if size <= DEFAULT_SIZE else [CONTROL, *RECOMMENDED]


def add_round_ratios(ctx: Context, size: int) -> None:
    """This round's ratios: each cleanup's lookup p99 to the do-nothing control's; the
    installed cleanup's rows/s, WAL and lookup p99 to the anchor's."""
    last = ctx.samples.last
    control = last("cleanup", CONTROL, size, "latency_p99", "ms")
    for workload in contenders(size):
        if workload == CONTROL:
            continue
        during_p99 = last("cleanup", workload, size, "latency_p99", "ms")
        ctx.samples.add("cleanup", workload, size, "p99_ratio_to_control", "x", during_p99 / control)
    if ANCHOR not in contenders(size):
        return
    for metric, unit in (("rows_per_s", "rows/s"), ("wal_bytes", "bytes"), ("latency_p99", "ms")):
        ratio = last("cleanup", INSTALLED, size, metric, unit) / last("cleanup", ANCHOR, size, metric, unit)
        ctx.samples.add("cleanup", INSTALLED, size, f"{metric}_ratio_to_anchor", "x", ratio)


def run(ctx: Context) -> None:
    size = max(ctx.config.sizes)
    expired = int(size * EXPIRED_FRACTION)
    schema = f"size_{size}"
    now = dt.datetime.now(dt.UTC)
    # How long each contender takes: the pgbench run must outlast it (1 s before, as
    # long after), so the runs are only as long as their contender needs.
    estimate = dict.fromkeys(CLEANUPS, max(1.0, expired / 50_000))
    waits: dict[str, Counter[str]] = {workload: Counter() for workload in CLEANUPS}
    with ctx.connect() as stats, ctx.connect(schema) as setup:  # stats: public, where pg_stat_statements is
        database.reset_statements(stats)
        create_anchor(setup)
        with ctx.connect(schema) as conn:  # not recorded: how long the installed function takes here
            database.checkpoint(conn)
            started = time.time()
            CLEANUPS[INSTALLED](conn)
            DO_NOTHING.seconds = time.time() - started
        for round_ in range(ctx.config.rounds):
            progress(f"cleanup: {expired:,} expired among {size:,}, round {round_ + 1}/{ctx.config.rounds}")
            for workload in rotate(contenders(size), round_):
                duration = max(ctx.config.duration, math.ceil(1.5 + 1.5 * estimate[workload]))
                with ctx.connect(schema) as conn:
                    vacuum_after_cleanup(ctx, conn, size, now, expired)
                    restore_expired(conn, size, expired, now)
                    database.checkpoint(conn)
                    database.reset_statements(stats)
                    seconds, counts = measure_cleanup(ctx, conn, stats, workload, size, duration)
                    waits[workload].update(counts)
                    estimate[workload] = seconds
                    if workload == INSTALLED:
                        DO_NOTHING.seconds = statistics.median(ctx.samples.of("cleanup", INSTALLED, size, "duration"))
            add_round_ratios(ctx, size)
        restore_expired(setup, size, expired, now)
        plan = database.explain(setup, "DELETE FROM idempotency_records WHERE expires_at <= now()")
    ctx.notes["cleanup"] = {
        "rows": size,
        "expired": expired,
        "batch": CLEANUP_BATCH,
        "control": "pg_sleep for the median duration of the installed function so far, the sampler running",
        "autovacuum": "off on the table; VACUUM (ANALYZE) after every cleanup, before the next round",
        "pause_s": CLEANUP_PAUSE,
        "anchor": "the design report's body, one DELETE ... WHERE expires_at <= now() (bench/report_cleanup_function.sql)",
        "scaled_down": ctx.config.quick,
        "contenders": contenders(size),
        "wait_events": {workload: dict(counter.most_common(8)) for workload, counter in waits.items()},
        "plan": describe_plan(plan),
    }
