"""The files through the real psql binary: up, down, re-run, and runs cut off part way.

States the files move between: nothing (S0), 045 applied (S1), 045 and 046 applied (S2), and 047
too (S3).
Every catalog is compared with the one the same files leave when a driver applies them
(helpers.migration_states), so psql and a migration runner provably build the same thing.

A run cut off part way (a syntax error, or the connection terminated) leaves:
- with `-1` (--single-transaction): nothing of that file;
- without it: exactly the statements before the cut, each committed on its own. Running
  the real file again completes it, and the down files remove whatever is there.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests import deployers, helpers
from tooling.servers import Server

# psql's exit status (psql(1), "Exit Status").
EXIT_SCRIPT_ERROR = 3  # an error in a script with ON_ERROR_STOP set
EXIT_CONNECTION_LOST = 2  # the connection to the server went bad in a non-interactive session


@dataclasses.dataclass(frozen=True)
class Step:
    """One file, the files applied before it, and the state indexes it moves between."""

    path: Path
    setup: tuple[Path, ...]
    before: int
    after: int

    def __str__(self) -> str:
        return self.path.name


STEPS = (
    Step(helpers.UP_045, (), 0, 1),
    Step(helpers.UP_046, (helpers.UP_045,), 1, 2),
    Step(helpers.UP_047, (helpers.UP_045, helpers.UP_046), 2, 3),
    Step(helpers.DOWN_047, (helpers.UP_045, helpers.UP_046, helpers.UP_047), 3, 2),
    Step(helpers.DOWN_046, (helpers.UP_045, helpers.UP_046), 2, 1),
    Step(helpers.DOWN_045, (helpers.UP_045,), 1, 0),
)


def run_psql(server: Server, db: str, *args: str) -> subprocess.CompletedProcess[str]:
    return helpers.psql(server, db, "-v", "ON_ERROR_STOP=1", *args)


def run_file(server: Server, db: str, path: Path, *, single: bool) -> subprocess.CompletedProcess[str]:
    return run_psql(server, db, *(["--single-transaction"] if single else []), "-f", str(path))


def assert_ok(result: subprocess.CompletedProcess[str], what: str) -> None:
    assert result.returncode == 0, f"{what}: psql exited {result.returncode}:\n{result.stderr}"
    assert "ERROR" not in result.stderr, f"{what}: psql reported an error:\n{result.stderr}"


def wrapper(directory: Path, name: str, paths: tuple[Path, ...], between: str = "") -> Path:
    """A script that includes other files with \\i (quoted: paths may hold spaces)."""
    lines = []
    for index, path in enumerate(paths):
        if index and between:
            lines.append(between)
        lines.append(f"\\i '{path}'")
    script = directory / name
    script.write_text("\n".join(lines) + "\n")
    return script


def write_statements(path: Path, statements: list[str]) -> Path:
    path.write_text("".join(f"{statement};\n\n" for statement in statements))
    return path


def prefix_snapshot(conn: psycopg.Connection, statements: list[str]) -> helpers.Snapshot:
    """The catalog after the first statements of a file, each committed on its own,
    computed with a driver inside a transaction that is then rolled back."""
    with conn.transaction():
        for statement in statements:
            conn.execute(statement)
        snapshot = helpers.catalog_snapshot(conn)
        raise psycopg.Rollback()
    return snapshot  # pragma: no cover - psycopg.Rollback leaves the block above without error


def cut_points(step: Step) -> list[int]:
    """After how many statements a run can be cut with some before and some after."""
    return list(range(1, len(helpers.split_statements(step.path.read_text()))))


MODES = ("-f", "--single-transaction -f", "\\i from a wrapper")


@pytest.mark.parametrize("mode", MODES)
def test_up_then_down_through_psql_builds_and_removes_the_schema(
    target: deployers.Target, tmp_path: Path, mode: str
) -> None:
    states = helpers.migration_states(target.conn)
    if mode == "\\i from a wrapper":
        up = wrapper(tmp_path, "up.sql", helpers.UP_FILES)
        down = wrapper(tmp_path, "down.sql", helpers.DOWN_FILES)
        assert_ok(run_psql(target.server, target.dbname, "-f", str(up)), "wrapper of the up files")
        assert helpers.catalog_snapshot(target.conn) == states[-1], "the up wrapper must build every migration"
        assert_ok(run_psql(target.server, target.dbname, "-f", str(up)), "wrapper of the up files, again")
        assert helpers.catalog_snapshot(target.conn) == states[-1], "the up wrapper run again must change nothing"
        assert_ok(run_psql(target.server, target.dbname, "-f", str(down)), "wrapper of the down files")
        assert helpers.catalog_snapshot(target.conn) == states[0], "the down wrapper must remove everything"
        return
    single = mode.startswith("--single-transaction")
    for step in STEPS:
        assert_ok(run_file(target.server, target.dbname, step.path, single=single), f"{step} with {mode}")
        assert helpers.catalog_snapshot(target.conn) == states[step.after], f"{step} with {mode}: unexpected catalog"


@pytest.mark.parametrize("single", [False, True], ids=["-f", "-1"])
@pytest.mark.parametrize("step", STEPS, ids=str)
def test_rerunning_a_file_through_psql_changes_nothing(target: deployers.Target, step: Step, single: bool) -> None:
    states = helpers.migration_states(target.conn)
    helpers.apply_all(target.conn, step.setup)
    assert_ok(run_file(target.server, target.dbname, step.path, single=single), f"{step}, first run")
    assert helpers.catalog_snapshot(target.conn) == states[step.after], (
        f"{step}: unexpected catalog after the first run"
    )
    assert_ok(run_file(target.server, target.dbname, step.path, single=single), f"{step}, second run")
    assert helpers.catalog_snapshot(target.conn) == states[step.after], f"{step}: the second run changed the catalog"


def remove_everything_with_psql(server: Server, db: str, conn: psycopg.Connection, empty: helpers.Snapshot) -> None:
    for path in helpers.DOWN_FILES:
        assert_ok(run_file(server, db, path, single=True), f"{path.name} after a run cut off part way")
    assert helpers.catalog_snapshot(conn) == empty, "the down files must remove what a cut-off run left"


def wait_for_sleep(conn: psycopg.Connection, application_name: str, process: subprocess.Popen[str]) -> int:
    """The backend pid of the psql session once it sits in pg_sleep."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND wait_event = 'PgSleep'",
            [application_name],
        ).fetchone()
        if row is not None:
            return int(row[0])
        if process.poll() is not None:
            pytest.fail(f"psql ended before reaching pg_sleep: {process.communicate()}")
        time.sleep(0.02)
    pytest.fail("psql never reached pg_sleep")


def run_and_terminate(server: Server, db: str, script: Path, *, single: bool) -> subprocess.CompletedProcess[str]:
    """Run a script that sleeps part way, and terminate its backend from another session."""
    application_name = f"idempotency_cut_{os.getpid()}_{time.monotonic_ns()}"
    args = [server.tool("psql"), "--no-psqlrc", "--quiet", "-v", "ON_ERROR_STOP=1", "-d", server.conninfo(db)]
    args += [*(["--single-transaction"] if single else []), "-f", str(script)]
    env = server.client_env({**os.environ, "PGAPPNAME": application_name})
    with subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            with server.connect(db, autocommit=True) as other:
                pid = wait_for_sleep(other, application_name, process)
                terminated = other.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()
                assert terminated == (True,), f"could not terminate backend {pid}"
            stdout, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def broken_copy(directory: Path, step: Step, statements: list[str], k: int) -> Path:
    """The file with a line that is not SQL after its first `k` statements."""
    return write_statements(directory / step.path.name, [*statements[:k], "THIS IS NOT SQL", *statements[k:]])


def sleeping_copy(directory: Path, step: Step, statements: list[str], k: int) -> Path:
    """The file's first `k` statements, a pg_sleep, then the rest, from a wrapper."""
    head = write_statements(directory / "head.sql", statements[:k])
    tail = write_statements(directory / "tail.sql", statements[k:])
    return wrapper(directory, "cut.sql", (head, tail), between="SELECT pg_sleep(60);")


def after_the_first_statement(step: Step) -> list[int]:
    """Each file's first statement marks its checks in the session; the second makes every change
    of the file, so the prefix changes no catalog row."""
    return [1]


@dataclasses.dataclass(frozen=True)
class Cut:
    """A way a psql run stops part way: the script it runs, how, and what psql says."""

    name: str
    what: str
    script: Callable[[Path, Step, list[str], int], Path]
    run: Callable[..., subprocess.CompletedProcess[str]]  # (server, db, script, *, single)
    points: Callable[[Step], list[int]]  # after how many statements of a file it cuts the run
    exit_code: int
    reported: str  # what psql's exit code means
    stderr: str  # what psql prints


CUTS = (
    Cut(
        "error",
        "failed file",
        broken_copy,
        run_file,
        cut_points,
        EXIT_SCRIPT_ERROR,
        "psql must stop at the syntax error",
        'syntax error at or near "THIS"',
    ),
    Cut(
        "cut",
        "terminated run",
        sleeping_copy,
        run_and_terminate,
        after_the_first_statement,
        EXIT_CONNECTION_LOST,
        "psql must report the lost connection",
        "terminating connection due to administrator command",
    ),
)
CUT_CASES = [(cut, step, k) for cut in CUTS for step in STEPS for k in cut.points(step)]


@pytest.mark.parametrize("single", [False, True], ids=["-f", "-1"])
@pytest.mark.parametrize(("cut", "step", "k"), CUT_CASES, ids=[f"{s}-{c.name}-after-{k}" for c, s, k in CUT_CASES])
def test_a_run_cut_off_leaves_nothing_with_single_transaction_and_a_completable_prefix_without(
    target: deployers.Target, tmp_path: Path, cut: Cut, step: Step, k: int, single: bool
) -> None:
    """After a run of `step` cut after `k` statements: with -1 nothing is left, without it exactly
    those statements; running the file again completes it; and from the same cut-off state (the
    cut run again, exiting as it did), the down files remove everything."""
    states = helpers.migration_states(target.conn)
    statements = helpers.split_statements(step.path.read_text())
    script = cut.script(tmp_path, step, statements, k)
    helpers.apply_all(target.conn, step.setup)
    expected = states[step.before] if single else prefix_snapshot(target.conn, statements[:k])

    result = cut.run(target.server, target.dbname, script, single=single)
    assert result.returncode == cut.exit_code, f"{cut.reported}: {result.stderr}"
    assert cut.stderr in result.stderr, result.stderr
    left = "nothing" if single else f"exactly its first {k} statements"
    assert helpers.catalog_snapshot(target.conn) == expected, (
        f"with{'' if single else 'out'} -1 a {cut.what} must leave {left}"
    )
    assert_ok(run_file(target.server, target.dbname, step.path, single=single), f"{step} re-run after the {cut.what}")
    assert helpers.catalog_snapshot(target.conn) == states[step.after], f"re-running {step} must complete it"
    helpers.apply_all(target.conn, helpers.DOWN_FILES)
    helpers.apply_all(target.conn, step.setup)
    assert cut.run(target.server, target.dbname, script, single=single).returncode == cut.exit_code
    remove_everything_with_psql(target.server, target.dbname, target.conn, states[0])
