"""What one run of the verification script writes on a production-like table of 100,000 records,
on a server of its own with full_page_writes on (as in production), autovacuum off and wal_level
minimal (so that nothing else writes WAL): a full run inserts three records (the report's live and expired ones,
047's claim) and updates two (the report's second save, 047's completion): five row versions, dead
after its rollback, which the next vacuum removes. It uses one transaction id and seven
subtransaction ids, and writes about 45 kB of WAL, 90 kB right after a checkpoint (full-page
images); a catalog_only run writes no row and takes no transaction id. The figures the guide gives
(Verification) are these; run with -s to print them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

from tests import verification
from tests.helpers import UP_FILES, apply
from tests.verification import PASSING
from tooling import servers

DBNAME = "idempotency_test_writes"
# wal_level minimal: no standby snapshot (the 50-odd bytes the background writer logs every 15 s
# at replica level), so that WAL written during a run is the run's own.
SETTINGS = {
    **servers.FAST_SETTINGS,
    "full_page_writes": "on",
    "autovacuum": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
}


@dataclass(frozen=True)
class Counters:
    wal: int  # pg_current_wal_insert_lsn(), in bytes
    next_xid: int
    inserted: int
    updated: int
    deleted: int
    dead: int


@pytest.fixture(scope="module")
def production() -> Iterator[servers.Server]:
    """A server of its own holding the migrated table with 100,000 live records, analyzed."""
    with servers.throwaway_server("idempotency-writes-", settings=SETTINGS) as server:
        with server.connect(autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DBNAME)))
        with server.connect(DBNAME, autocommit=True) as conn:
            for path in UP_FILES:
                apply(conn, path)
            verification.load_fixture(conn, "live_100k", PASSING)
            # Every table, the catalogs too: a first read of a catalog page the migrations left
            # dead rows on prunes it, and that is WAL of the run's, not of the script's doing.
            conn.execute("VACUUM ANALYZE")
        # A first run on a fresh server writes a few bytes of WAL whatever its mode (64, measured):
        # the figures are those of a run on a server that has run it before.
        verification.assert_passes(verification.run_script(server, DBNAME, "catalog_only=1"), behaviour=False)
        yield server


def counters(conn: psycopg.Connection) -> Counters:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::BIGINT, "
        "pg_snapshot_xmax(pg_current_snapshot())::TEXT::BIGINT, "
        "n_tup_ins, n_tup_upd, n_tup_del, n_dead_tup "
        "FROM pg_stat_user_tables WHERE relid = 'idempotency_records'::regclass"
    ).fetchone()
    assert row is not None
    return Counters(*(int(value) for value in row))


def after_run(conn: psycopg.Connection, before: Counters, *, wrote: bool) -> Counters:
    """The counters once the script's session has ended and flushed its statistics."""
    deadline = time.monotonic() + 10
    now = counters(conn)
    while wrote and now.inserted == before.inserted and time.monotonic() < deadline:
        time.sleep(0.05)
        now = counters(conn)
    return now


def measure(
    server: servers.Server, *variables: str, checkpoint: bool, options: str | None = None
) -> tuple[verification.Run, dict[str, int]]:
    with server.connect(DBNAME, autocommit=True) as conn:
        if checkpoint:
            conn.execute("CHECKPOINT")
        before = counters(conn)
        run = verification.run_script(server, DBNAME, *variables, options=options)
        after = after_run(conn, before, wrote=not run.behaviour_skipped)
        wal_of_measuring = counters(conn).wal - after.wal  # reading the counters writes nothing
    figures = {
        "rows inserted": after.inserted - before.inserted,
        "rows updated": after.updated - before.updated,
        "rows deleted": after.deleted - before.deleted,
        "dead row versions": after.dead - before.dead,
        "transaction ids": after.next_xid - before.next_xid,
        "WAL bytes": after.wal - before.wal - wal_of_measuring,
    }
    print(f"\n{'full' if not variables else ' '.join(variables)}, checkpoint first: {checkpoint}: {figures}")
    return run, figures


@pytest.mark.parametrize("checkpoint", [True, False], ids=["after a checkpoint", "again"])
def test_what_a_full_run_writes_on_100k_records(production: servers.Server, checkpoint: bool) -> None:
    run, figures = measure(production, checkpoint=checkpoint)
    verification.assert_passes(run)
    assert run.skipped == [], "every behaviour test ran, the cleanup's too"
    assert {name: figures[name] for name in ("rows inserted", "rows updated", "rows deleted")} == {
        "rows inserted": 3,  # the live and expired records, 047's claim (test 10's is refused before)
        "rows updated": 2,  # the second save of the live record, 047's completion
        "rows deleted": 1,  # the cleanup's, of the expired record
    }, figures
    # Five new dead versions, less those of an earlier run that page pruning removed meanwhile.
    assert 1 <= figures["dead row versions"] <= 5, figures
    # One transaction; a subtransaction for each test that writes (3, 5, 6, 8, 11, 12), and one
    # for the claim's own exception block, around its INSERT.
    assert figures["transaction ids"] == 8, figures
    # Measured: about 90 kB after a checkpoint (full-page images of each page written first), 45 kB
    # again (the random keys' leaf pages of the primary key are written whole the first time).
    assert 0 < figures["WAL bytes"] < (192 if checkpoint else 96) * 1024, figures


@pytest.mark.parametrize(
    ("variables", "options"),
    [(("catalog_only=1",), None), ((), "-c default_transaction_read_only=on")],
    ids=["catalog_only=1", "a read-only session"],
)
def test_a_run_that_must_not_write_writes_nothing(
    production: servers.Server, variables: tuple[str, ...], options: str | None
) -> None:
    """catalog_only=1, and a full run in a read-only session (as on a replica, or for a role whose
    sessions are read-only), where the behaviour tests are skipped."""
    run, figures = measure(production, *variables, checkpoint=False, options=options)
    verification.assert_passes(run, behaviour=False)
    assert figures["transaction ids"] == 0 and figures["rows inserted"] == 0, figures
    assert figures["WAL bytes"] == 0, figures
