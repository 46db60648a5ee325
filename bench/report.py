"""The report: each target judged, the installed cleanup beside its anchor, the table of
every median with its spread on stdout, and bench.csv, bench.json and bench.png in the
output directory."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

from bench.cleanup import ANCHOR, INSTALLED
from bench.config import Config
from bench.database import connect
from bench.plot import plot
from bench.samples import Samples
from tooling import servers

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
ANCHOR_TARGET = 0.9  # the installed cleanup's rows/s against the report's body (issue: within 10%)


def target(name: str, measured: str, value: float, met: bool) -> dict[str, Any]:
    return {"target": name, "measured": measured, "value": value, "met": met}


def lookup_target(samples: Samples, sizes: tuple[int, ...]) -> dict[str, Any]:
    worst = min(sizes, key=lambda size: samples.median("lookup", "lookup-hit", size, "ratio_to_pgbench_S"))
    ratio = samples.median("lookup", "lookup-hit", worst, "ratio_to_pgbench_S")
    same_run = ", ".join(
        f"{samples.median('lookup', 'lookup-hit', size, 'same_run_speed_ratio'):.2f}x" for size in sizes
    )
    return target(
        "lookup >= 0.95x pgbench -S",
        f"{ratio:.2f}x (lookup-hit tps at {worst:,} rows, the lowest of the sizes);"
        f" in the same run at {', '.join(f'{size:,}' for size in sizes)} rows: {same_run}",
        ratio,
        ratio >= 0.95,
    )


def save_target(samples: Samples, config: Config) -> dict[str, Any]:
    ratio = samples.median("save", "save-new", config.save_rows, "ratio_to_pk_only")
    return target("save >= 0.8x PK-only insert", f"{ratio:.2f}x (upsert of a new key)", ratio, ratio >= 0.8)


def growth_target(samples: Samples, sizes: tuple[int, ...]) -> dict[str, Any]:
    small = min(sizes)
    large = max([s for s in sizes if s <= 1_000_000] or sizes)
    growth = samples.median("lookup", "lookup-hit", small, "tps") / samples.median("lookup", "lookup-hit", large, "tps")
    return target(
        "lookup roughly flat 10k -> 1M (cost grows <= 1.25x)",
        f"{growth:.2f}x the per-lookup cost at {large:,} rows vs {small:,}",
        growth,
        growth <= 1.25,
    )


def p99_target(samples: Samples, size: int) -> dict[str, Any]:
    ratio = samples.median("cleanup", INSTALLED, size, "p99_ratio_to_baseline")
    batched = samples.median("cleanup", "cleanup-batched", size, "p99_ratio_to_baseline")
    return target(
        "lookup p99 during cleanup <= 2x without",
        f"{ratio:.2f}x with the single-statement cleanup, {batched:.2f}x with the caller-batched one",
        ratio,
        ratio <= 2.0,
    )


def cleanup_scale(config: Config, notes: dict[str, Any]) -> str:
    """`N expired among M`, said to be scaled down in quick mode."""
    scale = f"{notes['cleanup']['expired']:,} expired among {notes['cleanup']['rows']:,}"
    return f"{scale} (quick mode: scaled down from 100,000 among 1,000,000)" if config.quick else scale


def anchor_target(samples: Samples, config: Config, notes: dict[str, Any]) -> dict[str, Any]:
    size = max(config.sizes)
    ratios = {
        metric: samples.median("cleanup", INSTALLED, size, f"{metric}_ratio_to_anchor")
        for metric in ("rows_per_s", "wal_bytes", "latency_p99")
    }
    return target(
        f"cleanup rows/s >= {ANCHOR_TARGET}x the report's body (anchor)",
        f"{ratios['rows_per_s']:.2f}x rows/s, {ratios['wal_bytes']:.2f}x WAL, {ratios['latency_p99']:.2f}x lookup p99"
        f" during it, installed function vs anchor, at {cleanup_scale(config, notes)}",
        ratios["rows_per_s"],
        ratios["rows_per_s"] >= ANCHOR_TARGET,
    )


def evaluate_targets(samples: Samples, config: Config, notes: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        lookup_target(samples, config.sizes),
        save_target(samples, config),
        growth_target(samples, config.sizes),
        p99_target(samples, max(config.sizes)),
        anchor_target(samples, config, notes),
    ]


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


def anchor_lines(samples: Samples, config: Config, notes: dict[str, Any]) -> list[str]:
    """The installed cleanup beside the report's body, medians of the rounds."""
    size = max(config.sizes)
    metrics = (("rows_per_s", "rows/s"), ("wal_bytes", "WAL bytes"), ("latency_p99", "lookup p99 ms"))
    lines = [
        f"cleanup, installed function vs the report's body (anchor), {cleanup_scale(config, notes)}:",
        f"{'':<28}" + "".join(f"{label:>16}" for _, label in metrics),
    ]
    for label, workload in (("installed function", INSTALLED), ("anchor (report's body)", ANCHOR)):
        values = "".join(f"{fmt(samples.median('cleanup', workload, size, metric)):>16}" for metric, _ in metrics)
        lines.append(f"{label:<28}{values}")
    ratios = "".join(
        f"{fmt(samples.median('cleanup', INSTALLED, size, f'{metric}_ratio_to_anchor')) + 'x':>16}"
        for metric, _ in metrics
    )
    lines.append(f"{'installed / anchor':<28}{ratios}")
    return lines


def write_files(rows: list[dict[str, Any]], document: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "bench.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "bench.json").write_text(json.dumps(document, indent=2, default=str) + "\n")


def report(samples: Samples, config: Config, meta: dict[str, Any], notes: dict[str, Any]) -> None:
    rows = samples.rows()
    targets = evaluate_targets(samples, config, notes)
    write_files(rows, {"meta": meta, "results": rows, "targets": targets, "notes": notes}, config.out)
    plot(samples, config, config.out / "bench.png")
    print("\n".join(table_lines(rows)))
    print()
    print("\n".join(anchor_lines(samples, config, notes)))
    print()
    for item in targets:
        print(f"{'MET   ' if item['met'] else 'MISSED'} {item['target']}: {item['measured']}")
    print(f"\nwrote {config.out / 'bench.csv'}, {config.out / 'bench.json'}, {config.out / 'bench.png'}")
