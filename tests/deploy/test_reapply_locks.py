"""Re-applying a complete 045 and 046 on a live database takes no lock that blocks the
application: with one application transaction holding a row lock and another write transaction
open, the re-run never waits, and a save made while the re-run's transaction is still open is not
blocked by it.

"Never waits" is asserted exactly, without timing: the re-run runs with a lock_timeout of 1 ms
while both application transactions stay open for its whole duration, so any lock it requested
that conflicts with theirs would fail it with 55P03. The save runs the same way while the re-run's
transaction is open, and the re-run's locks on the table are read from pg_locks.
"""

from __future__ import annotations

import uuid

import psycopg

from tests.helpers import UP_FILES
from tests.statements import REPORT_SAVE
from tooling.records import save_params
from tooling.servers import Server

TABLE_AND_INDEXES = """
SELECT c.relname, l.mode
FROM pg_locks AS l
JOIN pg_class AS c ON c.oid = l.relation
WHERE l.pid = %s AND l.locktype = 'relation'
  AND (c.oid = 'idempotency_records'::regclass
       OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'idempotency_records'::regclass))
ORDER BY 1, 2
"""


def _save(conn: psycopg.Connection, key: str) -> None:
    conn.execute(REPORT_SAVE, save_params(key, "payment", "{}", 201, 24))


def test_reapplying_045_and_046_waits_for_no_application_transaction_and_blocks_no_save(
    pg_server: Server, database: str
) -> None:
    held, stored = str(uuid.uuid4()), str(uuid.uuid4())
    with (
        pg_server.connect(database, autocommit=True) as setup,
        pg_server.connect(database) as row_locker,
        pg_server.connect(database) as writer,
        pg_server.connect(database) as runner,
        pg_server.connect(database, autocommit=True) as saver,
    ):
        _save(setup, held)
        _save(setup, stored)
        # Application transaction 1 holds a row lock; transaction 2 has written and stays open.
        row_locker.execute("SELECT 1 FROM idempotency_records WHERE request_id = %s FOR UPDATE", (held,))
        _save(writer, str(uuid.uuid4()))

        # Control: the old re-run, CREATE INDEX IF NOT EXISTS, does conflict with the open writer.
        runner.execute("SET lock_timeout = '1ms'")
        control = None
        try:
            runner.execute("CREATE INDEX IF NOT EXISTS idx_idempotency_expires ON idempotency_records (expires_at)")
        except psycopg.errors.LockNotAvailable as error:
            control = error
        runner.rollback()
        assert control is not None, "the setup must make a SHARE lock on the table wait"

        # The re-run, as a runner does it: both files in its transaction, which stays open.
        # With lock_timeout 1 ms, any conflicting lock it asked for would fail it with 55P03.
        runner.execute("SET lock_timeout = '1ms'")
        for path in UP_FILES:
            runner.execute(path.read_text())
        runner_pid = runner.info.backend_pid
        held_by_runner = setup.execute(TABLE_AND_INDEXES, (runner_pid,)).fetchall()

        # Saves (an insert and an update of a stored key) while the re-run's transaction is
        # open, with lock_timeout 1 ms: waiting on the runner's pid would fail them with 55P03.
        saver.execute("SET lock_timeout = '1ms'")
        _save(saver, str(uuid.uuid4()))
        _save(saver, stored)
        runner.commit()
        writer.commit()
        row_locker.commit()

    assert held_by_runner == [], f"a complete re-run must hold no lock on the table or its indexes: {held_by_runner}"
