"""No deadlock between the protocol, 046's cleanup, the recipes of docs/patterns.md and the
repository's save, on a handful of keys they all write at once:

- protocol workers claim, then complete, release or abandon (a crash: the lease runs out), each
  call in its own transaction, with leases and lifetimes short enough that keys expire and are
  taken over all the time;
- a careless caller claims two keys in one transaction, in a random order;
- recipe 1 claims a key, records its result and commits (it waits on row locks as long as
  needed), and the repository saves over keys;
- the cleanup function and recipe 4's batch delete what has expired.

Asserted: no session fails with 40P01 (or anything but the documented 55P03 of a completion or
release that found its key held), and at the end no key is stuck: each one is free, replays a
result, or is held by a lease that ends within the longest lease handed out."""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from tests import figures
from tests.protocol_calls import claim, complete, digest, release, stored
from tests.statements import CLAIM as RECIPE_CLAIM
from tests.statements import CLEANUP_BATCH, RECORD_RESULT, REPORT_SAVE
from tooling.records import save_params
from tooling.servers import Server

KEYS = [uuid.UUID(int=n + 1) for n in range(6)]
EXPIRE_RECIPE_RESULT = """
UPDATE idempotency_records
SET created_at = now() - INTERVAL '2 minutes', expires_at = now() - INTERVAL '1 minute'
WHERE request_id = %s AND result_payload = '{"recipe": 1}'
"""
LONGEST_LEASE = dt.timedelta(milliseconds=300)
HASH = digest({"fixed": True})


class Run:
    """What the sessions did: outcome counts, and every error, by kind."""

    def __init__(self, seconds: float) -> None:
        self.until = time.monotonic() + seconds
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []

    def going(self) -> bool:
        return time.monotonic() < self.until

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    def failed(self, who: str, error: psycopg.Error) -> None:
        with self.lock:
            self.errors.append(f"{who}: {error.sqlstate} {error}")


def _loop(
    pg_server: Server, database: str, run: Run, who: str, step: Callable[[psycopg.Connection, random.Random], None]
) -> None:
    chance = random.Random(who)
    with pg_server.connect(database, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '20s'")  # a wait that long is a hang: it fails the test
        while run.going():
            try:
                step(conn, chance)
            except psycopg.Error as error:
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.rollback()
                if error.sqlstate == "55P03" and who.startswith("protocol"):
                    run.count("55P03 of a completion or release")  # documented: call it again
                    continue
                run.failed(who, error)


def protocol_step(conn: psycopg.Connection, chance: random.Random) -> None:
    key = chance.choice(KEYS)
    lease = dt.timedelta(milliseconds=chance.randint(20, 300))
    answer = claim(conn, key, request_hash=HASH, lease=lease)
    RUN_COUNTS(answer.outcome)
    if answer.outcome != "claimed":
        return
    time.sleep(chance.uniform(0, 0.02))  # the operation
    ending = chance.random()
    if ending < 0.6:
        ttl = dt.timedelta(milliseconds=chance.randint(10, 400))
        RUN_COUNTS("completed" if complete(conn, key, answer.token, '{"ok": true}', 201, ttl) else "fenced")
    elif ending < 0.85:
        RUN_COUNTS("released" if release(conn, key, answer.token) else "fenced")
    else:
        RUN_COUNTS("abandoned")


def careless_step(conn: psycopg.Connection, chance: random.Random) -> None:
    first, second = chance.sample(KEYS, 2)
    with conn.transaction():
        for key in (first, second):
            claim(conn, key, request_hash=HASH, lease=dt.timedelta(milliseconds=100))
        time.sleep(chance.uniform(0, 0.01))
    RUN_COUNTS("careless transaction")


def recipe_step(conn: psycopg.Connection, chance: random.Random) -> None:
    """Recipe 1; then, as 72 hours would, the record expires (an update of its own)."""
    key = chance.choice(KEYS)
    with conn.transaction():
        if conn.execute(RECIPE_CLAIM, {"request_id": key, "operation": "payment"}).fetchone() is None:
            return
        time.sleep(chance.uniform(0, 0.01))
        conn.execute(RECORD_RESULT, {"request_id": key, "result_payload": '{"recipe": 1}', "status_code": 201})
    RUN_COUNTS("recipe 1")
    time.sleep(chance.uniform(0, 0.05))
    conn.execute(EXPIRE_RECIPE_RESULT, (key,))


def save_step(conn: psycopg.Connection, chance: random.Random) -> None:
    conn.execute(REPORT_SAVE, save_params(chance.choice(KEYS), "payment", '{"saved": true}', 201, 0.00003))  # 0.108 s
    RUN_COUNTS("save")
    time.sleep(chance.uniform(0.02, 0.08))


def cleanup_step(conn: psycopg.Connection, chance: random.Random) -> None:
    conn.execute("SELECT deleted_count FROM cleanup_expired_idempotency_records()")
    conn.execute(CLEANUP_BATCH)
    RUN_COUNTS("cleanups")
    time.sleep(chance.uniform(0, 0.01))


STEPS: dict[str, Callable[[psycopg.Connection, random.Random], None]] = {
    "protocol 1": protocol_step,
    "protocol 2": protocol_step,
    "protocol 3": protocol_step,
    "careless 1": careless_step,
    "careless 2": careless_step,
    "recipe 1": recipe_step,
    "save": save_step,
    "cleanup": cleanup_step,
}
_current: list[Run] = []


def RUN_COUNTS(what: str) -> None:
    _current[-1].count(what)


def mixed_run(pg_server: Server, database: str, conn: psycopg.Connection, seconds: float) -> Run:
    run = Run(seconds)
    _current.append(run)
    try:
        with ThreadPoolExecutor(max_workers=len(STEPS)) as pool:
            futures = [pool.submit(_loop, pg_server, database, run, who, step) for who, step in STEPS.items()]
            for future in futures:
                future.result(timeout=seconds + 120)
    finally:
        _current.pop()
    figures.add("sessions", len(STEPS))
    figures.add("operations", sum(run.counts.values()))
    figures.add("deadlocks", sum("40P01" in error for error in run.errors))
    assert not run.errors, "sessions failed:\n" + "\n".join(run.errors[:20])
    for outcome in ("claimed", "in_progress", "replay", "completed", "released", "recipe 1", "cleanups"):
        assert run.counts[outcome] > 0, f"the run never saw {outcome}: {dict(run.counts)}"
    # No key is stuck: free, replayed, or held by a lease that ends within the longest one.
    conn.execute("SELECT pg_sleep(%s)", (LONGEST_LEASE.total_seconds(),))
    for key in KEYS:
        record = stored(conn, key)
        now = conn.execute("SELECT now()").fetchone()
        assert now is not None
        if record is not None and record.lease_token is not None and record.status_code == 409:
            assert record.expires_at <= now[0] + LONGEST_LEASE, f"{key}: a lease that outlives the longest one"
    return run


def test_the_protocol_the_cleanup_and_the_recipes_never_deadlock(
    pg_server: Server, protocol_database: str, pconn: psycopg.Connection
) -> None:
    mixed_run(pg_server, protocol_database, pconn, seconds=3)


@pytest.mark.slow
def test_the_protocol_the_cleanup_and_the_recipes_never_deadlock_for_30_seconds(
    pg_server: Server, protocol_database: str, pconn: psycopg.Connection
) -> None:
    mixed_run(pg_server, protocol_database, pconn, seconds=30)
