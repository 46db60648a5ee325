"""`make bench`: the measured cost of every hot path, judged on measures that can fail.

Runs real pgbench (the binary next to the server's) with the scripts in bench/*.sql,
several clients, the prepared protocol and a fixed seed, keys bound by the client:

    lookup  hit (six columns, and the narrow duplicate check) at    vs  pgbench -S, by server time per
            each table size; miss and hit-on-expired in a mixed run     call and separate-run throughput;
                                                                        a control: -S + a fixed cost
    save    upsert of a new key / of an existing key; a time-ordered vs  the same upsert on a PK-only table
            new key beside a random one, also into the tables of 1M     (WAL per save, HOT share); random
            rows and more                                               keys (WAL per save, throughput)
    cleanup delete N expired rows among M, with lookups running:    vs  a do-nothing control (lookup p99),
            the installed function, the guide's batch (by ctid),        the report's body (rows/s, WAL);
            the same batch by request_id, and the vacuum after it,
            unthrottled and throttled
    floor   the same expired rows removed in bulk                   by  TRUNCATE / dropping a partition
    storage bytes per row of the table and each index at payloads of 50 B, 200 B and 2 KB (md5
            digits, and JSON that compresses), and the report's 40,000-row scenario
    protocol claim + complete of a new key (047)     vs  the report's save of a new key; the
            a claim that replays a stored result         plain lookup; on one table (throughput,
                                                         server time, WAL per request)

Contenders alternate inside each round and every round repeats them all (10 rounds of
2-second runs decide a verdict; fewer decide none and say so), so that a noisy neighbour
slows all of them alike; ratios are taken within a round, every round's value is kept,
and medians with their interquartile range are reported. Autovacuum is off on the
measured tables, which are vacuumed explicitly; each phase starts after a CHECKPOINT.

Server: DATABASE_URL or PG* (the role needs CREATEDB), else a throwaway local server of
the selected major (PG=15|16|18) with normal durability (fsync and full_page_writes on)
and shared_buffers that hold every lookup table. Everything happens in a database
idempotency_bench_<pid>, dropped at the end.

    python bench/run.py [--quick] [--size N] [--rounds R] [--duration S] [--out DIR]

Writes DIR/bench.csv, DIR/bench.json and DIR/bench.png (default bench/results).

The parts: bench/pgbench.py (the pgbench driver), bench/database.py (server, scratch
database, loading, WAL, statistics), one module per phase (bench/lookup.py, save.py,
cleanup.py, floor.py, storage.py, protocol.py), bench/report.py and bench/plot.py.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if not __package__:  # `python bench/run.py`: import the bench package from the checkout, not bench/ itself
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import psycopg

from bench import cleanup, floor, lookup, protocol, save, storage
from bench.config import Config, parse_config
from bench.context import Context, progress
from bench.database import apply_migrations, bench_database, bench_server, checkpoint, reset_statements
from bench.pgbench import Pgbench
from bench.report import machine, report, server_settings
from bench.samples import Samples

PHASES: tuple[Callable[[Context], None], ...] = (
    lookup.run,
    save.run,
    cleanup.run,
    floor.run,
    storage.run,
    protocol.run,
)


def describe(argv: Sequence[str], config: Config, settings: dict[str, str]) -> dict[str, Any]:
    return {
        "command": " ".join(["python bench/run.py", *argv]) if argv else "make bench",
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": settings,
        "clients": config.clients,
        "jobs": config.jobs,
        "duration_s": config.duration,
        "rounds": config.rounds,
        "sizes": list(config.sizes),
        "quick": config.quick,
    }


def main(argv: Sequence[str]) -> int:
    config = parse_config(argv, __doc__.splitlines()[0])
    started = time.time()
    samples = Samples()
    notes: dict[str, Any] = {}
    with (
        bench_server(sum(config.sizes)) as server,
        bench_database(server) as db,
        tempfile.TemporaryDirectory() as logdir,
    ):
        with server.connect(db, autocommit=True) as conn:
            apply_migrations(conn)
            with contextlib.suppress(psycopg.Error):
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            notes["pg_stat_statements"] = reset_statements(conn)
            notes["server_time_source"] = (
                "pg_stat_statements: mean execution time of every call of each pgbench run"
                if notes["pg_stat_statements"]
                else "EXPLAIN (ANALYZE, TIMING OFF, BUFFERS): Execution Time of 200 calls after each run,"
                " one connection (pg_stat_statements is not loaded on this server)"
            )
            if not notes["pg_stat_statements"]:
                progress("pg_stat_statements is not loaded: server time per lookup from EXPLAIN ANALYZE instead")
        meta = describe(argv, config, server_settings(server, db))
        if meta["settings"]["fsync"] != "on":
            progress("warning: the server runs with fsync=off; write workloads will look cheaper than they are")
        bench = Pgbench(server, db, config, Path(logdir))
        meta["pgbench"] = bench.binary
        context = Context(server, db, bench, config, samples, notes)
        for phase in PHASES:
            with context.connect() as conn:
                checkpoint(conn)  # each phase starts from a checkpoint, none left pending from the last
            phase(context)
    meta["machine"]["load_average_end"] = os.getloadavg()
    meta["wall_time_s"] = round(time.time() - started, 1)
    report(samples, config, meta, notes)
    progress(f"done in {meta['wall_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
