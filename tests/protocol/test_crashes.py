"""A crash of a holder loses nothing but its lease, and no key stays stuck past its lease.

- The holder's connection is terminated in the middle of its operation (pg_terminate_backend):
  its lease holds until its end (every claim before it answers in_progress), then the next claim
  takes the key over; every other record is intact.
- The holder is terminated while its claim is still uncommitted: the claim is rolled back and
  the key is free at once.
- The server is killed (pg_ctl stop -m immediate) and restarted: completed results, committed
  leases and their tokens survive; claims and completions that were not committed are gone; each
  lease still ends when it said it would.

"Before the lease's end" is read from the server's clock: each claim runs in a transaction that
first reads now(), the instant the claim compares with expires_at."""

from __future__ import annotations

import datetime as dt
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from tests import figures
from tests.helpers import UP_FILES, apply_all
from tests.protocol_calls import Claim, apply_protocol, claim, complete, stored
from tooling.servers import FAST_SETTINGS, LocalServer, Server, throwaway_datadir


def claim_and_clock(conn: psycopg.Connection, key: uuid.UUID) -> tuple[Claim, dt.datetime]:
    """A claim, and the now() it ran with (one transaction)."""
    with conn.transaction():
        now = conn.execute("SELECT now()").fetchone()
        answer = claim(conn, key)
    assert now is not None
    return answer, now[0]


def claims_until_taken_over(conn: psycopg.Connection, key: uuid.UUID, lease_end: dt.datetime) -> Claim:
    """Claim the key until a claim takes it over; each claim before lease_end must be in_progress
    and the first after it claimed. Returns that claim."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer, now = claim_and_clock(conn, key)
        if now < lease_end:
            assert answer.outcome == "in_progress", f"at {now}, before the lease's end {lease_end}: {answer}"
            time.sleep(0.05)
            continue
        assert answer.outcome == "claimed", f"at {now}, past the lease's end {lease_end}: {answer}"
        return answer
    raise AssertionError(f"no claim ran after the lease's end {lease_end}")


def test_a_holder_terminated_mid_operation_loses_only_its_lease(
    pg_server: Server, protocol_database: str, pconn: psycopg.Connection
) -> None:
    key, kept = uuid.uuid4(), uuid.uuid4()
    assert complete(pconn, kept, claim(pconn, kept).token, '{"payment_id": "kept"}', 201)
    name = f"idempotency_holder_{uuid.uuid4().hex}"
    with (
        pg_server.connect(protocol_database, autocommit=True, application_name=name) as holder,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        figures.add("sessions")
        token = claim(holder, key, lease=dt.timedelta(seconds=1)).token
        operating = pool.submit(holder.execute, "SELECT pg_sleep(60)")  # the call to the other system
        deadline = time.monotonic() + 30
        while not pconn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s "
            "AND wait_event = 'PgSleep'",
            (name,),
        ).fetchall():
            assert time.monotonic() < deadline, "the holder never reached its operation"
            time.sleep(0.01)
        with pytest.raises(psycopg.OperationalError):
            operating.result(timeout=30)
    figures.add("faults_injected")
    record = stored(pconn, key)
    assert record is not None and record.lease_token == token, "the lease survives its holder"
    taken = claims_until_taken_over(pconn, key, record.expires_at)
    assert taken.token != token
    assert complete(pconn, key, token) is False, "the dead holder's token is fenced off"
    assert claim(pconn, kept) == Claim("replay", None, '{"payment_id": "kept"}', 201), "nothing else is lost"
    figures.add("rows_checked", 2)
    figures.add("faults_survived")


def test_a_holder_terminated_before_its_claim_committed_leaves_the_key_free(
    pg_server: Server, protocol_database: str, pconn: psycopg.Connection
) -> None:
    key = uuid.uuid4()
    with pg_server.connect(protocol_database) as holder:  # not autocommit: the claim stays open
        figures.add("sessions")
        assert claim(holder, key).outcome == "claimed"
        pconn.execute("SELECT pg_terminate_backend(%s)", (holder.info.backend_pid,))
        figures.add("faults_injected")
        with pytest.raises(psycopg.OperationalError):
            holder.execute("SELECT 1")
    assert stored(pconn, key) is None, "the uncommitted claim is gone with its session"
    assert claim(pconn, key).outcome == "claimed", "and the key is free at once"
    figures.add("faults_survived")


def test_a_server_crash_keeps_what_was_committed_and_every_lease_ends_on_time() -> None:
    datadir = throwaway_datadir("idempotency-protocol-crash-")
    local = LocalServer(datadir)
    done, leased, open_claim, open_completion = (uuid.uuid4() for _ in range(4))
    try:
        local.initdb({**FAST_SETTINGS, "synchronous_commit": "on"})
        local.start()
        server = local.server()
        with server.connect(autocommit=True) as setup:
            apply_all(setup, UP_FILES)
            apply_protocol(setup)
            assert complete(setup, done, claim(setup, done).token, '{"payment_id": "done"}', 201)
            leased_token = claim(setup, leased, lease=dt.timedelta(seconds=2)).token
            completing_token = claim(setup, open_completion, lease=dt.timedelta(seconds=2)).token
            leases = {key: stored(setup, key).expires_at for key in (leased, open_completion)}  # type: ignore[union-attr]
        # Two transactions left open (a psycopg connection's `with` would commit them at its end).
        claimer, completer = server.connect(), server.connect()
        try:
            assert claim(claimer, open_claim).outcome == "claimed"
            assert complete(completer, open_completion, completing_token)
            local.stop("immediate")
            figures.add("faults_injected")
        finally:
            claimer.close()
            completer.close()
        local.start()
        with server.connect(autocommit=True) as after:
            figures.add("sessions", 2)
            assert claim(after, done) == Claim("replay", None, '{"payment_id": "done"}', 201), "a result survives"
            assert claim(after, open_claim).outcome == "claimed", "an uncommitted claim is gone: the key is free"
            for key in (leased, open_completion):
                record = stored(after, key)
                assert record is not None and record.expires_at == leases[key], f"{key}: the lease survives as it was"
            assert complete(after, leased, leased_token), "a holder that reconnects still completes with its token"
            taken = claims_until_taken_over(after, open_completion, leases[open_completion])
            assert taken.token != completing_token, "the lease whose completion was lost ends on time"
            figures.add("rows_checked", 4)
    finally:
        local.stop("immediate")
        shutil.rmtree(datadir.parent, ignore_errors=True)
    figures.add("faults_survived")
