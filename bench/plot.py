"""bench.png: what the verdicts rest on. Server time and buffers per lookup by table size
(log x) for the lookups, pgbench -S and the fixed-cost control; each lookup's speed ratio
to pgbench -S by server time and by separate-run throughput, with its interquartile
range and the targets; and the lookup p99 during each cleanup, round by round, beside
the do-nothing control's."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.config import Config
from bench.samples import Samples, percentile

PER_CALL = ("lookup-hit", "lookup-hit-narrow", "pgbench -S", "control")
RATIOS = (
    ("lookup-hit", "server_time_ratio_to_pgbench_S", "get, server time"),
    ("lookup-hit-narrow", "server_time_ratio_to_pgbench_S", "narrow, server time"),
    ("lookup-hit", "ratio_to_pgbench_S", "get, separate-run tps"),
    ("lookup-hit-narrow", "ratio_to_pgbench_S", "narrow, separate-run tps"),
)
CLEANUPS = ("cleanup-control", "cleanup-single", "cleanup-batched", "cleanup-batched-key", "cleanup-anchor")


def quartiles(values: list[float]) -> tuple[float, float, float]:
    return percentile(values, 0.25), percentile(values, 0.5), percentile(values, 0.75)


MARKERS = ("o", "s", "^", "D")  # series that coincide (hit and narrow buffers) stay told apart
LINES = ("-", "--", "-.", ":")


def by_size(
    axis: Any, samples: Samples, config: Config, workload: str, metric: str, scale: float, label: str, style: int = 0
) -> None:
    """Medians by table size with interquartile bars, where the metric was measured."""
    points = [(size, quartiles(samples.of("lookup", workload, size, metric))) for size in config.sizes]
    points = [(size, q) for size, q in points if not math.isnan(q[1])]
    if not points:
        return
    sizes = [size for size, _ in points]
    medians = [q[1] * scale for _, q in points]
    low = [(q[1] - q[0]) * scale for _, q in points]
    high = [(q[2] - q[1]) * scale for _, q in points]
    axis.errorbar(
        sizes,
        medians,
        yerr=[low, high],
        marker=MARKERS[style % len(MARKERS)],
        linestyle=LINES[style % len(LINES)],
        markersize=8 - 1.5 * (style % len(MARKERS)),
        capsize=3,
        label=label,
    )


def plot(samples: Samples, config: Config, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(13, 9))
    (server, blocks), (ratios, p99) = axes
    for style, workload in enumerate(PER_CALL):
        by_size(server, samples, config, workload, "server_exec_ms", 1000, workload, style)
        by_size(blocks, samples, config, workload, "buffers_per_call", 1, workload, style)
    server.set(xscale="log", yscale="log", xlabel="rows in the table", ylabel="server time per call, µs (median, IQR)")
    server.set_title("Server time per lookup (control: pgbench -S + a fixed cost)")
    blocks.set(xscale="log", xlabel="rows in the table", ylabel="shared buffers per call", ylim=(0, None))
    blocks.set_title("Buffers per lookup: one more is one more B-tree level")
    for style, (workload, metric, label) in enumerate(RATIOS):
        by_size(ratios, samples, config, workload, metric, 1, label, style)
    ratios.axhline(0.95, color="black", linestyle="--", linewidth=1, label="target, server time (0.95)")
    ratios.axhline(0.9, color="grey", linestyle=":", linewidth=1, label="target, throughput (0.9)")
    ratios.set(xscale="log", xlabel="rows in the table", ylabel="speed vs pgbench -S (median, IQR)")
    ratios.set_title(f"Lookup speed / pgbench -S, {config.rounds} rounds")
    size = max(config.sizes)
    shown = [(name, samples.of("cleanup", name, size, "latency_p99")) for name in CLEANUPS]
    shown = [(name, values) for name, values in shown if values]
    if shown:
        p99.boxplot([values for _, values in shown], showfliers=False)
        for number, (_, values) in enumerate(shown, 1):
            p99.scatter([number] * len(values), values, s=12, alpha=0.7)
        p99.set_xticks(range(1, len(shown) + 1), [name.removeprefix("cleanup-") for name, _ in shown])
    p99.set(ylabel="lookup p99 during the window, ms (each round)", ylim=(0, None))
    p99.set_title(f"Lookup p99 during each cleanup, {size:,} rows")
    for axis in (server, blocks, ratios, p99):
        axis.grid(True, alpha=0.3)
    for axis in (server, blocks, ratios):
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
