"""What holds back vacuum of this table, the guide's query against the states that falsified the
one it printed before (tests/vacuum.py keeps it as the counter-example), on every major:

- a session idle in transaction after a write has backend_xid set and backend_xmin empty between
  statements: it keeps the cleanup's dead rows, and the old query, which looked at backend_xmin
  only, missed it;
- a session of another database holds back that database only: vacuum here removes the dead rows,
  and the old query, which listed every database's sessions, raised a false alarm;
- idle_in_transaction_session_timeout is 0 (off) unless set: nothing ends a forgotten session by
  itself; set, it ends one (SQLSTATE 25P03).
The logical slot and prepared transaction cases, which need wal_level = logical and
max_prepared_transactions, run in tests/managed/test_alerts.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
import pytest

from tests.docblocks import GUIDE, block_with, prose
from tests.vacuum import OLD_HOLDERS, dead_rows_after_cleanup, guide_holders, holders
from tooling.servers import Server


def test_a_write_left_idle_in_transaction_holds_back_vacuum_and_only_the_guides_query_names_it(
    pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    with pg_server.connect(database) as writer:
        # A write without parameters (psycopg then sends it as a simple query, which leaves no
        # portal, and so no snapshot, open); the transaction stays open, idle.
        writer.execute(
            "INSERT INTO idempotency_records (request_id, operation, result_payload, expires_at) "
            "VALUES (gen_random_uuid(), 'payment', '{}', now() + INTERVAL '1 day')"
        )
        pid = str(writer.info.backend_pid)
        state = conn.execute(
            "SELECT backend_xid IS NOT NULL, backend_xmin IS NULL, state FROM pg_stat_activity WHERE pid = %s",
            (int(pid),),
        ).fetchone()
        assert state == (True, True, "idle in transaction"), f"backend_xid set, backend_xmin empty: {state}"
        assert dead_rows_after_cleanup(conn, 1000) >= 1000, "it keeps the cleanup's dead rows"
        assert ("session", pid) in holders(conn, guide_holders()), "the guide's query names it"
        assert ("session", pid) not in holders(conn, OLD_HOLDERS), "the old one, on backend_xmin only, missed it"
        writer.rollback()
        # Its rolled-back row counts as a dead row in the statistics. A session sends its counts
        # when idle, but skips that while the table's entry is busy and sends them later, which
        # can be after the VACUUM below has counted the table: here they are sent now, waiting.
        writer.autocommit = True
        writer.execute("SELECT pg_stat_force_next_flush()")
    assert dead_rows_after_cleanup(conn, 10) == 0, "once it ended, vacuum removed them"


def test_a_session_of_another_database_does_not_hold_back_this_table(
    pg_server: Server, conn: psycopg.Connection, fresh_database: Callable[[], str]
) -> None:
    with pg_server.connect(fresh_database()) as other:
        other.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        other.execute("SELECT count(*) FROM pg_class")  # its snapshot stays open, in its own database
        pid = str(other.info.backend_pid)
        assert dead_rows_after_cleanup(conn, 1000) == 0, "vacuum here removed every dead row"
        assert ("session", pid) in holders(conn, OLD_HOLDERS), "the old query raised the alarm for it"
        assert ("session", pid) not in holders(conn, guide_holders()), (
            "the guide's query lists this database's sessions only"
        )
        other.rollback()


def test_nothing_ends_a_forgotten_session_unless_idle_in_transaction_session_timeout_is_set(
    pg_server: Server, database: str
) -> None:
    with pg_server.connect(database) as forgotten:
        assert forgotten.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("0",), "off by default"
        forgotten.execute("SELECT 1")
        time.sleep(0.5)
        assert forgotten.execute("SELECT 1").fetchone() == (1,), "still there after idling in its transaction"
        forgotten.rollback()
    with pg_server.connect(database) as timed:
        timed.execute("SET idle_in_transaction_session_timeout = '100ms'")
        timed.commit()
        timed.execute("SELECT 1")
        time.sleep(1)
        with pytest.raises(psycopg.Error) as ended:
            timed.execute("SELECT 1")
        assert ended.value.sqlstate == "25P03", f"ended by the timeout: {ended.value}"
    block = block_with("SET idle_in_transaction_session_timeout = '5min'", GUIDE)
    assert block.text.startswith("ALTER ROLE jive_api_user"), "the guide sets it for the application's role"
    assert "ends forgotten sessions by itself" not in prose(), "as it said before"
