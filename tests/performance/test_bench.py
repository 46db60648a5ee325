"""`make bench` runs end to end: the driver's quick mode writes its CSV, JSON and PNG.

A smoke test of the benchmark's plumbing on the session server (slow). It asserts nothing
about speed: the numbers only have to exist, be positive and carry their columns.

And the benchmark measures what the guide says (fast): its own copies of the guide's SQL
(the repository's get and save, the narrow lookup, the cleanup batch) are the guide's text;
its cleanup anchor is the report's body and does what it did; it imports nothing from tests/."""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from bench.cleanup import create_anchor
from bench.database import read_sql, script_statement
from bench.pgbench import pgbench_binary
from tests.docblocks import QUERIES
from tests.helpers import ROOT
from tests.statements import DUPLICATE_CHECK, render
from tooling import records, servers
from tooling.records import DAY, HOUR, Record

EXPECTED_COLUMNS = ["phase", "workload", "size", "metric", "unit", "median", "min", "max", "p25", "p75", "rounds"]
EXPECTED_PHASES = {"lookup", "save", "cleanup", "floor", "storage", "protocol"}
EXPECTED_WORKLOADS = {
    "lookup-hit",
    "lookup-miss",
    "lookup-expired",
    "lookup-hit-narrow",
    "pgbench -S",
    "control",
    "save-new",
    "save-existing",
    "save-new-v7",
    "pk-only-new",
    "pk-only-existing",
    "cleanup-control",
    "cleanup-single",
    "cleanup-anchor",
    "cleanup-batched",
    "cleanup-batched-key",
    "vacuum-after-cleanup",
    "vacuum-throttled",
    "truncate",
    "drop-partition",
    "protocol-claim-complete",
    "protocol-save-new",
    "protocol-replay",
    "protocol-lookup",
}


@pytest.fixture(scope="module")
def results(pg_server: servers.Server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the driver once in quick mode against the session server."""
    try:
        pgbench = pgbench_binary(pg_server)
    except FileNotFoundError:
        pytest.skip("pgbench is found neither next to the server, nor in the selected major's binaries, nor on PATH")
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "DATABASE_URL": pg_server.url(), "PGBENCH": pgbench}
    env.pop("PGOPTIONS", None)
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--rounds", "2", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, f"bench/run.py --quick failed:\n{completed.stdout}\n{completed.stderr}"
    return out


def _rows(results: Path) -> list[dict[str, str]]:
    with open(results / "bench.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_csv_has_the_expected_columns(results: Path) -> None:
    with open(results / "bench.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert header == EXPECTED_COLUMNS, f"bench.csv columns: expected {EXPECTED_COLUMNS}, got {header}"


@pytest.mark.slow
def test_csv_covers_every_phase_and_workload(results: Path) -> None:
    rows = _rows(results)
    phases = {row["phase"] for row in rows}
    workloads = {row["workload"] for row in rows if row["phase"] != "storage"}
    assert phases == EXPECTED_PHASES, f"bench.csv phases: expected {sorted(EXPECTED_PHASES)}, got {sorted(phases)}"
    assert workloads == EXPECTED_WORKLOADS, f"bench.csv workloads differ: {sorted(workloads ^ EXPECTED_WORKLOADS)}"


# Counts that are rightly zero: blocks read from outside a cache that holds the table,
# WAL of a read-only lookup or replay, the share of HOT updates on a table whose updates change an
# indexed column.
MAY_BE_ZERO = {"reads_per_call", "wal_bytes_per_call", "wal_bytes_per_request", "hot_update_share"}


@pytest.mark.slow
def test_every_measured_number_is_positive(results: Path) -> None:
    for row in _rows(results):
        name = f"{row['phase']}/{row['workload']}/{row['size']}/{row['metric']}"
        for column in ("median", "min", "max", "p25", "p75"):
            value = float(row[column])
            least = 0.0 if row["metric"] in MAY_BE_ZERO else math.ulp(0.0)
            assert math.isfinite(value) and value >= least, f"{name}: {column} should be a positive number, got {value}"
        assert int(row["rounds"]) >= 1, f"{name}: no round recorded"
        assert float(row["min"]) <= float(row["p25"]) <= float(row["median"]), (
            f"{name}: median below p25 or p25 below min"
        )
        assert float(row["median"]) <= float(row["p75"]) <= float(row["max"]), (
            f"{name}: median above p75 or p75 above max"
        )


@pytest.mark.slow
def test_every_rounds_value_is_saved(results: Path) -> None:
    document = json.loads((results / "bench.json").read_text())
    counts = {(r["phase"], r["workload"], r["size"], r["metric"]): len(r["values"]) for r in document["rounds"]}
    for row in _rows(results):
        key = (row["phase"], row["workload"], int(row["size"]), row["metric"])
        assert counts.get(key) == int(row["rounds"]), f"{key}: bench.json should keep the value of every round"


@pytest.mark.slow
def test_lookups_and_saves_carry_ratios_to_their_anchors(results: Path) -> None:
    metrics = {(row["workload"], row["metric"]) for row in _rows(results)}
    for workload in ("lookup-hit", "lookup-hit-narrow", "control"):
        assert (workload, "ratio_to_pgbench_S") in metrics, f"{workload}: no ratio of separate-run throughput"
    for workload in ("lookup-hit", "lookup-miss", "lookup-expired", "lookup-hit-narrow", "control"):
        assert (workload, "same_run_speed_ratio") in metrics, f"{workload}: no ratio in the mixed run"
    for workload in ("save-new", "save-existing"):
        assert (workload, "ratio_to_pk_only") in metrics, f"{workload}: no ratio to the PK-only table"
    for workload in ("save-new", "save-existing", "pk-only-new", "pk-only-existing"):
        assert (workload, "wal_bytes_per_save") in metrics, f"{workload}: no WAL per save"
    for workload in ("save-existing", "pk-only-existing"):
        assert (workload, "hot_update_share") in metrics, f"{workload}: no share of HOT updates"
    for workload in ("cleanup-single", "cleanup-anchor", "cleanup-batched", "cleanup-batched-key"):
        assert (workload, "p99_ratio_to_control") in metrics, f"{workload}: no p99 ratio to the do-nothing control"


@pytest.mark.slow
def test_server_time_per_lookup_is_measured_and_its_source_said(results: Path) -> None:
    """pg_stat_statements needs shared_preload_libraries, which the session server lacks
    (and PostgreSQL 16 from pgserver lacks the extension): the driver then times the calls
    with EXPLAIN ANALYZE. Either way every judged lookup has its server-time ratio."""
    document = json.loads((results / "bench.json").read_text())
    metrics = {(row["workload"], row["metric"]) for row in _rows(results)}
    for workload in ("lookup-hit", "lookup-hit-narrow", "control", "pgbench -S"):
        for metric in ("server_exec_ms", "buffers_per_call"):
            assert (workload, metric) in metrics, f"{workload}: no {metric}"
    for workload in ("lookup-hit", "lookup-hit-narrow", "control"):
        assert (workload, "server_time_ratio_to_pgbench_S") in metrics, f"{workload}: no server-time ratio"
    source = document["notes"]["server_time_source"]
    expected = "pg_stat_statements" if document["notes"]["pg_stat_statements"] else "EXPLAIN (ANALYZE"
    assert source.startswith(expected), f"server time source: expected {expected}..., got {source}"


@pytest.mark.slow
def test_installed_cleanup_is_measured_beside_its_anchor(results: Path) -> None:
    rows = {(row["workload"], row["metric"]): row for row in _rows(results) if row["phase"] == "cleanup"}
    for metric in ("rows_per_s", "wal_bytes", "latency_p99"):
        for workload in ("cleanup-single", "cleanup-anchor"):
            assert (workload, metric) in rows, f"{workload}: no {metric} in the cleanup phase"
        assert ("cleanup-single", f"{metric}_ratio_to_anchor") in rows, (
            f"cleanup-single: no {metric} ratio to the anchor"
        )
    installed, anchor = rows[("cleanup-single", "rows_deleted")], rows[("cleanup-anchor", "rows_deleted")]
    assert installed["median"] == anchor["median"], (
        f"the installed cleanup and the anchor should delete the same rows each round:"
        f" {installed['median']} vs {anchor['median']}"
    )


@pytest.mark.slow
def test_json_holds_results_targets_and_the_machine(results: Path) -> None:
    document = json.loads((results / "bench.json").read_text())
    assert document["results"] == [
        {**row, "size": int(row["size"]), "rounds": int(row["rounds"])}
        | {column: float(row[column]) for column in ("median", "min", "max", "p25", "p75")}
        for row in _rows(results)
    ], "bench.json results should hold the same rows as bench.csv"
    targets = document["targets"]
    assert len(targets) == 10, f"bench.json should state the ten verdicts, got {len(targets)}"
    for target in targets:
        assert isinstance(target["met"], bool) and target["measured"], f"target {target['target']}: not evaluated"
        assert not target["decided"] and not target["met"], (
            f"target {target['target']}: two rounds decide nothing, yet it is reported {target}"
        )
        assert "not decided: 2 rounds" in target["reason"], f"target {target['target']}: no reason given"
    anchor = targets[-1]["measured"]
    assert "scaled down" in anchor, f"a quick run should say its cleanup is scaled down: {anchor}"
    growth = next(t for t in targets if t["target"].startswith("lookup server time"))["target"]
    assert "1,000 -> 10,000 rows" in growth, f"a quick run should name the sizes it really compares: {growth}"
    assert document["meta"]["machine"]["cpus"] > 0, "bench.json should describe the machine"
    assert document["meta"]["settings"]["server_version"], "bench.json should name the server version"
    for size, plans in document["notes"]["lookup_plans"].items():
        for kind, plan in plans.items():
            assert plan["uses_primary_key"], f"lookup {kind} at {size} rows should be a primary key index scan:\n{plan}"


@pytest.mark.slow
def test_png_plot_is_written(results: Path) -> None:
    data = (results / "bench.png").read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), "bench.png should be a PNG image"
    assert len(data) > 10_000, f"bench.png is suspiciously small ({len(data)} bytes)"


# The benchmark's copies of the guide's SQL. Each pgbench script is the guide's statement
# with pgbench's variables in place of the parameters; a change on either side fails here.

BENCH_GET = {"request_id": "(:prefix || :k)::uuid"}
BENCH_SAVE = {
    "$1": "(:prefix || :k)::uuid",
    "$2": "'payment'",
    "$3": ":payload",
    "$4": "201",
    "$5": "24",
}


def _guide_prepared(name: str) -> str:
    """The statement of `PREPARE name (...) AS` in the guide's repository queries."""
    match = re.search(rf"^PREPARE {name} \([^)]*\) AS\n(.*?);$", QUERIES.read_text(), re.MULTILINE | re.DOTALL)
    assert match is not None, f"{QUERIES.name}: no PREPARE {name} among the repository's queries"
    return match.group(1)


def _bound(statement: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\d", lambda match: values[match.group(0)], statement)


def _same(copy: str, original: str, where: str) -> None:
    assert copy == original, f"{where} differs from the guide's text:\n--- bench\n{copy}\n--- guide\n{original}"


@pytest.mark.parametrize("name", ["lookup_hit.sql", "lookup_miss.sql", "lookup_expired.sql"])
def test_bench_lookup_is_the_repositorys_get(name: str) -> None:
    _same(script_statement(name), _bound(_guide_prepared("idempotency_get"), {"$1": BENCH_GET["request_id"]}), name)


def test_bench_narrow_lookup_is_the_guides_duplicate_check() -> None:
    _same(script_statement("lookup_hit_narrow.sql"), render(DUPLICATE_CHECK, **BENCH_GET), "lookup_hit_narrow.sql")


def test_bench_save_is_the_repositorys_save() -> None:
    bound = BENCH_SAVE | {"$1": "(:prefix || :k)::uuid"}
    _same(script_statement("save.sql"), _bound(_guide_prepared("idempotency_save"), bound), "save.sql")


def test_bench_imports_nothing_from_tests() -> None:
    """The benchmark runs from the tooling, never from tests/ (what `grep -rn "tests\\." Makefile bench` checks)."""
    uses = re.compile(r"\btests\.|\bfrom tests\b|\bimport tests\b")
    for path in [ROOT / "Makefile", *sorted((ROOT / "bench").rglob("*.py"))]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not uses.search(line), f"{path.relative_to(ROOT)}:{number} uses tests/: {line.strip()}"


# The cleanup anchor: the report's original body, which every run measures the installed
# function against. It must keep doing what that body did.


def expired_and_live(conn: psycopg.Connection, expired: int = 30, live: int = 70) -> None:
    """Records created two days before this instant: `expired` of them expired an hour ago, the
    others valid for another hour."""
    now = dt.datetime.now(dt.UTC)
    records.insert_many(conn, expired, Record(status_code=200, created_at=-2 * DAY, expires_at=-HOUR), now=now)
    records.insert_many(conn, live, Record(status_code=200, created_at=-2 * DAY, expires_at=HOUR), now=now)


def test_bench_anchor_deletes_every_expired_row_and_counts_them(conn: psycopg.Connection) -> None:
    create_anchor(conn)
    expired_and_live(conn)
    row = conn.execute("SELECT deleted_count FROM bench_cleanup_anchor()").fetchone()
    assert row == (30,), f"bench_cleanup_anchor(): expected deleted_count 30, got {row}"
    left = conn.execute("SELECT count(*) FILTER (WHERE expires_at <= now()), count(*) FROM idempotency_records")
    assert left.fetchone() == (0, 70), "bench_cleanup_anchor() should leave the 70 live rows and no expired one"


def test_bench_anchor_has_the_contract_signature(conn: psycopg.Connection) -> None:
    create_anchor(conn)
    row = conn.execute(
        "SELECT pg_get_function_result(oid), prosecdef, proconfig FROM pg_proc WHERE proname = 'bench_cleanup_anchor'"
    ).fetchone()
    search_path = conn.execute("SELECT 'search_path=' || current_setting('search_path')").fetchone()
    assert search_path is not None
    assert row == ("TABLE(deleted_count bigint)", False, [search_path[0]]), (
        f"bench_cleanup_anchor(): expected TABLE(deleted_count bigint), SECURITY INVOKER, pinned to the "
        f"session's search_path; got {row}"
    )


# Both batches the bench measures (the guide's, by ctid, and the same by request_id) keep
# the guarantees of recipe 4: exactly the expired rows, a row an application holds skipped
# rather than waited for.


@pytest.mark.parametrize("name", ["cleanup_batch.sql", "cleanup_batch_key.sql"])
def test_bench_batch_deletes_the_expired_rows_and_skips_a_held_one(
    pg_server: servers.Server, database: str, conn: psycopg.Connection, name: str
) -> None:
    expired_and_live(conn)
    held = conn.execute("SELECT request_id FROM idempotency_records WHERE expires_at <= now() LIMIT 1").fetchone()
    assert held is not None
    with pg_server.connect(database) as application:  # a request taking the expired key over
        application.execute("SELECT 1 FROM idempotency_records WHERE request_id = %s FOR UPDATE", held)
        # A wait on the held row would fail with 55P03 here instead of hanging the suite.
        conn.execute("SET lock_timeout = '30s'")
        deleted = conn.execute(read_sql(name).replace("LIMIT 1000", "LIMIT 20")).rowcount
        assert deleted == 20, f"{name}: expected a batch of 20 rows, deleted {deleted}"
        rest = conn.execute(read_sql(name)).rowcount
        assert rest == 9, f"{name}: expected the 9 expired rows left but the held one, deleted {rest}"
        application.rollback()
    left = conn.execute("SELECT request_id FROM idempotency_records WHERE expires_at <= now()").fetchall()
    assert left == [held], f"{name} should leave only the held expired row, left {left}"
    live = conn.execute("SELECT count(*) FROM idempotency_records WHERE expires_at > now()").fetchone()
    assert live == (70,), f"{name} should leave the 70 live rows, left {live}"
