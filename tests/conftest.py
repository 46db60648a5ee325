"""Server and database lifecycle for the suite.

One server per session: the user's own (DATABASE_URL, PGHOST, PGPORT, PGSERVICE)
or a throwaway local one (tooling/servers.py). On it, a template database with the
up migrations applied; every test that asks for `database` gets its own clone,
dropped afterwards, so tests are independent and run in any order. On a user's
server only databases named idempotency_test_<pid>_* are created and dropped.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator

import psycopg
import pytest
from pytest_postgresql.janitor import DatabaseJanitor

from tests import helpers, roles
from tooling import servers

_names = itertools.count(1)


def _janitor(server: servers.Server, dbname: str, **kwargs: object) -> DatabaseJanitor:
    return DatabaseJanitor(
        user=server.user,
        host=server.host,
        port=server.port,
        password=server.password,
        dbname=dbname,
        maintenance_dbname=server.dbname,
        **kwargs,
    )


def _load_migrations(host: str, port: int, user: str, dbname: str, password: str | None, **kwargs: object) -> None:
    """pytest-postgresql loader: apply the up migrations, each in its own transaction."""
    with psycopg.connect(host=host, port=port, user=user, dbname=dbname, password=password) as conn:
        for path in helpers.UP_FILES:
            helpers.apply(conn, path)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[servers.Server]:
    """The PostgreSQL server the whole session runs against."""
    with servers.session_server("idempotency-test-", in_memory=True) as server:
        yield server


@pytest.fixture(scope="session")
def migrated_template(pg_server: servers.Server) -> Iterator[str]:
    """A template database holding the four up migrations' result."""
    name = f"idempotency_test_{os.getpid()}_template"
    janitor = _janitor(pg_server, name, as_template=True)
    janitor.drop()
    janitor.init()
    janitor.load(_load_migrations)
    try:
        yield name
    finally:
        janitor.drop()


@contextlib.contextmanager
def _throwaway(pg_server: servers.Server, template: str | None) -> Iterator[str]:
    name = f"idempotency_test_{os.getpid()}_{next(_names)}"
    janitor = _janitor(pg_server, name, template_dbname=template)
    janitor.init()
    try:
        yield name
    finally:
        janitor.drop()


@pytest.fixture
def fresh_database(pg_server: servers.Server, migrated_template: str) -> Iterator[Callable[[], str]]:
    """A factory of more fresh migrated databases for one test, all dropped after it."""
    with contextlib.ExitStack() as stack:
        yield lambda: stack.enter_context(_throwaway(pg_server, migrated_template))


@pytest.fixture
def database(pg_server: servers.Server, migrated_template: str) -> Iterator[str]:
    """Name of a fresh database with the migrations applied, dropped after the test."""
    with _throwaway(pg_server, migrated_template) as name:
        yield name


@pytest.fixture
def empty_database(pg_server: servers.Server) -> Iterator[str]:
    """Name of a fresh database with nothing applied, dropped after the test."""
    with _throwaway(pg_server, "template0") as name:
        yield name


@pytest.fixture
def conn(pg_server: servers.Server, database: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to a fresh migrated database."""
    with pg_server.connect(database, autocommit=True) as connection:
        yield connection


@pytest.fixture
def role(conn: psycopg.Connection) -> Iterator[str]:
    """A new role with no privileges, dropped (with its grants on the test's database) after the test."""
    with roles.new_role(conn, roles.unique_name()) as name:
        yield name


@pytest.fixture
def empty_conn(pg_server: servers.Server, empty_database: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to a fresh database with nothing applied."""
    with pg_server.connect(empty_database, autocommit=True) as connection:
        yield connection


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that act as another local user (runuser) need root. Run by another user
    they are deselected, not skipped, and the summary says so; CI runs them as root."""
    if os.geteuid() == 0:
        return
    needs_root = [item for item in items if item.get_closest_marker("needs_root")]
    if needs_root:
        config.hook.pytest_deselected(items=needs_root)
        items[:] = [item for item in items if not item.get_closest_marker("needs_root")]
        config.stash[_NOT_ROOT] = len(needs_root)


_NOT_ROOT = pytest.StashKey[int]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI a skipped test is a failure: a missing tool must never turn CI green."""
    report = yield
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI is set, so a skip fails): {reason}"
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Under pytest-xdist, a worker hands its reliability figures to the controller."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        from tests import figures

        workeroutput["reliability"] = figures.figures()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """Under pytest-xdist, the controller adds up what each worker counted."""
    from tests import figures

    figures.merge(getattr(node, "workeroutput", {}).get("reliability", {}))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The reliability figures (tests/figures.py), when reliability tests ran."""
    from tests import figures

    if os.geteuid() != 0:
        # Under pytest-xdist the workers collect, so only they know how many.
        count = terminalreporter.config.stash.get(_NOT_ROOT, "the")
        terminalreporter.write_line(
            f"{count} tests marked needs_root were deselected: they act as another local user (runuser); "
            "run the suite as root to run them (CI does)"
        )
    lines = figures.summary_lines()
    if lines:
        terminalreporter.write_sep("=", "reliability figures")
        for line in lines:
            terminalreporter.write_line(line)
