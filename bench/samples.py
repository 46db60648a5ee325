"""Every measured value of a run, keyed by (phase, workload, size, metric, unit), with the
median and spread the report prints."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from bench.pgbench import Run


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

    def add_run(self, phase: str, workload: str, size: int, run: Run) -> None:
        """A pgbench run's throughput and its p50 and p99 latencies."""
        self.add(phase, workload, size, "tps", "tx/s", run.tps)
        self.add(phase, workload, size, "latency_p50", "ms", percentile(run.latencies_us, 0.50) / 1000)
        self.add(phase, workload, size, "latency_p99", "ms", percentile(run.latencies_us, 0.99) / 1000)

    def add_statements(self, phase: str, workload: str, size: int, stats: dict[str, float]) -> None:
        """pg_stat_statements' figures (server time, buffers per call), when there are any."""
        for metric, value in stats.items():
            unit = "ms" if "ms" in metric else "bytes" if "bytes" in metric else "blocks"
            self.add(phase, workload, size, metric, unit, value)

    def last(self, phase: str, workload: str, size: int, metric: str, unit: str) -> float:
        """The value of the latest round."""
        return self.values[(phase, workload, size, metric, unit)][-1]

    def of(self, phase: str, workload: str, size: int, metric: str) -> list[float]:
        """Every round's value of a metric (empty if it was not measured)."""
        for (p, w, s, m, _), values in self.values.items():
            if (p, w, s, m) == (phase, workload, size, metric):
                return values
        return []

    def median(self, phase: str, workload: str, size: int, metric: str) -> float:
        values = self.of(phase, workload, size, metric)
        return statistics.median(values) if values else math.nan

    def spread(self, phase: str, workload: str, size: int, metric: str) -> str:
        """`median (p25-p75 of N rounds)`, the way every verdict quotes its measure."""
        values = self.of(phase, workload, size, metric)
        if not values:
            return "not measured"
        return (
            f"{statistics.median(values):.2f}x (interquartile {percentile(values, 0.25):.2f}-"
            f"{percentile(values, 0.75):.2f}, {len(values)} round{'s' if len(values) > 1 else ''})"
        )

    def every_round(self) -> list[dict[str, Any]]:
        """Every value of every round, for bench.json."""
        return [
            {"phase": phase, "workload": workload, "size": size, "metric": metric, "unit": unit, "values": values}
            for (phase, workload, size, metric, unit), values in self.values.items()
        ]

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
                "p25": percentile(values, 0.25),
                "p75": percentile(values, 0.75),
                "rounds": len(values),
            }
            for (phase, workload, size, metric, unit), values in self.values.items()
        ]
