"""What 047 and its down file lock on idempotency_records, as docs/protocol.md's lock table says:
read from pg_locks inside each file's own transaction (locks are held to the commit). A first
apply waits at most lock_timeout and then changes nothing; applying a complete 047 again, or
its down file where there is nothing left to drop, takes no lock at all.

"No lock" is asserted exactly, as tests/test_reapply_locks.py does: the file runs with a
lock_timeout of 1 ms while an application transaction holds a row lock and another has written
and stays open, so any lock it asked for that conflicts with theirs would fail it with 55P03."""

from __future__ import annotations

import re
import uuid

import psycopg
import pytest

from tests.helpers import REPORT_SAVE, catalog_snapshot
from tests.protocol.library import PAGE, PROTOCOL_DOWN, PROTOCOL_UP, apply_protocol, claim
from tests.test_lock_impact import MODES, RELATIONS
from tooling.servers import Server


def locks_taken(conn: psycopg.Connection, text: str) -> set[str]:
    """The lock modes a file takes on the table's relations that existed before it ran."""
    relations = [row[0] for row in conn.execute(RELATIONS) if row[0]]
    with conn.transaction():
        conn.execute(text)
        rows = conn.execute(
            "SELECT mode FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'relation' AND relation = ANY(%s)",
            (relations,),
        ).fetchall()
    return {MODES[mode] for (mode,) in rows}


def page_table() -> dict[tuple[str, str], set[str]]:
    """The rows of docs/protocol.md's lock table: (file, run) -> lock modes in the locks cell."""
    section = PAGE.read_text().split("### Lock impact\n", 1)[1].split("\n#", 1)[0]
    rows: dict[tuple[str, str], set[str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows[(cells[0].strip("`"), cells[1])] = set(
                re.findall(r"`(ACCESS EXCLUSIVE|SHARE UPDATE EXCLUSIVE|SHARE|ROW EXCLUSIVE|ACCESS SHARE)`", cells[2])
            )
    return rows


def test_the_page_states_what_each_run_locks(conn: psycopg.Connection) -> None:
    measured = {
        ("047", "first apply"): locks_taken(conn, PROTOCOL_UP.read_text()),
        ("047", "again, complete"): locks_taken(conn, PROTOCOL_UP.read_text()),
        ("047.down", "047 applied"): locks_taken(conn, PROTOCOL_DOWN.read_text()),
        ("047.down", "again"): locks_taken(conn, PROTOCOL_DOWN.read_text()),
    }
    assert measured[("047", "first apply")] == {"ACCESS EXCLUSIVE", "SHARE UPDATE EXCLUSIVE"}
    assert measured[("047", "again, complete")] == set()
    assert page_table() == measured, "docs/protocol.md's lock table is what was measured"


def test_the_file_sets_a_lock_timeout_only_where_none_is_set(conn: psycopg.Connection) -> None:
    for session, expected in (("0", "2s"), ("150ms", "150ms")):
        conn.execute(f"SET lock_timeout = '{session}'")
        with conn.transaction():
            conn.execute(PROTOCOL_UP.read_text())
            assert conn.execute("SHOW lock_timeout").fetchone() == (expected,), f"deployer's {session}"
            raise psycopg.Rollback()
        assert conn.execute("SHOW lock_timeout").fetchone() == (session,), "the file's setting ends with it"


def test_a_first_apply_behind_an_open_transaction_fails_at_its_lock_timeout_and_changes_nothing(
    pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    with pg_server.connect(database) as application:
        application.execute(REPORT_SAVE, (uuid.uuid4(), "payment", "{}", 201, 24))  # open, uncommitted
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
    conn.execute(REPORT_SAVE, (held, "payment", "{}", 201, 24))
    conn.execute(REPORT_SAVE, (kept, "payment", "{}", 201, 24))
    with (
        pg_server.connect(database) as row_locker,
        pg_server.connect(database) as writer,
        pg_server.connect(database) as runner,
        pg_server.connect(database, autocommit=True) as saver,
    ):
        row_locker.execute("SELECT 1 FROM idempotency_records WHERE request_id = %s FOR UPDATE", (held,))
        writer.execute(REPORT_SAVE, (uuid.uuid4(), "payment", "{}", 201, 24))
        runner.execute("SET lock_timeout = '1ms'")
        runner.execute(path.read_text())  # type: ignore[attr-defined]
        held_by_runner = conn.execute(
            "SELECT l.mode FROM pg_locks AS l WHERE l.pid = %s AND l.locktype = 'relation' "
            "AND l.relation IN (SELECT oid FROM pg_class WHERE relname LIKE 'idempotency_records%%' "
            "OR relname LIKE 'idx_idempotency_%%')",
            (runner.info.backend_pid,),
        ).fetchall()
        saver.execute("SET lock_timeout = '1ms'")
        saver.execute(REPORT_SAVE, (uuid.uuid4(), "payment", "{}", 201, 24))
        saver.execute(REPORT_SAVE, (kept, "payment", "{}", 200, 24))
        runner.commit()
        writer.commit()
        row_locker.commit()
    assert held_by_runner == [], f"the run must hold no lock on the table or its indexes: {held_by_runner}"
