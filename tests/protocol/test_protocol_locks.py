"""How long 047 and its down file wait for the locks they take (the guide's Lock impact table,
which tests/deploy/test_lock_impact.py measures, says which): a first apply waits at most
lock_timeout and then changes nothing; applying a complete 047 again, or its down file where
there is nothing left to drop, takes no lock at all.

"No lock" is asserted exactly, as tests/deploy/test_reapply_locks.py does: the file runs with a
lock_timeout of 1 ms while an application transaction holds a row lock and another has written
and stays open, so any lock it asked for that conflicts with theirs would fail it with 55P03."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tests.helpers import catalog_snapshot
from tests.protocol_calls import PROTOCOL_DOWN, PROTOCOL_UP, apply_protocol, claim
from tests.statements import REPORT_SAVE
from tooling.records import save_params
from tooling.servers import Server


def test_the_file_sets_a_lock_timeout_only_where_none_is_set(conn: psycopg.Connection) -> None:
    for session, expected in (("0", "2s"), ("150ms", "150ms")):
        conn.execute(f"SET lock_timeout = '{session}'")
        with conn.transaction():
            conn.execute(PROTOCOL_UP.read_text())
            assert conn.execute("SHOW lock_timeout").fetchone() == (expected,), f"deployer's {session}"
            raise psycopg.Rollback()
        assert conn.execute("SHOW lock_timeout").fetchone() == (session,), "the file's setting ends with it"


def test_a_first_apply_behind_an_open_transaction_fails_at_its_lock_timeout_and_changes_nothing(
    pg_server: Server, database: str, contract_conn: psycopg.Connection
) -> None:
    conn = contract_conn  # 045 and 046 only: 047 adds its columns
    with pg_server.connect(database) as application:
        application.execute(REPORT_SAVE, save_params(uuid.uuid4(), "payment", "{}", 201, 24))  # open, uncommitted
        before = catalog_snapshot(conn)
        conn.execute("SET lock_timeout = '100ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable), conn.transaction():
            conn.execute(PROTOCOL_UP.read_text())
        assert catalog_snapshot(conn) == before, "nothing of 047 is left"
        application.rollback()
    conn.execute("RESET lock_timeout")
    apply_protocol(conn)
    assert claim(conn, uuid.uuid4()).outcome == "claimed", "applied again once the transaction ended, it completes"


@pytest.mark.parametrize("path", [PROTOCOL_UP, PROTOCOL_DOWN], ids=["047 again", "047.down again"])
def test_a_run_with_nothing_to_do_waits_for_no_application_transaction_and_blocks_no_save(
    pg_server: Server, database: str, conn: psycopg.Connection, path: object
) -> None:
    apply_protocol(conn)
    if path == PROTOCOL_DOWN:
        conn.execute(PROTOCOL_DOWN.read_text())
    held, kept = uuid.uuid4(), uuid.uuid4()
    conn.execute(REPORT_SAVE, save_params(held, "payment", "{}", 201, 24))
    conn.execute(REPORT_SAVE, save_params(kept, "payment", "{}", 201, 24))
    with (
        pg_server.connect(database) as row_locker,
        pg_server.connect(database) as writer,
        pg_server.connect(database) as runner,
        pg_server.connect(database, autocommit=True) as saver,
    ):
        row_locker.execute("SELECT 1 FROM idempotency_records WHERE request_id = %s FOR UPDATE", (held,))
        writer.execute(REPORT_SAVE, save_params(uuid.uuid4(), "payment", "{}", 201, 24))
        runner.execute("SET lock_timeout = '1ms'")
        runner.execute(path.read_text())  # type: ignore[attr-defined]
        held_by_runner = conn.execute(
            "SELECT l.mode FROM pg_locks AS l WHERE l.pid = %s AND l.locktype = 'relation' "
            "AND l.relation IN (SELECT oid FROM pg_class WHERE relname LIKE 'idempotency_records%%' "
            "OR relname LIKE 'idx_idempotency_%%')",
            (runner.info.backend_pid,),
        ).fetchall()
        saver.execute("SET lock_timeout = '1ms'")
        saver.execute(REPORT_SAVE, save_params(uuid.uuid4(), "payment", "{}", 201, 24))
        saver.execute(REPORT_SAVE, save_params(kept, "payment", "{}", 200, 24))
        runner.commit()
        writer.commit()
        row_locker.commit()
    assert held_by_runner == [], f"the run must hold no lock on the table or its indexes: {held_by_runner}"
