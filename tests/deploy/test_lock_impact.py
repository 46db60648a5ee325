"""What each migration file locks on idempotency_records, as the guide's "Lock impact" table says.

Each file runs in one transaction (as `psql -1` and every runner do); before it commits, the
test reads the locks its own backend holds on the table, its indexes and its TOAST relations
(pg_locks, relation locks only). Locks are held until the commit, so that is every lock the file
took. The guide's table is compared with what was measured, row by row.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from tests.helpers import DOWN_045, DOWN_046, DOWN_047, ROOT, UP_045, UP_046, UP_047
from tooling.servers import Server

GUIDE = ROOT / "docs" / "README_IDEMPOTENCY.md"

# Every relation of the table: itself, its indexes, its TOAST table and TOAST index.
RELATIONS = """
    SELECT c.oid FROM pg_class AS c WHERE c.oid = 'idempotency_records'::regclass
    UNION ALL SELECT i.indexrelid FROM pg_index AS i WHERE i.indrelid = 'idempotency_records'::regclass
    UNION ALL SELECT c.reltoastrelid FROM pg_class AS c WHERE c.oid = 'idempotency_records'::regclass
    UNION ALL SELECT i.indexrelid FROM pg_index AS i JOIN pg_class AS c ON c.reltoastrelid = i.indrelid
        WHERE c.oid = 'idempotency_records'::regclass
"""
MODES = {
    "AccessShareLock": "ACCESS SHARE",
    "RowExclusiveLock": "ROW EXCLUSIVE",
    "ShareUpdateExclusiveLock": "SHARE UPDATE EXCLUSIVE",
    "ShareLock": "SHARE",
    "AccessExclusiveLock": "ACCESS EXCLUSIVE",
}


def _relations(conn: psycopg.Connection) -> set[int]:
    if conn.execute("SELECT to_regclass('idempotency_records')").fetchone() == (None,):
        return set()
    return {row[0] for row in conn.execute(RELATIONS) if row[0]}


def locks_taken(conn: psycopg.Connection, text: str) -> set[str]:
    """The lock modes the file takes, held until its commit, on the table's relations that existed
    before it ran (an index it creates is invisible to other sessions until the commit)."""
    before = _relations(conn)
    with conn.transaction():
        conn.execute(text)
        rows = conn.execute(
            "SELECT mode FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'relation' AND relation = ANY(%s)",
            (list(before),),
        ).fetchall()
    return {MODES[mode] for (mode,) in rows}


def guide_table() -> dict[tuple[str, str], set[str]]:
    """The rows of the guide's lock table: (file, run) -> lock modes named in the locks cell."""
    section = GUIDE.read_text().split("## Lock impact\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[tuple[str, str], set[str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            found = re.findall(
                r"`(ACCESS EXCLUSIVE|SHARE UPDATE EXCLUSIVE|SHARE|ROW EXCLUSIVE|ACCESS SHARE)`", cells[2]
            )
            rows[(cells[0].strip("`"), cells[1])] = set(found)
    return rows


@pytest.fixture
def measured(empty_conn: psycopg.Connection) -> Iterator[dict[tuple[str, str], set[str]]]:
    conn = empty_conn
    found: dict[tuple[str, str], set[str]] = {}
    with conn.transaction():
        conn.execute(UP_045.read_text())
        created = _relations(conn)
        rows = conn.execute(
            "SELECT mode FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'relation' AND relation = ANY(%s)",
            (list(created),),
        ).fetchall()
    found[("045", "first apply")] = {MODES[mode] for (mode,) in rows}
    found[("045", "again, complete")] = locks_taken(conn, UP_045.read_text())
    conn.execute("DROP INDEX idx_idempotency_operation")
    found[("045", "again, an index missing")] = locks_taken(conn, UP_045.read_text())
    found[("046", "first apply")] = locks_taken(conn, UP_046.read_text())
    found[("046", "again")] = locks_taken(conn, UP_046.read_text())
    found[("047", "first apply")] = locks_taken(conn, UP_047.read_text())
    found[("047", "again, complete")] = locks_taken(conn, UP_047.read_text())
    found[("047.down", "047 applied")] = locks_taken(conn, DOWN_047.read_text())
    found[("047.down", "again")] = locks_taken(conn, DOWN_047.read_text())
    found[("046.down", "any")] = locks_taken(conn, DOWN_046.read_text())
    found[("045.down", "any")] = locks_taken(conn, DOWN_045.read_text())
    yield found


def test_the_guide_states_the_locks_each_file_takes(measured: dict[tuple[str, str], set[str]]) -> None:
    stated = guide_table()
    assert stated.keys() == measured.keys(), (
        f"the guide's rows {sorted(stated)} are the runs measured {sorted(measured)}"
    )
    for key, modes in measured.items():
        assert stated[key] == modes, f"{key}: the guide says {sorted(stated[key])}, the file took {sorted(modes)}"


def test_the_down_file_waits_for_readers_and_every_later_session_waits_behind_it(
    pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    """045.down queues behind an open reader; a lookup that comes after queues behind 045.down."""
    with pg_server.connect(database) as reader, pg_server.connect(database) as dropper:
        reader.execute("SELECT count(*) FROM idempotency_records")  # its transaction stays open
        reader_pid = reader.info.backend_pid
        dropper_pid = dropper.info.backend_pid
        failure: list[BaseException] = []

        def drop() -> None:
            try:
                with dropper.transaction():
                    dropper.execute(DOWN_045.read_text())
                    raise psycopg.Rollback()
            except BaseException as error:  # reported to the test thread below
                failure.append(error)

        thread = threading.Thread(target=drop)
        thread.start()
        try:
            _wait_until_blocked(conn, dropper_pid, reader_pid)
            with pg_server.connect(database, autocommit=True) as late:
                late.execute("SET lock_timeout = '50ms'")
                with pytest.raises(psycopg.errors.LockNotAvailable):
                    late.execute("SELECT 1 FROM idempotency_records LIMIT 1")
            blocked = conn.execute("SELECT pg_blocking_pids(%s)", (dropper_pid,)).fetchone()
            assert blocked is not None and reader_pid in blocked[0], "045.down still waits on the reader"
        finally:
            reader.rollback()
            thread.join(timeout=60)
        assert not failure, failure
    assert conn.execute("SELECT to_regclass('idempotency_records') IS NOT NULL").fetchone() == (True,)


def _wait_until_blocked(conn: psycopg.Connection, pid: int, by: int) -> None:
    """Poll pg_blocking_pids until `pid` waits on `by` (no timing is asserted)."""
    for _ in range(6000):
        row = conn.execute("SELECT %s = ANY(pg_blocking_pids(%s))", (by, pid)).fetchone()
        if row == (True,):
            return
        conn.execute("SELECT pg_sleep(0.01)")
    raise AssertionError(f"session {pid} never waited on {by}")


def test_grants_are_lost_when_the_table_is_dropped_and_created_again(conn: psycopg.Connection) -> None:
    role = f"idempotency_test_app_locks_{os.getpid()}"
    conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    try:
        conn.execute(sql.SQL("GRANT SELECT, INSERT ON idempotency_records TO {}").format(sql.Identifier(role)))
        conn.execute("REVOKE EXECUTE ON FUNCTION cleanup_expired_idempotency_records() FROM PUBLIC")
        for path in (UP_045, UP_046):  # applied again: grants kept
            conn.execute(path.read_text())
        privileges = (
            "SELECT has_table_privilege(%s, 'idempotency_records', 'INSERT'),"
            " has_function_privilege('public', 'cleanup_expired_idempotency_records()', 'EXECUTE')"
        )
        assert conn.execute(privileges, (role,)).fetchone() == (True, False), "re-applying keeps the grants"
        for path in (DOWN_046, DOWN_045, UP_045, UP_046):
            conn.execute(path.read_text())
        assert conn.execute(privileges, (role,)).fetchone() == (False, True), (
            "down then up: the role lost its grants and PUBLIC has EXECUTE again"
        )
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
