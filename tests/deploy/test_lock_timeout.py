"""One lock-timeout story: every lock a file of sql/ takes waits at most lock_timeout, the session's
or else 2 s, which the file sets for its own transaction in the statement that takes the locks, so
that it holds with and without -1. The same 2 s is the Makefile's LOCK_TIMEOUT, and every psql line
of the docs sets it (PGOPTIONS); the guide states the rule once.

Before, three stories ran side by side: the files' 2 s, `make migrate`'s 5 s, and docs that set
5 s on some psql lines and nothing on others (the Rollback's, the README's). A timeout set in a
statement of its own, as a file's first statement, lasts that statement only without -1 (the
counter-example below): the statement that builds an index then waits with no limit.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from tests import deployers, helpers
from tests.deployers import PLAIN, SINGLE, Target
from tests.docblocks import DOCUMENTS, parse_shells, prose, shown
from tests.helpers import ROOT, SQL_DIR

DEFAULT = "2s"
SETS_DEFAULT = re.compile(r"set_config\('lock_timeout', '([^']+)', TRUE\)")
PSQL = re.compile(r"(^|[\s;|&(])psql\s")
CARRIES = f"PGOPTIONS='-c lock_timeout={DEFAULT}"


def test_every_file_sets_the_same_default_and_says_so() -> None:
    for path in sorted(SQL_DIR.glob("*.sql")):
        text = path.read_text()
        values = set(SETS_DEFAULT.findall(text))
        assert values == {DEFAULT}, f"{path.name} sets lock_timeout {values or 'nowhere'}, expected {DEFAULT}"
        apply = re.search(r"^-- Apply: +(.*)$", text, re.MULTILINE)
        assert apply and apply.group(1).startswith(f"PGOPTIONS='-c lock_timeout={DEFAULT}' psql"), (
            f"{path.name}: its Apply line carries the lock timeout"
        )


def test_the_makefile_and_the_guide_tell_the_same_story() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^LOCK_TIMEOUT \?= {DEFAULT}$", makefile, re.MULTILINE), "make migrate/rollback: 2s"
    guide = prose()
    assert guide.count("**The lock timeout, one rule.**") == 1, "the guide states the rule once"
    squawk = (ROOT / ".squawk.toml").read_text()
    assert f"sets its own lock_timeout ({DEFAULT} where the session has none" in " ".join(squawk.split())
    for path in (*DOCUMENTS, ROOT / "Makefile"):
        others = sorted(set(re.findall(r"-c lock_timeout=(\w+)", path.read_text())) - {DEFAULT})
        assert not others, f"{shown(path)} gives psql another lock timeout: {others}"


def commands(text: str) -> list[str]:
    """The shell commands of a block, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_every_psql_line_of_the_docs_carries_the_lock_timeout() -> None:
    lines = [
        (shell.where, command)
        for path in DOCUMENTS
        for shell in parse_shells(path)
        for command in commands(shell.text)
        if PSQL.search(command)
    ]
    assert len(lines) >= 20, f"the docs' psql lines were found: {len(lines)}"
    missing = [f"{where}: {command}" for where, command in lines if CARRIES not in command]
    assert not missing, "psql lines without PGOPTIONS='-c lock_timeout=2s':\n" + "\n".join(missing)


# The states a file meets a held lock in: the files before it applied, and a session that holds
# a lock the file's own would wait for. Files that take no lock on the table go through.
HELD = {
    # an open write: the ROW EXCLUSIVE lock a missing index's build (SHARE) waits for
    "045_create_idempotency_records.sql": "INSERT INTO idempotency_records (request_id, operation, result_payload, "
    "expires_at) VALUES (gen_random_uuid(), 'payment', '{}', now() + INTERVAL '1 day')",
}
EVERY_LOCK = "LOCK TABLE idempotency_records IN ACCESS EXCLUSIVE MODE"


def before(conn: psycopg.Connection, path: Path) -> None:
    """The database as the file meets it in `make migrate` or `make rollback`."""
    if path in helpers.UP_FILES:
        helpers.apply_all(conn, helpers.UP_FILES[: helpers.UP_FILES.index(path)])
        if path == helpers.UP_045:  # a complete install but for an index, so that 045 must lock
            helpers.apply(conn, path)
            conn.execute("DROP INDEX idx_idempotency_operation")
    else:
        helpers.apply_all(conn, helpers.UP_FILES)
        helpers.apply_all(conn, helpers.DOWN_FILES[: helpers.DOWN_FILES.index(path)])


@pytest.mark.parametrize("mode", [PLAIN, SINGLE], ids=["psql -f", "psql -1 -f"])
@pytest.mark.parametrize("path", [*helpers.UP_FILES, *helpers.DOWN_FILES], ids=lambda p: p.name)
def test_every_file_waits_for_a_held_lock_at_most_its_default(target: Target, path: Path, mode: str) -> None:
    """No lock_timeout in the session (PGOPTIONS empty): the file either takes no lock the holder
    blocks and completes, or fails with 55P03 after its own 2 s, changing nothing, with -1 or not."""
    before(target.conn, path)
    start = helpers.catalog_snapshot(target.conn)
    with target.server.connect(target.dbname) as holder:
        exists = holder.execute("SELECT to_regclass('idempotency_records') IS NOT NULL").fetchone() == (True,)
        if exists:
            holder.execute(HELD.get(path.name, EVERY_LOCK))
        started = time.monotonic()
        try:
            run = deployers.run_psql(target.server, target.dbname, mode, "-f", str(path), options="")
        finally:
            holder.rollback()
        took = time.monotonic() - started
    if run.failed:
        assert run.sqlstates[:1] == ["55P03"], f"{path.name}: the only failure is a lock timeout\n{run.output}"
        assert "lock timeout" in run.first_error(), run.output
        assert helpers.catalog_snapshot(target.conn) == start, f"{path.name}: a timed-out file changes nothing"
    else:
        assert run.returncode == 0, run.output
    assert took < 60, f"{path.name} waited {took:.0f} s"


def test_a_timeout_set_in_a_statement_of_its_own_lasts_that_statement_only_without_minus_1(target: Target) -> None:
    """Why each file sets it inside the statement that takes its locks: set in a statement of its
    own (SET LOCAL, or set_config(..., TRUE) in a DO block), it is gone by the next statement
    unless the whole file runs in one transaction."""
    script = (
        "DO $$BEGIN PERFORM set_config('lock_timeout', '2s', TRUE); END$$;\n"
        "SELECT current_setting('lock_timeout') AS in_the_next_statement;\n"
    )
    for mode, expected in ((PLAIN, "0"), (SINGLE, "2s")):
        run = deployers.run_psql(target.server, target.dbname, mode, "-At", options="", stdin=script)
        assert run.output.split()[-1] == expected, f"{mode}: {run.output}"


def test_killing_psql_does_not_end_the_wait_the_lock_timeout_does(target: Target) -> None:
    """The guide's Lock impact: psql killed while 045.down waits behind a reader, the server keeps
    the statement waiting until the lock timeout ends it; the table is still there."""
    helpers.apply_all(target.conn, helpers.UP_FILES)
    helpers.apply_all(target.conn, helpers.DOWN_FILES[: helpers.DOWN_FILES.index(helpers.DOWN_045)])
    with target.server.connect(target.dbname) as reader:
        reader.execute("SELECT count(*) FROM idempotency_records")  # ACCESS SHARE, held
        command = deployers.psql_command(target.server, target.dbname, PLAIN, "-f", str(helpers.DOWN_045))
        env = {**target.server.client_env(), "PGOPTIONS": "-c lock_timeout=4s", "PGAPPNAME": "rollback"}
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        waiting = "SELECT pid FROM pg_stat_activity WHERE application_name = 'rollback' AND wait_event_type = 'Lock'"
        deadline = time.monotonic() + 4
        pid = None
        while pid is None and time.monotonic() < deadline:
            row = target.conn.execute(waiting).fetchone()
            pid = row[0] if row else None
            time.sleep(0.02)
        assert pid is not None, "045.down waits for the reader's lock"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        still = target.conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        assert still == (1,), "with psql gone, the server's statement still waits"
        deadline = time.monotonic() + 30
        while target.conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() != (0,):
            assert time.monotonic() < deadline, "the lock timeout ended it"
            time.sleep(0.1)
        reader.rollback()
    assert helpers.has_table(target.conn, "idempotency_records"), "nothing was dropped"
