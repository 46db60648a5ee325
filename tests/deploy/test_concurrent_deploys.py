"""Several deployers applying the files at the same instant (every replica running its
migrations at start) never fail: they take turns on the files' advisory lock, each reads the
catalog as the one before it left it, and the database ends as a fresh migrate leaves it, or
cleanly without the install when a down file raced an up file.

Each race starts 4 or 8 real psql processes, connected and waiting at one barrier (an advisory
lock the test holds until all of them wait on it), then releases them together: with
`-v ON_ERROR_STOP=1 --single-transaction` as the guide runs the files, and plain (no -1, no
ON_ERROR_STOP: every statement its own transaction) as the report's `psql -f` does. The
deployers set a generous lock_timeout of their own, so that a slow machine cannot turn a turn
into a timeout; the default wait and its error are proven separately. 047 and its down file
take the same lock: 047 on 045 and 046, on a complete install, and racing 047.down. Before the lock, 4
deployers of 045 on a fresh database failed 60 runs in 80 with 23505 on pg_type, and of 046 on
a complete install 44 in 80 with XX000 "tuple concurrently updated".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from tests import deployers, helpers, sessions
from tooling.servers import Server

OPTIONS = "-c lock_timeout=60s"


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    start: int  # the state every round starts from: 0 nothing, 1 045 applied, 2 045 and 046, 3 and 047
    plan: Callable[[int], tuple[Path, ...]]  # the files deployer i applies
    ends: tuple[int, ...]  # the states a round may end in
    damage: str | None = None  # run after reaching `start`

    def __str__(self) -> str:
        return self.name


SCENARIOS = [
    Scenario("045-on-a-fresh-database", 0, lambda i: (helpers.UP_045,), (1,)),
    Scenario("046-on-a-complete-install", 3, lambda i: (helpers.UP_046,), (3,)),
    Scenario("045-with-an-index-missing", 3, lambda i: (helpers.UP_045,), (3,), "DROP INDEX idx_idempotency_operation"),
    Scenario("047-on-045-and-046", 2, lambda i: (helpers.UP_047,), (3,)),
    Scenario("047-on-a-complete-install", 3, lambda i: (helpers.UP_047,), (3,)),
    # Up racing down: whichever commits last decides, and either end is whole.
    Scenario("045-racing-045.down", 1, lambda i: (helpers.UP_045,) if i % 2 == 0 else (helpers.DOWN_045,), (0, 1)),
    Scenario("046-racing-046.down", 2, lambda i: (helpers.UP_046,) if i % 2 == 0 else (helpers.DOWN_046,), (1, 2)),
    Scenario("047-racing-047.down", 3, lambda i: (helpers.UP_047,) if i % 2 == 0 else (helpers.DOWN_047,), (2, 3)),
]


def reach(conn: psycopg.Connection, scenario: Scenario) -> None:
    helpers.apply_all(conn, helpers.DOWN_FILES)
    helpers.apply_all(conn, helpers.UP_FILES[: scenario.start])
    if scenario.damage is not None:
        conn.execute(scenario.damage)


def end_state(snapshot: helpers.Snapshot, states: tuple[helpers.Snapshot, ...], allowed: tuple[int, ...]) -> int | None:
    return next((index for index in allowed if snapshot == states[index]), None)


def run_rounds(
    target: deployers.Target, tmp_path: Path, scenario: Scenario, mode: str, deployer_count: int, rounds: int
) -> None:
    conn = target.conn
    states = helpers.migration_states(conn)
    for round_number in range(1, rounds + 1):
        reach(conn, scenario)
        plans = [scenario.plan(i) for i in range(deployer_count)]
        runs = deployers.race(target.server, target.dbname, plans, mode, tmp_path, OPTIONS)
        failed = sum(run.failed for run in runs)
        assert failed == 0, (
            f"{scenario}, {mode}, round {round_number}: {failed} of {deployer_count} runs failed\n"
            f"{deployers.describe(runs)}"
        )
        ended = end_state(helpers.catalog_snapshot(conn), states, scenario.ends)
        assert ended is not None, (
            f"{scenario}, {mode}, round {round_number}: the catalog is none of states {scenario.ends} "
            "(0 nothing, 1 045, 2 045 and 046, 3 and 047)"
        )


@pytest.mark.parametrize("mode", [deployers.SINGLE, deployers.PLAIN])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_four_deployers_at_once_take_turns(
    target: deployers.Target, tmp_path: Path, scenario: Scenario, mode: str
) -> None:
    run_rounds(target, tmp_path, scenario, mode, 4, 2)


@pytest.mark.slow
@pytest.mark.parametrize("deployer_count", [4, 8])
@pytest.mark.parametrize("mode", [deployers.SINGLE, deployers.PLAIN])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_twenty_rounds_of_deployers_at_once_never_fail(
    target: deployers.Target, tmp_path: Path, scenario: Scenario, mode: str, deployer_count: int
) -> None:
    run_rounds(target, tmp_path, scenario, mode, deployer_count, 20)


def test_under_repeatable_read_a_deployer_that_waited_stops_with_40001(
    target: deployers.Target, tmp_path: Path
) -> None:
    """A REPEATABLE READ transaction reads the catalog as its snapshot shows it, taken before
    it waited: the checks stop with 40001 rather than judge what another deployer already
    changed, never with an internal error, and applying the file again succeeds."""
    states = helpers.migration_states(target.conn)
    options = f"{OPTIONS} -c default_transaction_isolation=repeatable\\ read"
    runs = deployers.race(target.server, target.dbname, [(helpers.UP_045,)] * 4, deployers.SINGLE, tmp_path, options)
    outcomes = {run.sqlstates[0] if run.failed else "ok" for run in runs}
    assert outcomes <= {"ok", "40001"}, f"each deployer succeeds or stops with 40001:\n{deployers.describe(runs)}"
    assert "ok" in outcomes, "the first deployer succeeds"
    assert all("changed after this transaction's snapshot" in r.first_error() for r in runs if r.failed)
    again = deployers.run_psql(
        target.server, target.dbname, deployers.SINGLE, "-f", str(helpers.UP_045), options=options
    )
    assert not again.failed, f"applied again, 045 succeeds: {again.output}"
    assert helpers.catalog_snapshot(target.conn) == states[1]


def test_047_waits_for_a_deployer_of_045_and_then_reads_what_it_left(target: deployers.Target) -> None:
    """047 shares the files' lock: run while another session applies 045 and 046 in one open
    transaction, it waits, then finds the table they created and completes the install (without
    the wait it stops with 42P01: the table is not committed yet)."""
    states = helpers.migration_states(target.conn)
    with (
        target.server.connect(target.dbname) as holder,
        target.server.connect(target.dbname, autocommit=True) as other,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        for path in (helpers.UP_045, helpers.UP_046):
            holder.execute(path.read_text())  # its transaction stays open, holding the deploy lock
        other.execute("SET lock_timeout = '60s'")
        waiting = pool.submit(helpers.apply, other, helpers.UP_047)
        try:
            sessions.wait_for_waiters(target.conn, "advisory", 1)
        finally:
            holder.commit()
        waiting.result(timeout=60)
    assert helpers.catalog_snapshot(target.conn) == states[3], "047 applied on what 045 and 046 left"


@pytest.mark.parametrize("lock_timeout", ["100ms", None], ids=["deployer's lock_timeout", "none set: 2s"])
def test_a_deployer_behind_another_waits_at_most_lock_timeout_and_names_it(
    target: deployers.Target, lock_timeout: str | None
) -> None:
    states = helpers.migration_states(target.conn)
    with target.server.connect(target.dbname) as holder:
        holder.execute(helpers.UP_045.read_text())  # its transaction stays open, holding the deploy lock
        pid = holder.info.backend_pid
        options = f"-c lock_timeout={lock_timeout}" if lock_timeout else None
        run = deployers.run_psql(
            target.server, target.dbname, deployers.SINGLE, "-f", str(helpers.UP_045), options=options
        )
        holder.rollback()
    assert run.returncode == 3, f"psql stops at the error: {run.output}"
    assert "55P03: timed out waiting for another deployer of idempotency_records" in run.first_error(), run.output
    waited = lock_timeout or "2s"
    assert f"held by pid {pid} past lock_timeout {waited}" in run.output, f"DETAIL names pid {pid}:\n{run.output}"
    assert helpers.catalog_snapshot(target.conn) == states[0], "the deployer that timed out applied nothing"


@pytest.mark.parametrize("path", [helpers.DOWN_046, helpers.UP_047, helpers.DOWN_047], ids=lambda p: p.name)
def test_every_file_waits_for_a_deployer_of_another(
    pg_server: Server, database: str, conn: psycopg.Connection, path: Path
) -> None:
    """046.down, 047 and 047.down wait while a deployer of 045 holds the lock: the files take turns."""
    with pg_server.connect(database) as holder, pg_server.connect(database, autocommit=True) as other:
        pid = holder.info.backend_pid
        holder.execute(helpers.UP_045.read_text())
        other.execute("SET lock_timeout = '100ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable) as raised:
            helpers.apply(other, path)
        holder.rollback()
    assert f"held by pid {pid}" in (raised.value.diag.message_detail or ""), raised.value
