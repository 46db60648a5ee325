"""bench.png: lookup throughput and p99 latency by table size, medians with min-max bars."""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.config import Config
from bench.samples import Samples

WORKLOADS = ("lookup-hit", "lookup-miss", "lookup-expired", "pgbench -S")


def plot(samples: Samples, config: Config, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for workload in WORKLOADS:
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
