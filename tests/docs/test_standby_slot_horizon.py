"""A standby's replication slot holds back vacuum of this table only with hot_standby_feedback = on
(the guide's "What holds back vacuum"): a streaming standby, through its physical slot, keeps a
REPEATABLE READ snapshot open in the application's database while the primary cleans up and
vacuums. With feedback on, the slot's xmin is set, the cleanup's dead rows stay, the guide's query
names the slot, and the standby's transaction goes on; with feedback off (the default), the slot
has no xmin, vacuum removes every dead row, the query names nothing (the guide once called any
standby's slot a holder), and replay cancels the standby's transaction instead.
Without a slot, feedback sets the xmin of the standby's WAL sender, a process of no database,
which the guide's query lists too.
Each case has a primary of its own, of the selected major, and its standby (pg_basebackup -R)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from tests import helpers, vacuum
from tests.docblocks import prose
from tooling import records, servers

DBNAME = "jive_money"
SLOT = "jive_standby"
ROWS = 100
TIMEOUT = 30.0  # seconds for the standby to replay and report (it reports every second)


@pytest.fixture
def primary() -> Iterator[servers.LocalServer]:
    with servers.throwaway_local("idempotency-primary-", in_memory=True) as local:
        with local.server().connect(autocommit=True) as conn:
            conn.execute("CREATE DATABASE jive_money")
        with local.server().connect(DBNAME, autocommit=True) as conn:
            helpers.apply_all(conn, helpers.UP_FILES)
        yield local


def wait_until(conn: psycopg.Connection, query: str, params: tuple[object, ...], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        row = conn.execute(query, params).fetchone()
        if row is not None and row[0]:
            return
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {TIMEOUT:.0f} s")


def dead_rows_after_vacuum(conn: psycopg.Connection) -> int:
    """Clean up the ROWS expired records and VACUUM: the dead rows it could not remove."""
    vacuum.clean_up(conn, ROWS)
    return vacuum.dead_rows_after_vacuum(conn)


def replayed(conn: psycopg.Connection) -> None:
    """Wait until the standby has replayed everything the primary wrote so far."""
    lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
    assert lsn is not None
    wait_until(conn, "SELECT replay_lsn >= %s::pg_lsn FROM pg_stat_replication", (lsn[0],), "the standby replays")


@contextmanager
def reading(standby: servers.LocalServer, conn: psycopg.Connection) -> Iterator[tuple[psycopg.Connection, int]]:
    """ROWS expired records stored through `conn`, on the primary, and replayed; on the standby, a
    REPEATABLE READ transaction in jive_money that sees them: its connection and its snapshot's xmin."""
    records.insert_many(conn, ROWS, records.expired())
    replayed(conn)
    with standby.server().connect(DBNAME) as reader:
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        assert reader.execute("SELECT count(*) FROM idempotency_records").fetchone() == (ROWS,)
        row = reader.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::TEXT::BIGINT").fetchone()
        assert row is not None
        yield reader, row[0]


def snapshot_conflicts(standby: servers.Server, expected: int) -> int:
    """The standby's queries cancelled in jive_money because replay removed rows they could see,
    once the statistics show `expected` of them (they arrive late), or as they stand after a while."""
    with standby.connect(DBNAME, autocommit=True) as conn:
        for _ in range(50):
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(
                "SELECT confl_snapshot FROM pg_stat_database_conflicts WHERE datname = current_database()"
            ).fetchone()
            assert row is not None
            if row[0] >= expected:
                break
            time.sleep(0.1)
    return int(row[0])


@pytest.mark.parametrize("feedback", ["on", "off"])
def test_a_standbys_slot_holds_back_this_table_only_with_hot_standby_feedback(
    primary: servers.LocalServer, feedback: str
) -> None:
    settings = {
        "hot_standby_feedback": feedback,
        "wal_receiver_status_interval": "1s",
        "max_standby_streaming_delay": "200ms",  # how long replay waits for a conflicting query
    }
    with (
        servers.streaming_standby(primary, SLOT, settings) as standby,
        primary.server().connect(DBNAME, autocommit=True) as conn,
    ):
        with reading(standby, conn) as (reader, snapshot_xmin):
            if feedback == "on":
                wait_until(
                    conn,
                    "SELECT xmin::TEXT::BIGINT <= %s FROM pg_replication_slots WHERE slot_name = %s",
                    (snapshot_xmin, SLOT),
                    "the standby's snapshot reaches its slot's xmin",
                )
            else:
                # Reports arrive every second: after a few, the slot still has no xmin.
                first = conn.execute("SELECT reply_time FROM pg_stat_replication").fetchone()
                wait_until(
                    conn,
                    "SELECT reply_time > %s + INTERVAL '2 seconds' FROM pg_stat_replication",
                    (first[0] if first else None,),
                    "the standby reports",
                )
                slot = conn.execute("SELECT xmin FROM pg_replication_slots WHERE slot_name = %s", (SLOT,))
                assert slot.fetchone() == (None,), "without feedback the standby's slot has no xmin"
            dead = dead_rows_after_vacuum(conn)
            named = ("replication slot", SLOT) in vacuum.holders(conn, vacuum.guide_holders())
            replayed(conn)
            try:
                still = reader.execute("SELECT count(*) FROM idempotency_records").fetchone()
                reader.rollback()
            except psycopg.Error as error:
                still = error
        conflicts = snapshot_conflicts(standby.server(), 0 if feedback == "on" else 1)
    if feedback == "on":
        assert dead >= ROWS, f"the standby's snapshot, through its slot, keeps the dead rows: {dead}"
        assert named, "the guide's query names the slot"
        assert still == (ROWS,) and conflicts == 0, f"the standby's query goes on: {still}, {conflicts} conflicts"
    else:
        assert dead == 0, f"without feedback the standby holds nothing back on the primary: {dead}"
        assert not named, "the guide's query names no slot"
        assert isinstance(still, psycopg.Error) and conflicts >= 1, (
            f"replay cancelled the standby's transaction instead: {still!r}, {conflicts} conflicts"
        )
    guide = prose()
    assert "a standby's slot with `hot_standby_feedback = on`" in guide, "the guide states the condition"


def test_a_standby_without_a_slot_holds_back_this_table_through_its_wal_sender(primary: servers.LocalServer) -> None:
    """Without a slot, hot_standby_feedback sets the xmin of the standby's WAL sender, a process of
    no database (datid NULL): the guide's query lists it, as a session of no database, beside this
    database's own sessions."""
    settings = {"hot_standby_feedback": "on", "wal_receiver_status_interval": "1s"}
    sender = (
        "SELECT pid, datid IS NULL, backend_xmin::TEXT::BIGINT FROM pg_stat_activity WHERE backend_type = 'walsender'"
    )
    with (
        servers.streaming_standby(primary, None, settings) as standby,
        primary.server().connect(DBNAME, autocommit=True) as conn,
        reading(standby, conn) as (reader, snapshot_xmin),
    ):
        wait_until(
            conn,
            "SELECT backend_xmin::TEXT::BIGINT <= %s FROM pg_stat_activity WHERE backend_type = 'walsender'",
            (snapshot_xmin,),
            "the standby's snapshot reaches its WAL sender's xmin",
        )
        found = conn.execute(sender).fetchone()
        dead = dead_rows_after_vacuum(conn)
        listed = vacuum.holders(conn, vacuum.guide_holders())
        reader.rollback()
    assert found is not None and found[1], f"the WAL sender belongs to no database: {found}"
    assert dead >= ROWS, f"the standby's snapshot, through its WAL sender, keeps the dead rows: {dead}"
    assert ("session", str(found[0])) in listed, f"the guide's query lists the WAL sender: {listed}"
    assert not any(holder == "replication slot" for holder, _ in listed), f"and no slot: {listed}"
