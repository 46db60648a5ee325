"""What every phase is given (the server, the scratch database, the pgbench driver, the
configuration, and where samples and notes go), and the helpers of a round."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from typing import Any

import psycopg

from bench.config import Config
from bench.database import connect
from bench.pgbench import Pgbench
from bench.samples import Samples
from tooling import servers


@dataclasses.dataclass
class Context:
    server: servers.Server
    db: str
    bench: Pgbench
    config: Config
    samples: Samples
    notes: dict[str, Any]

    def connect(self, schema: str | None = None) -> psycopg.Connection:
        """An autocommit connection to the scratch database, search_path set to `schema` if given."""
        return connect(self.server, self.db, schema)


def rotate(items: Sequence[str], by: int) -> list[str]:
    """The contenders in the order of round `by`: each round starts with the next one."""
    by %= len(items)
    return [*items[by:], *items[:by]]


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
