"""Delete expired idempotency records every hour, from the application.

Calls cleanup_expired_idempotency_records() on an interval, logs what it deleted, logs a failed
run and tries again at the next tick, and stops cleanly on SIGTERM or SIGINT (or when its stop
event is set, when it runs in a thread of the application).

    DATABASE_URL=postgresql://app@db/jive_money python cleanup_loop.py
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

import psycopg

log = logging.getLogger("idempotency.cleanup")

CLEANUP = "SELECT deleted_count FROM cleanup_expired_idempotency_records()"


def cleanup_once(connect: Callable[[], psycopg.Connection]) -> int:
    """One run: the number of expired records deleted."""
    with connect() as conn:
        row = conn.execute(CLEANUP).fetchone()
    return row[0] if row else 0


def run(connect: Callable[[], psycopg.Connection], interval: float, stop: threading.Event) -> None:
    """Run the cleanup now and then every `interval` seconds until `stop` is set."""
    while not stop.is_set():
        try:
            deleted = cleanup_once(connect)
        except psycopg.Error as error:
            log.error("idempotency cleanup failed, next try in %s s: %s", interval, error)
        else:
            log.info("idempotency cleanup deleted %d expired records", deleted)
        stop.wait(interval)
    log.info("idempotency cleanup stopped")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    url = os.environ["DATABASE_URL"]
    interval = float(os.environ.get("CLEANUP_INTERVAL_SECONDS", "3600"))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    run(lambda: psycopg.connect(url, autocommit=True), interval, stop)


if __name__ == "__main__":
    main()
