"""The run's configuration: sizes, rounds and durations from the command line (or QUICK,
SIZE and ROUNDS from make), and where the benchmark's files are."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_SIZE = 1_000_000
EXPIRED_FRACTION = 0.10  # share of every lookup table that has expired: the cleanup's N among M
LOOKUP_PAYLOAD = 200  # bytes of result_payload in the lookup and save tables (the report's estimate)


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


def parse_config(argv: Sequence[str], description: str) -> Config:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", default=os.environ.get("QUICK", "") not in ("", "0"))
    parser.add_argument("--size", type=int, default=int(os.environ.get("SIZE") or DEFAULT_SIZE))
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
