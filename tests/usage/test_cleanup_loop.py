"""The guide's application-level cleanup (docs/examples/cleanup_loop.py) deletes, survives a failed
run and stops cleanly, on a real server; the guide prints the file verbatim."""

from __future__ import annotations

import importlib.util
import logging
import signal
import subprocess
import sys
import threading
from types import ModuleType
from typing import IO

import psycopg
import pytest

from tests.helpers import ROOT
from tooling import records
from tooling.servers import Server

EXAMPLE = ROOT / "docs" / "examples" / "cleanup_loop.py"
GUIDE = ROOT / "docs" / "README_IDEMPOTENCY.md"


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cleanup_loop", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_guide_links_the_example_and_names_what_it_holds() -> None:
    """The example lives in its file only (the guide is short); the guide links it and names
    its entry points, which must exist."""
    text = GUIDE.read_text()
    link = "[`docs/examples/cleanup_loop.py`](examples/cleanup_loop.py)"
    assert link in text and (GUIDE.parent / "examples" / "cleanup_loop.py") == EXAMPLE, (
        f"the guide links {EXAMPLE.relative_to(ROOT)}"
    )
    example = _example()
    for name in ("run", "main", "cleanup_once"):
        assert callable(getattr(example, name, None)), f"the example defines {name}()"
    assert "`run()`" in text and "DATABASE_URL" in EXAMPLE.read_text()


def test_the_loop_deletes_survives_a_failed_run_and_stops(
    pg_server: Server, database: str, conn: psycopg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """Four ticks, scripted by the connection factory: 5 expired records deleted; a run that fails
    (a database that does not exist); 3 more deleted; then the stop event, set during the fourth run."""
    example = _example()
    stop = threading.Event()
    records.insert_many(conn, 5, records.expired())
    calls = 0

    def connect() -> psycopg.Connection:
        nonlocal calls
        calls += 1
        if calls == 2:
            return pg_server.connect(f"{database}_missing", autocommit=True)
        if calls == 3:
            records.insert_many(conn, 3, records.expired())
        if calls == 4:
            stop.set()
        return pg_server.connect(database, autocommit=True)

    caplog.set_level(logging.INFO, logger="idempotency.cleanup")
    thread = threading.Thread(target=example.run, args=(connect, 0.01, stop))
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the loop stops once its stop event is set"
    messages = [(record.levelname, record.getMessage()) for record in caplog.records]
    assert [level for level, _ in messages] == ["INFO", "ERROR", "INFO", "INFO", "INFO"], messages
    assert messages[0][1] == "idempotency cleanup deleted 5 expired records"
    assert "idempotency cleanup failed" in messages[1][1] and "_missing" in messages[1][1]
    assert messages[2][1] == "idempotency cleanup deleted 3 expired records", "the run after the failure works"
    assert messages[3][1] == "idempotency cleanup deleted 0 expired records"
    assert messages[4][1] == "idempotency cleanup stopped"
    assert conn.execute("SELECT count(*) FROM idempotency_records").fetchone() == (0,)


def _read_until(stream: IO[str] | None, wanted: str, seen: list[str]) -> None:
    assert stream is not None
    for line in iter(stream.readline, ""):
        seen.append(line)
        if wanted in line:
            return
    raise AssertionError(f"the process ended before printing {wanted!r}: {''.join(seen)}")


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_the_script_stops_cleanly_on_a_signal(
    pg_server: Server, database: str, conn: psycopg.Connection, signal_name: str
) -> None:
    records.insert_many(conn, 2, records.expired())
    env = pg_server.client_env()
    env.update(DATABASE_URL=pg_server.conninfo(database), CLEANUP_INTERVAL_SECONDS="3600")
    process = subprocess.Popen([sys.executable, str(EXAMPLE)], env=env, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    seen: list[str] = []
    try:
        _read_until(process.stderr, "deleted 2 expired records", seen)
        process.send_signal(getattr(signal, signal_name))  # it waits for its next tick, an hour away
        _read_until(process.stderr, "idempotency cleanup stopped", seen)
        assert process.wait(timeout=60) == 0, "".join(seen)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
