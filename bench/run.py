"""`make bench`: the measured cost of every hot path, against pgbench on the same server.

Runs real pgbench (the binary next to the server's) with the scripts in bench/*.sql,
several clients and the prepared protocol, and compares each workload with an anchor
measured in the same run:

    lookup  hit / miss / hit-on-expired at each table size   vs  pgbench -S (built-in PK lookup)
    save    upsert of a new key / of an existing key          vs  the same upsert on a PK-only table
    cleanup delete N expired rows among M, with lookups
            running, single statement and caller-batched      vs  TRUNCATE / dropping a partition
    storage bytes per row of the table and each index at payloads of 50 B, 200 B and 2 KB,
            and the report's 40,000-row scenario

Contenders alternate inside each round and every round repeats them all, so that a
noisy neighbour slows all of them alike; medians and the spread (min-max) are reported.
Ratios are taken within a round, then their median is reported.

Server: DATABASE_URL or PG* (the role needs CREATEDB), else a throwaway local server of
the selected major (PG=15|16|18) with normal durability (fsync and full_page_writes on).
Everything happens in a database idempotency_bench_<pid>, dropped at the end.

    python bench/run.py [--quick] [--size N] [--rounds R] [--duration S] [--out DIR]

Writes DIR/bench.csv, DIR/bench.json and DIR/bench.png (default bench/results).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/run.py` as well as `python -m bench.run`
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from tests import helpers, patterns  # noqa: E402
from tooling import servers  # noqa: E402

BENCH_DIR = ROOT / "bench"
EXPIRED_FRACTION = 0.10  # share of every lookup table that has expired: the cleanup's N among M
LOOKUP_PAYLOAD = 200  # bytes of result_payload in the lookup and save tables (the report's estimate)
STORAGE_PAYLOADS = (50, 200, 2048)
SCENARIO_ROWS = 40_000  # the report: "~40,000 active records", "~8 MB table, ~4 MB indexes"
CLEANUP_BATCH = 5_000  # rows per transaction in the caller-batched cleanup
# The guide's batch (Patterns, recipe 4), its size a parameter here.
BATCH_DELETE = patterns.CLEANUP_BATCH.replace(f"LIMIT {patterns.BATCH_SIZE}", "LIMIT %s")
assert "LIMIT %s" in BATCH_DELETE
CLEANUP_PAUSE = 0.02  # seconds between two batches: lets concurrent lookups through
LOAD_BATCH = 250_000

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
REPORTED_SETTINGS = (
    "server_version",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_level",
    "shared_buffers",
    "max_wal_size",
    "checkpoint_timeout",
    "autovacuum",
    "random_page_cost",
)

LOOKUP_QUERY = (
    "SELECT request_id, operation, result_payload, status_code, created_at, expires_at "
    "FROM idempotency_records WHERE request_id = md5($1::text)::uuid AND expires_at > now()"
)

LOAD_SQL = """
INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, created_at, expires_at)
SELECT md5(i::text)::uuid,
       (ARRAY['payment', 'transfer', 'refund', 'login'])[1 + i %% 4],
       payload.body,
       200,
       stamp.created_at,
       stamp.created_at + INTERVAL '24 hours'
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i
CROSS JOIN LATERAL (
    SELECT CASE
        WHEN i <= %(expired)s
            THEN %(now)s::timestamptz - INTERVAL '48 hours' + INTERVAL '23 hours' * i / greatest(%(expired)s, 1)
        ELSE %(now)s::timestamptz - INTERVAL '23 hours'
            + INTERVAL '22 hours' * (i - %(expired)s) / greatest(%(total)s - %(expired)s, 1)
    END AS created_at
) AS stamp
CROSS JOIN LATERAL (
    SELECT '{"d":"' || left(string_agg(md5(i::text || ':' || k::text), '' ORDER BY k), %(payload)s - 8) || '"}'
        AS body
    FROM generate_series(1, (%(payload)s + 31) / 32) AS k
) AS payload
"""

PK_ONLY_TABLE = """
CREATE TABLE idempotency_records (
    request_id UUID PRIMARY KEY,
    operation VARCHAR(100) NOT NULL,
    result_payload TEXT NOT NULL,
    status_code INTEGER,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL
)
"""


@dataclasses.dataclass(frozen=True)
class Config:
    sizes: tuple[int, ...]
    rounds: int
    duration: int
    clients: int
    jobs: int
    save_rows: int
    storage_rows: int
    quick: bool
    out: Path


@dataclasses.dataclass
class Run:
    """One pgbench run: throughput and per-transaction latencies from its log."""

    tps: float
    latencies_us: list[int]
    finished_at: list[float]  # epoch seconds at which each transaction completed
    script_numbers: list[int]  # which script (0-based, in command-line order) each transaction ran

    def latencies_of_script(self, number: int) -> list[int]:
        return [lat for lat, script in zip(self.latencies_us, self.script_numbers, strict=True) if script == number]

    def latencies_overlapping(self, start: float, end: float) -> list[int]:
        """Latencies of the transactions that ran at some point between start and end.

        Clients run transactions back to back, so every interval overlaps at least
        one transaction per client, however short the interval."""
        return [
            latency
            for latency, finished in zip(self.latencies_us, self.finished_at, strict=True)
            if finished >= start and finished - latency / 1e6 <= end
        ]


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return float(ordered[max(0, math.ceil(fraction * len(ordered)) - 1)])


class Samples:
    """Every measured value, keyed by (phase, workload, size, metric, unit)."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str, int, str, str], list[float]] = {}

    def add(self, phase: str, workload: str, size: int, metric: str, unit: str, value: float) -> None:
        self.values.setdefault((phase, workload, size, metric, unit), []).append(float(value))

    def median(self, phase: str, workload: str, size: int, metric: str) -> float:
        for (p, w, s, m, _), values in self.values.items():
            if (p, w, s, m) == (phase, workload, size, metric):
                return statistics.median(values)
        return math.nan

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "phase": phase,
                "workload": workload,
                "size": size,
                "metric": metric,
                "unit": unit,
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "rounds": len(values),
            }
            for (phase, workload, size, metric, unit), values in self.values.items()
        ]


# --------------------------------------------------------------------------- server


@contextlib.contextmanager
def bench_server() -> Iterator[servers.Server]:
    """The user's server (DATABASE_URL / PG*), else a throwaway one with normal durability."""
    settings = dict(BENCH_SETTINGS)
    lib = servers.bindir().parent / "lib"
    if not (lib / "pg_stat_statements.so").exists() and not list(lib.glob("*/pg_stat_statements.so")):
        settings.pop("shared_preload_libraries")
    with servers.session_server("idempotency-bench-", settings) as server:
        yield server


@contextlib.contextmanager
def bench_database(server: servers.Server) -> Iterator[str]:
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


def pgbench_binary(server: servers.Server) -> str:
    """PGBENCH, else the server's own pgbench, else the selected major's, else PATH."""
    if os.environ.get("PGBENCH"):
        return os.environ["PGBENCH"]
    if server.bindir is not None:
        return server.tool("pgbench")
    with contextlib.suppress(SystemExit):
        candidate = servers.bindir() / "pgbench"
        if candidate.exists():
            return str(candidate)
    return server.tool("pgbench")


class Pgbench:
    def __init__(self, server: servers.Server, db: str, config: Config, logdir: Path) -> None:
        self.server, self.db, self.config, self.logdir = server, db, config, logdir
        self.binary = pgbench_binary(server)
        self._runs = 0

    def _env(self, schema: str) -> dict[str, str]:
        env = {**os.environ, "PGOPTIONS": f"-c search_path={schema}"}
        if self.server.password:
            env["PGPASSWORD"] = self.server.password
        return env

    def _base(self) -> list[str]:
        return [self.binary, "-h", self.server.host, "-p", str(self.server.port), "-U", self.server.user]

    def initialize(self, schema: str, scale: int) -> None:
        """pgbench -i into its own schema (server-side data generation, vacuum, primary keys)."""
        with connect(self.server, self.db) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        subprocess.run(
            [*self._base(), "-i", "-q", "-I", "dtGvp", "-s", str(scale), self.db],
            env=self._env(schema),
            check=True,
            capture_output=True,
            text=True,
        )

    def start(
        self, schema: str, script: list[str], variables: dict[str, object], duration: int
    ) -> tuple[subprocess.Popen[str], Path]:
        self._runs += 1
        prefix = self.logdir / f"run{self._runs}"
        defines = [f"--define={name}={value}" for name, value in variables.items()]
        command = [
            *self._base(),
            "--no-vacuum",
            "--protocol=prepared",
            f"--client={self.config.clients}",
            f"--jobs={self.config.jobs}",
            f"--time={duration}",
            "--log",
            f"--log-prefix={prefix}",
            *defines,
            *script,
            self.db,
        ]
        process = subprocess.Popen(
            command, env=self._env(schema), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        return process, prefix

    @staticmethod
    def finish(process: subprocess.Popen[str], prefix: Path) -> Run:
        stdout, stderr = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"pgbench failed ({process.returncode}):\n{stdout}\n{stderr}")
        match = re.search(r"^tps = ([0-9.]+)", stdout, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"pgbench printed no tps:\n{stdout}\n{stderr}")
        latencies: list[int] = []
        finished: list[float] = []
        scripts: list[int] = []
        for path in sorted(prefix.parent.glob(prefix.name + ".*")):
            for line in path.read_text().splitlines():
                fields = line.split()
                latencies.append(int(fields[2]))
                finished.append(int(fields[4]) + int(fields[5]) / 1e6)
                scripts.append(int(fields[3]))
            path.unlink()
        if not latencies:
            raise RuntimeError(f"pgbench logged no transactions:\n{stdout}\n{stderr}")
        return Run(float(match.group(1)), latencies, finished, scripts)

    def run(self, schema: str, script: list[str], variables: dict[str, object], duration: int | None = None) -> Run:
        process, prefix = self.start(schema, script, variables, duration or self.config.duration)
        return self.finish(process, prefix)


def script(name: str) -> list[str]:
    return [f"--file={BENCH_DIR / name}"]


def payload_text(size: int) -> str:
    """A JSON text of exactly `size` characters, without spaces (it goes through argv)."""
    return '{"d":"' + ("0123456789abcdef" * (size // 16 + 1))[: size - 8] + '"}'


# --------------------------------------------------------------------------- loading


def load_rows(conn: psycopg.Connection, total: int, expired: int, payload: int, now: dt.datetime) -> None:
    """Rows 1..total keyed md5(i)::uuid, the first `expired` of them expired, in time order."""
    for first in range(1, total + 1, LOAD_BATCH):
        last = min(total, first + LOAD_BATCH - 1)
        conn.execute(
            LOAD_SQL,
            {"first": first, "last": last, "expired": expired, "total": total, "payload": payload, "now": now},
        )


def migrated_schema(server: servers.Server, db: str, schema: str) -> psycopg.Connection:
    """A schema with the migrations applied (they create objects in the first schema of search_path)."""
    with connect(server, db) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn = connect(server, db, schema)
    helpers.apply_all(conn, helpers.UP_FILES)
    return conn


def vacuum(conn: psycopg.Connection) -> None:
    conn.execute("VACUUM (ANALYZE) idempotency_records")


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


def rotate(items: Sequence[str], by: int) -> list[str]:
    by %= len(items)
    return [*items[by:], *items[:by]]


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- phases


def record_run(samples: Samples, phase: str, workload: str, size: int, run: Run) -> None:
    samples.add(phase, workload, size, "tps", "tx/s", run.tps)
    samples.add(phase, workload, size, "latency_p50", "ms", percentile(run.latencies_us, 0.50) / 1000)
    samples.add(phase, workload, size, "latency_p99", "ms", percentile(run.latencies_us, 0.99) / 1000)


def explain_lookup(conn: psycopg.Connection, key: int) -> dict[str, Any]:
    """The lookup's plan with the key as pgbench sends it: custom plan (executed) and generic plan."""
    row = conn.execute(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + LOOKUP_QUERY.replace("$1", "%s"), (str(key),)
    ).fetchone()
    assert row is not None
    plan = row[0][0]["Plan"] if not isinstance(row[0], str) else json.loads(row[0])[0]["Plan"]
    with conn.transaction():
        conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        conn.execute("PREPARE bench_lookup(text) AS " + LOOKUP_QUERY)
        generic = conn.execute("EXPLAIN (FORMAT JSON) EXECUTE bench_lookup('1')").fetchone()
        conn.execute("DEALLOCATE bench_lookup")
    assert generic is not None
    generic_plan = generic[0][0]["Plan"] if not isinstance(generic[0], str) else json.loads(generic[0])[0]["Plan"]
    return {
        "plan": helpers.describe_plan(plan),
        "generic_plan": helpers.describe_plan(generic_plan),
        "uses_primary_key": all(
            any(node.get("Index Name") == "idempotency_records_pkey" for node in helpers.plan_nodes(p))
            and not any(node["Node Type"] == "Seq Scan" for node in helpers.plan_nodes(p))
            for p in (plan, generic_plan)
        ),
        "shared_buffers_hit": plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0),
    }


def explain_anchor(conn: psycopg.Connection) -> dict[str, Any]:
    row = conn.execute(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT abalance FROM pgbench_accounts WHERE aid = 42"
    ).fetchone()
    assert row is not None
    plan = row[0][0]["Plan"] if not isinstance(row[0], str) else json.loads(row[0])[0]["Plan"]
    return {
        "plan": helpers.describe_plan(plan),
        "shared_buffers_hit": plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0),
    }


def lookup_phase(
    server: servers.Server, db: str, bench: Pgbench, config: Config, samples: Samples, notes: dict[str, Any]
) -> None:
    now = dt.datetime.now(dt.UTC)
    anchors: set[int] = set()
    for size in config.sizes:
        expired = int(size * EXPIRED_FRACTION)
        schema = f"size_{size}"
        progress(f"lookup: loading {size:,} rows ({expired:,} expired) into {schema}")
        with migrated_schema(server, db, schema) as conn:
            load_rows(conn, size, expired, LOOKUP_PAYLOAD, now)
            vacuum(conn)
        scale = max(1, round(size / 100_000))
        anchor_schema = f"anchor_{scale}"
        if scale not in anchors:
            progress(f"lookup: pgbench -i -s {scale} into {anchor_schema}")
            bench.initialize(anchor_schema, scale)
            anchors.add(scale)
        variables = {"size": size, "expired": expired}
        contenders = {
            "lookup-hit": (schema, script("lookup_hit.sql")),
            "lookup-miss": (schema, script("lookup_miss.sql")),
            "lookup-expired": (schema, script("lookup_expired.sql")),
            "pgbench -S": (anchor_schema, ["--select-only"]),
        }
        with connect(server, db, schema) as conn:
            notes.setdefault("lookup_plans", {})[str(size)] = {
                "hit": explain_lookup(conn, size),
                "miss": explain_lookup(conn, 2 * size),
                "expired": explain_lookup(conn, max(1, expired)),
            }
        with connect(server, db, anchor_schema) as conn:
            notes.setdefault("anchor_plans", {})[str(scale)] = explain_anchor(conn)
            notes.setdefault("anchor_rows", {})[str(size)] = scale * 100_000
        # The same-run contender: all four scripts in one pgbench run, each transaction
        # picking one at random, so that they share every moment of the machine's noise.
        same_run = ("lookup-hit", "lookup-miss", "lookup-expired", "lookup-hit-narrow")
        mixed = [*(arg for name in same_run for arg in script(name.replace("-", "_") + ".sql")), "-b", "select-only"]
        both = f"{schema},{anchor_schema}"
        for where, args in contenders.values():  # warm-up, not recorded
            bench.run(where, args, variables, duration=1)
        stats = connect(server, db)
        for round_ in range(config.rounds):
            progress(f"lookup: {size:,} rows, round {round_ + 1}/{config.rounds}")
            tps: dict[str, float] = {}
            for workload in rotate([*contenders, "same-run"], round_):
                if workload == "same-run":
                    run = bench.run(both, mixed, variables)
                    means = [statistics.fmean(run.latencies_of_script(n)) for n in range(len(same_run) + 1)]
                    for number, name in enumerate(same_run):
                        samples.add("lookup", name, size, "same_run_speed_ratio", "x", means[-1] / means[number])
                    continue
                where, args = contenders[workload]
                reset_statements(stats)
                run = bench.run(where, args, variables)
                record_run(samples, "lookup", workload, size, run)
                pattern = ANCHOR_PATTERN if workload == "pgbench -S" else LOOKUP_PATTERN
                for metric, value in statements_stats(stats, pattern).items():
                    samples.add("lookup", workload, size, metric, "ms" if "ms" in metric else "blocks", value)
                tps[workload] = run.tps
            for workload in ("lookup-hit", "lookup-miss", "lookup-expired"):
                samples.add("lookup", workload, size, "ratio_to_pgbench_S", "x", tps[workload] / tps["pgbench -S"])
        stats.close()


def save_phase(
    server: servers.Server, db: str, bench: Pgbench, config: Config, samples: Samples, notes: dict[str, Any]
) -> None:
    now = dt.datetime.now(dt.UTC)
    rows = config.save_rows
    progress(f"save: loading {rows:,} rows into the migrated table and the PK-only table")
    with migrated_schema(server, db, "save") as conn:
        load_rows(conn, rows, 0, LOOKUP_PAYLOAD, now)
        vacuum(conn)
    with connect(server, db) as admin:
        admin.execute("CREATE SCHEMA pk_only")
    with connect(server, db, "pk_only") as conn:
        conn.execute(PK_ONLY_TABLE)
        load_rows(conn, rows, 0, LOOKUP_PAYLOAD, now)
        vacuum(conn)
    variables = {"size": rows, "payload": payload_text(LOOKUP_PAYLOAD)}
    contenders = {
        "save-new": ("save", script("save_new.sql")),
        "save-existing": ("save", script("save_existing.sql")),
        "pk-only-new": ("pk_only", script("save_new.sql")),
        "pk-only-existing": ("pk_only", script("save_existing.sql")),
    }
    for round_ in range(config.rounds):
        progress(f"save: round {round_ + 1}/{config.rounds}")
        tps: dict[str, float] = {}
        for workload in rotate(list(contenders), round_):
            where, args = contenders[workload]
            with connect(server, db) as conn:
                checkpoint(conn)
            run = bench.run(where, args, variables)
            record_run(samples, "save", workload, rows, run)
            tps[workload] = run.tps
        samples.add("save", "save-new", rows, "ratio_to_pk_only", "x", tps["save-new"] / tps["pk-only-new"])
        samples.add(
            "save", "save-existing", rows, "ratio_to_pk_only", "x", tps["save-existing"] / tps["pk-only-existing"]
        )
    notes["save_payload_bytes"] = LOOKUP_PAYLOAD


class WaitSampler(threading.Thread):
    """Samples the wait events of the benchmark database's active backends."""

    def __init__(self, server: servers.Server, db: str) -> None:
        super().__init__(daemon=True)
        self.server, self.db = server, db
        self.counts: Counter[str] = Counter()
        self.stop_event = threading.Event()

    def run(self) -> None:
        with connect(self.server, self.db) as conn:
            while not self.stop_event.is_set():
                for backend_type, event_type, event in conn.execute(
                    "SELECT backend_type, coalesce(wait_event_type, 'CPU'), coalesce(wait_event, 'running')"
                    " FROM pg_stat_activity"
                    " WHERE state = 'active' AND pid <> pg_backend_pid()"
                    "   AND (datname = current_database() OR datname IS NULL)"
                ):
                    self.counts[f"{backend_type}: {event_type}/{event}"] += 1
                time.sleep(0.02)


def cleanup_single(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT deleted_count FROM cleanup_expired_idempotency_records()").fetchone()
    assert row is not None
    return int(row[0])


def cleanup_batched(conn: psycopg.Connection) -> int:
    """The caller's loop: delete at most CLEANUP_BATCH expired rows per transaction, pause, repeat."""
    deleted = 0
    while True:
        cursor = conn.execute(BATCH_DELETE, (CLEANUP_BATCH,))
        deleted += cursor.rowcount
        if cursor.rowcount < CLEANUP_BATCH:
            return deleted
        time.sleep(CLEANUP_PAUSE)


def restore_expired(conn: psycopg.Connection, size: int, expired: int, now: dt.datetime) -> None:
    """Put the expired rows back after a cleanup, the table vacuumed as before."""
    if expired_count(conn, now) < expired:
        vacuum(conn)
        conn.execute(
            LOAD_SQL,
            {"first": 1, "last": expired, "expired": expired, "total": size, "payload": LOOKUP_PAYLOAD, "now": now},
        )
        vacuum(conn)


LOOKUP_PATTERN = "SELECT request_id, operation, result_payload%"
ANCHOR_PATTERN = "SELECT abalance FROM pgbench_accounts%"


def statements_stats(conn: psycopg.Connection, pattern: str = LOOKUP_PATTERN) -> dict[str, float]:
    """Mean server-side execution time and buffers of a statement (pg_stat_statements), when it is loaded."""
    try:
        row = conn.execute(
            "SELECT sum(total_exec_time) / nullif(sum(calls), 0), sum(shared_blks_hit + shared_blks_read)::float"
            " / nullif(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE %s",
            (pattern,),
        ).fetchone()
    except psycopg.Error:
        return {}
    if row is None or row[0] is None:
        return {}
    return {"server_exec_ms": float(row[0]), "buffers_per_call": float(row[1])}


def reset_statements(conn: psycopg.Connection) -> bool:
    try:
        conn.execute("SELECT pg_stat_statements_reset()")
    except psycopg.Error:
        return False
    return True


def cleanup_phase(
    server: servers.Server, db: str, bench: Pgbench, config: Config, samples: Samples, notes: dict[str, Any]
) -> None:
    size = max(config.sizes)
    expired = int(size * EXPIRED_FRACTION)
    schema = f"size_{size}"
    now = dt.datetime.now(dt.UTC)
    variables = {"size": size, "expired": expired}
    lookup = script("lookup_hit.sql")
    stats = connect(server, db)  # search_path public: where pg_stat_statements is created
    notes["pg_stat_statements"] = reset_statements(stats)
    estimate = max(1.0, expired / 50_000)
    waits: dict[str, Counter[str]] = {"cleanup-single": Counter(), "cleanup-batched": Counter()}
    for round_ in range(config.rounds):
        progress(f"cleanup: {expired:,} expired among {size:,}, round {round_ + 1}/{config.rounds}")
        for workload in rotate(["lookup-baseline", "cleanup-single", "cleanup-batched"], round_):
            duration = math.ceil(config.duration + 1 + 1.5 * estimate)
            with connect(server, db, schema) as conn:
                if expired_count(conn, now) < expired:
                    # The cost a cleanup leaves behind: the vacuum that removes its dead
                    # rows and their entries in all three indexes (autovacuum's work).
                    start_lsn, started = wal_lsn(conn), time.time()
                    vacuum(conn)
                    samples.add("cleanup", "vacuum-after-cleanup", size, "duration", "s", time.time() - started)
                    samples.add(
                        "cleanup",
                        "vacuum-after-cleanup",
                        size,
                        "wal_bytes",
                        "bytes",
                        wal_bytes(conn, start_lsn, wal_lsn(conn)),
                    )
                restore_expired(conn, size, expired, now)
                checkpoint(conn)
                reset_statements(stats)
                if workload == "lookup-baseline":
                    run = bench.run(schema, lookup, variables, duration)
                    record_run(samples, "cleanup", workload, size, run)
                    for metric, value in statements_stats(stats).items():
                        samples.add("cleanup", workload, size, metric, "ms" if "ms" in metric else "blocks", value)
                    continue
                process, prefix = bench.start(schema, lookup, variables, duration)
                time.sleep(1.0)
                sampler = WaitSampler(server, db)
                sampler.start()
                start_lsn, started = wal_lsn(conn), time.time()
                deleted = cleanup_single(conn) if workload == "cleanup-single" else cleanup_batched(conn)
                ended = time.time()
                end_lsn = wal_lsn(conn)
                sampler.stop_event.set()
                sampler.join()
                run = bench.finish(process, prefix)
                waits[workload].update(sampler.counts)
                seconds = ended - started
                estimate = max(estimate, seconds)
                during = run.latencies_overlapping(started, ended)
                samples.add("cleanup", workload, size, "rows_deleted", "rows", deleted)
                samples.add("cleanup", workload, size, "duration", "s", seconds)
                samples.add("cleanup", workload, size, "rows_per_s", "rows/s", deleted / seconds)
                samples.add("cleanup", workload, size, "wal_bytes", "bytes", wal_bytes(conn, start_lsn, end_lsn))
                samples.add("cleanup", workload, size, "lookups_during", "tx", len(during))
                samples.add("cleanup", workload, size, "latency_p50", "ms", percentile(during, 0.50) / 1000)
                samples.add("cleanup", workload, size, "latency_p99", "ms", percentile(during, 0.99) / 1000)
                for metric, value in statements_stats(stats).items():
                    samples.add("cleanup", workload, size, metric, "ms" if "ms" in metric else "blocks", value)
        baseline = samples.values[("cleanup", "lookup-baseline", size, "latency_p99", "ms")][-1]
        for workload in ("cleanup-single", "cleanup-batched"):
            during_p99 = samples.values[("cleanup", workload, size, "latency_p99", "ms")][-1]
            samples.add("cleanup", workload, size, "p99_ratio_to_baseline", "x", during_p99 / baseline)
    notes["cleanup"] = {
        "rows": size,
        "expired": expired,
        "batch": CLEANUP_BATCH,
        "pause_s": CLEANUP_PAUSE,
        "wait_events": {workload: dict(counter.most_common(8)) for workload, counter in waits.items()},
    }
    with connect(server, db, schema) as conn:
        restore_expired(conn, size, expired, now)
        plan = helpers.explain(conn, "DELETE FROM idempotency_records WHERE expires_at <= now()")
        notes["cleanup"]["plan"] = helpers.describe_plan(plan)
    stats.close()


def floor_phase(server: servers.Server, db: str, config: Config, samples: Samples, notes: dict[str, Any]) -> None:
    """The bulk-expiry floor: the same expired rows removed by TRUNCATE and by dropping a partition."""
    size = max(config.sizes)
    source = sql.Identifier(f"size_{size}", "idempotency_records")
    now = dt.datetime.now(dt.UTC)
    with connect(server, db) as conn:
        conn.execute("CREATE SCHEMA expiry_floor")
        row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE expires_at <= %s").format(source), (now,)).fetchone()
        assert row is not None
        rows = int(row[0])
        for round_ in range(config.rounds):
            progress(f"floor: TRUNCATE / DROP partition of {rows:,} rows, round {round_ + 1}/{config.rounds}")
            for workload in rotate(["truncate", "drop-partition"], round_):
                conn.execute("DROP TABLE IF EXISTS expiry_floor.copy, expiry_floor.by_expiry")
                if workload == "truncate":
                    conn.execute(sql.SQL("CREATE TABLE expiry_floor.copy (LIKE {} INCLUDING ALL)").format(source))
                    conn.execute(
                        sql.SQL("INSERT INTO expiry_floor.copy SELECT * FROM {} WHERE expires_at <= %s").format(source),
                        (now,),
                    )
                    statement = sql.SQL("TRUNCATE expiry_floor.copy")
                else:
                    conn.execute(
                        sql.SQL(
                            "CREATE TABLE expiry_floor.by_expiry (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
                            " PARTITION BY RANGE (expires_at)"
                        ).format(source)
                    )
                    conn.execute(
                        sql.SQL(
                            "CREATE TABLE expiry_floor.old PARTITION OF expiry_floor.by_expiry"
                            " FOR VALUES FROM (MINVALUE) TO ({})"
                        ).format(sql.Literal(now))
                    )
                    conn.execute(
                        sql.SQL(
                            "CREATE TABLE expiry_floor.live PARTITION OF expiry_floor.by_expiry"
                            " FOR VALUES FROM ({}) TO (MAXVALUE)"
                        ).format(sql.Literal(now))
                    )
                    for column in ("request_id", "expires_at", "operation"):
                        conn.execute(
                            sql.SQL("CREATE INDEX ON expiry_floor.by_expiry ({})").format(sql.Identifier(column))
                        )
                    conn.execute(
                        sql.SQL("INSERT INTO expiry_floor.by_expiry SELECT * FROM {} WHERE expires_at <= %s").format(
                            source
                        ),
                        (now,),
                    )
                    statement = sql.SQL("DROP TABLE expiry_floor.old")
                checkpoint(conn)
                start_lsn, started = wal_lsn(conn), time.perf_counter()
                conn.execute(statement)
                seconds = time.perf_counter() - started
                samples.add("floor", workload, size, "rows_deleted", "rows", rows)
                samples.add("floor", workload, size, "duration", "s", seconds)
                samples.add("floor", workload, size, "rows_per_s", "rows/s", rows / seconds)
                samples.add("floor", workload, size, "wal_bytes", "bytes", wal_bytes(conn, start_lsn, wal_lsn(conn)))
        conn.execute("DROP SCHEMA expiry_floor CASCADE")
    notes["floor_rows"] = rows


RELATIONS_SQL = """
SELECT 'table', pg_table_size('idempotency_records')
UNION ALL
SELECT c.relname::text, pg_relation_size(c.oid)
FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
WHERE i.indrelid = 'idempotency_records'::regclass
UNION ALL
SELECT 'total', pg_total_relation_size('idempotency_records')
"""


def storage_phase(server: servers.Server, db: str, config: Config, samples: Samples, notes: dict[str, Any]) -> None:
    now = dt.datetime.now(dt.UTC)
    cases = [(f"payload {payload} B", config.storage_rows, payload) for payload in STORAGE_PAYLOADS]
    cases.append(("report scenario", SCENARIO_ROWS, LOOKUP_PAYLOAD))
    scenario: dict[str, float] = {}
    # Sizes are deterministic for a given load: one round suffices.
    for label, rows, payload in cases:
        schema = f"storage_{payload}_{rows}"
        progress(f"storage: {label}, {rows:,} rows")
        with migrated_schema(server, db, schema) as conn:
            load_rows(conn, rows, 0, payload, now)
            vacuum(conn)
            for relation, size_bytes in conn.execute(RELATIONS_SQL).fetchall():
                samples.add("storage", f"{label}: {relation}", rows, "bytes_per_row", "B", size_bytes / rows)
                if label == "report scenario":
                    scenario[relation] = size_bytes / 2**20
        with connect(server, db) as admin:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    notes["scenario_mib"] = scenario
    notes["report_estimate_mib"] = {"table": 8, "indexes": 4, "total": 12}


# --------------------------------------------------------------------------- report


def evaluate_targets(samples: Samples, config: Config) -> list[dict[str, Any]]:
    sizes = config.sizes
    targets: list[dict[str, Any]] = []
    worst = min(sizes, key=lambda size: samples.median("lookup", "lookup-hit", size, "ratio_to_pgbench_S"))
    ratio = samples.median("lookup", "lookup-hit", worst, "ratio_to_pgbench_S")
    same_run = ", ".join(
        f"{samples.median('lookup', 'lookup-hit', size, 'same_run_speed_ratio'):.2f}x" for size in sizes
    )
    targets.append(
        {
            "target": "lookup >= 0.95x pgbench -S",
            "measured": f"{ratio:.2f}x (lookup-hit tps at {worst:,} rows, the lowest of the sizes);"
            f" in the same run at {', '.join(f'{size:,}' for size in sizes)} rows: {same_run}",
            "value": ratio,
            "met": ratio >= 0.95,
        }
    )
    ratio = samples.median("save", "save-new", config.save_rows, "ratio_to_pk_only")
    targets.append(
        {
            "target": "save >= 0.8x PK-only insert",
            "measured": f"{ratio:.2f}x (upsert of a new key)",
            "value": ratio,
            "met": ratio >= 0.8,
        }
    )
    small = min(sizes)
    large = max([s for s in sizes if s <= 1_000_000] or sizes)
    growth = samples.median("lookup", "lookup-hit", small, "tps") / samples.median("lookup", "lookup-hit", large, "tps")
    targets.append(
        {
            "target": "lookup roughly flat 10k -> 1M (cost grows <= 1.25x)",
            "measured": f"{growth:.2f}x the per-lookup cost at {large:,} rows vs {small:,}",
            "value": growth,
            "met": growth <= 1.25,
        }
    )
    size = max(sizes)
    ratio = samples.median("cleanup", "cleanup-single", size, "p99_ratio_to_baseline")
    batched = samples.median("cleanup", "cleanup-batched", size, "p99_ratio_to_baseline")
    targets.append(
        {
            "target": "lookup p99 during cleanup <= 2x without",
            "measured": f"{ratio:.2f}x with the single-statement cleanup, {batched:.2f}x with the caller-batched one",
            "value": ratio,
            "met": ratio <= 2.0,
        }
    )
    return targets


def machine() -> dict[str, Any]:
    memory = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    system = platform.platform()
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                system = line.split("=", 1)[1].strip('"')
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "os": system,
        "load_average_start": os.getloadavg(),
    }


def server_settings(server: servers.Server, db: str) -> dict[str, str]:
    with connect(server, db) as conn:
        return {
            name: str(conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0])  # type: ignore[index]
            for name in REPORTED_SETTINGS
        }


def fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    header = f"{'phase':<8} {'workload':<44} {'rows':>10} {'metric':<22} {'median':>12} {'min-max':>23}"
    lines = [header, "-" * len(header)]
    for row in rows:
        spread = f"{fmt(row['min'])}-{fmt(row['max'])}"
        lines.append(
            f"{row['phase']:<8} {row['workload'][:44]:<44} {row['size']:>10,} {row['metric'] + ' ' + row['unit']:<22}"
            f" {fmt(row['median']):>12} {spread:>23}"
        )
    return lines


def plot(samples: Samples, config: Config, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for workload in ("lookup-hit", "lookup-miss", "lookup-expired", "pgbench -S"):
        for axis, metric in ((left, "tps"), (right, "latency_p99")):
            keys = [("lookup", workload, size, metric) for size in config.sizes]
            values = [samples.values[(*key, "tx/s" if metric == "tps" else "ms")] for key in keys]
            medians = [statistics.median(v) for v in values]
            low = [m - min(v) for m, v in zip(medians, values, strict=True)]
            high = [max(v) - m for m, v in zip(medians, values, strict=True)]
            axis.errorbar(config.sizes, medians, yerr=[low, high], marker="o", capsize=3, label=workload)
    left.set(xscale="log", xlabel="rows in the table", ylabel="transactions/s (median, min-max)", ylim=(0, None))
    right.set(xscale="log", xlabel="rows in the table", ylabel="p99 latency, ms (median, min-max)", ylim=(0, None))
    left.set_title(f"Lookup throughput, {config.clients} clients")
    right.set_title("Lookup p99 latency")
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def report(samples: Samples, config: Config, meta: dict[str, Any], notes: dict[str, Any]) -> None:
    config.out.mkdir(parents=True, exist_ok=True)
    rows = samples.rows()
    targets = evaluate_targets(samples, config)
    with open(config.out / "bench.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    document = {"meta": meta, "results": rows, "targets": targets, "notes": notes}
    (config.out / "bench.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    plot(samples, config, config.out / "bench.png")
    print("\n".join(table_lines(rows)))
    print()
    for target in targets:
        print(f"{'MET   ' if target['met'] else 'MISSED'} {target['target']}: {target['measured']}")
    print(f"\nwrote {config.out / 'bench.csv'}, {config.out / 'bench.json'}, {config.out / 'bench.png'}")


# --------------------------------------------------------------------------- main


def parse_config(argv: Sequence[str]) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", default=os.environ.get("QUICK", "") not in ("", "0"))
    parser.add_argument("--size", type=int, default=int(os.environ.get("SIZE") or 1_000_000))
    parser.add_argument("--rounds", type=int, default=int(os.environ["ROUNDS"]) if os.environ.get("ROUNDS") else None)
    parser.add_argument("--duration", type=int, default=None, help="seconds per pgbench run")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    if args.quick:
        sizes: tuple[int, ...] = (1_000, 10_000)
        rounds, duration, save_rows, storage_rows = 2, 1, 2_000, 2_000
    else:
        sizes = tuple(sorted({s for s in (10_000, 100_000, 1_000_000) if s <= args.size} | {args.size}))
        rounds, duration, save_rows, storage_rows = 3, 5, 100_000, 50_000
    return Config(
        sizes=sizes,
        rounds=args.rounds or rounds,
        duration=args.duration or duration,
        clients=args.clients,
        jobs=args.jobs,
        save_rows=save_rows,
        storage_rows=storage_rows,
        quick=args.quick,
        out=args.out,
    )


def main(argv: Sequence[str]) -> int:
    config = parse_config(argv)
    started = time.time()
    samples = Samples()
    notes: dict[str, Any] = {}
    with bench_server() as server, bench_database(server) as db, tempfile.TemporaryDirectory() as logdir:
        with connect(server, db) as conn:
            helpers.apply_all(conn, helpers.UP_FILES)
            with contextlib.suppress(psycopg.Error):
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        meta: dict[str, Any] = {
            "command": " ".join(["python bench/run.py", *argv]) if argv else "make bench",
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "settings": server_settings(server, db),
            "clients": config.clients,
            "jobs": config.jobs,
            "duration_s": config.duration,
            "rounds": config.rounds,
            "sizes": list(config.sizes),
            "quick": config.quick,
        }
        if meta["settings"]["fsync"] != "on":
            progress("warning: the server runs with fsync=off; write workloads will look cheaper than they are")
        bench = Pgbench(server, db, config, Path(logdir))
        meta["pgbench"] = bench.binary
        lookup_phase(server, db, bench, config, samples, notes)
        save_phase(server, db, bench, config, samples, notes)
        cleanup_phase(server, db, bench, config, samples, notes)
        floor_phase(server, db, config, samples, notes)
        storage_phase(server, db, config, samples, notes)
    meta["machine"]["load_average_end"] = os.getloadavg()
    meta["wall_time_s"] = round(time.time() - started, 1)
    report(samples, config, meta, notes)
    progress(f"done in {meta['wall_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
