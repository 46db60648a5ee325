"""The pgbench driver: runs the real pgbench binary (the one next to the server's) with the
scripts in bench/*.sql, several clients and the prepared protocol, and reads back its
throughput and every transaction's latency from its log."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

from psycopg import sql

from bench.config import BENCH_DIR, Config, script_variables
from bench.database import connect
from tooling import servers


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


def script(name: str) -> list[str]:
    """pgbench's arguments to run one of the bench/*.sql scripts."""
    return [f"--file={BENCH_DIR / name}"]


def payload_text(size: int) -> str:
    """A JSON text of exactly `size` characters, without spaces (it goes through argv)."""
    return '{"d":"' + ("0123456789abcdef" * (size // 16 + 1))[: size - 8] + '"}'


class Pgbench:
    def __init__(self, server: servers.Server, db: str, config: Config, logdir: Path) -> None:
        self.server, self.db, self.config, self.logdir = server, db, config, logdir
        self.binary = pgbench_binary(server)
        self._runs = 0

    def _env(self, schema: str) -> dict[str, str]:
        """pgbench's environment: the server's client environment (the password in
        PGPASSWORD, PGREQUIREAUTH), the schema of the run as its search_path."""
        return self.server.client_env() | {"PGOPTIONS": f"-c search_path={schema}"}

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
        self, schema: str, script: Sequence[str], variables: dict[str, object], duration: int
    ) -> tuple[subprocess.Popen[str], Path]:
        self._runs += 1
        prefix = self.logdir / f"run{self._runs}"
        defines = [f"--define={name}={value}" for name, value in {**script_variables(), **variables}.items()]
        command = [
            *self._base(),
            "--no-vacuum",
            "--protocol=prepared",
            f"--client={self.config.clients}",
            f"--jobs={self.config.jobs}",
            f"--time={duration}",
            f"--random-seed={self.config.seed}",
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

    def run(self, schema: str, script: Sequence[str], variables: dict[str, object], duration: int | None = None) -> Run:
        process, prefix = self.start(schema, script, variables, duration or self.config.duration)
        return self.finish(process, prefix)
