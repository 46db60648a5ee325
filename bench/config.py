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
# Keys as an application binds them: the UUID's text sent by the client, in two bound
# parameters (a fixed 16-hex-digit prefix, then 16 decimal digits) that the server only
# joins and casts. Row i's digits are KEY_BASE + (i * KEY_STEP) % KEY_MODULUS, a bijection
# that scatters consecutive rows over the key space as random UUIDs would be (md5() on
# the server, the former key, cost 0.6 us per lookup that no application pays). Rows 1..size
# are loaded, size+1..2*size are the misses, and new keys of the save phase come from the
# rows above 2*size, so they never meet a loaded one yet fall anywhere among them.
KEY_PREFIX = "5f1c3a7e9b2d4c60"
KEY_BASE = 1_000_000_000_000_000
KEY_STEP = 381_966_011_246  # about 0.382 of the modulus: no run of consecutive rows stays in order
KEY_MODULUS = 999_999_999_989  # a prime: i -> digits is one-to-one
MAX_KEY_ROW = (2**63 - 1) // KEY_STEP  # i * KEY_STEP must fit pgbench's 64-bit integers
NEW_KEY_ROWS = 1_000_000  # at least this many rows above 2 * size for the new keys to be drawn from
SEED = 20251128  # pgbench --random-seed: every run draws the same keys, round after round
VERDICT_ROUNDS = 10  # fewer interleaved rounds than this decide no target


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
    seed: int = SEED

    @property
    def decisive(self) -> bool:
        """Whether the run has enough rounds for its verdicts to be verdicts."""
        return self.rounds >= VERDICT_ROUNDS


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
    if 2 * args.size + NEW_KEY_ROWS > MAX_KEY_ROW:
        most = (MAX_KEY_ROW - NEW_KEY_ROWS) // 2
        parser.error(f"--size {args.size:,}: at most {most:,} rows (the key mapping's 64-bit range)")
    if args.quick:
        sizes: tuple[int, ...] = (1_000, 10_000)
        rounds, duration, save_rows, storage_rows = 3, 1, 2_000, 2_000
    else:
        sizes = tuple(sorted({s for s in (10_000, 100_000, 1_000_000) if s <= args.size} | {args.size}))
        rounds, duration, save_rows, storage_rows = VERDICT_ROUNDS, 2, 100_000, 50_000
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


def key_variables() -> dict[str, object]:
    """pgbench's variables for the key of row :i (see KEY_PREFIX)."""
    return {"prefix": KEY_PREFIX, "key_base": KEY_BASE, "key_step": KEY_STEP, "key_modulus": KEY_MODULUS}


def script_variables() -> dict[str, object]:
    """The variables every pgbench run is given: the key mapping's, and the last row it can map."""
    return {**key_variables(), "max_row": MAX_KEY_ROW}
