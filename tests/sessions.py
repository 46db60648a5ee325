"""Concurrent sessions for the tests: real sessions, each a thread with its own connection, started
together behind a barrier; a gate a business operation waits on until the test opens it; and a
wait until a number of sessions wait on a lock of a given kind."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import psycopg

T = TypeVar("T")


@contextmanager
def together(
    count: int,
    work: Callable[[threading.Barrier], T],
    release: Callable[[], None] = lambda: None,
    timeout: float = 30.0,
) -> Iterator[list[Future[T]]]:
    """Start work(barrier) in `count` threads; each passes the shared barrier before its
    first statement. Yields their futures. Leaving the block calls `release` (open the
    gate the threads may wait on, even when the block failed), then waits for them."""
    barrier = threading.Barrier(count, timeout=timeout)
    with ThreadPoolExecutor(max_workers=count) as pool:
        try:
            yield [pool.submit(work, barrier) for _ in range(count)]
        finally:
            release()


def results(futures: list[Future[T]], timeout: float = 30.0) -> list[T]:
    return [future.result(timeout=timeout) for future in futures]


@contextmanager
def gate(conn: psycopg.Connection, key: int) -> Iterator[Callable[[], None]]:
    """Hold a session advisory lock on `key` that a business operation can wait on
    (pg_advisory_xact_lock(key)), so the test decides when it may finish. Yields the
    function that opens the gate; the gate is opened at the end of the block anyway."""
    opened = False

    def open_gate() -> None:
        nonlocal opened
        if not opened:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
            opened = True

    conn.execute("SELECT pg_advisory_lock(%s)", (key,))
    try:
        yield open_gate
    finally:
        open_gate()


WAITERS = """\
SELECT count(*)
FROM pg_stat_activity
WHERE datname = current_database()
  AND wait_event_type = 'Lock'
  AND wait_event = %(wait_event)s"""


def wait_for_waiters(conn: psycopg.Connection, wait_event: str, expected: int, timeout: float = 20.0) -> None:
    """Block until `expected` sessions of this database wait on a lock of this kind
    (pg_stat_activity.wait_event: advisory, transactionid, tuple...)."""
    deadline = time.monotonic() + timeout
    seen = -1
    while time.monotonic() < deadline:
        row = conn.execute(WAITERS, {"wait_event": wait_event}).fetchone()
        seen = int(row[0]) if row else 0
        if seen >= expected:
            return
        time.sleep(0.02)
    raise AssertionError(f"expected {expected} sessions waiting on a {wait_event} lock, saw {seen}")
