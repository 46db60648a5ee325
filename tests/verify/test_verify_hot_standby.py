"""On a hot standby (a server in recovery, read-only) the verification script runs every catalog
check, prints the behaviour tests as skipped with the reason, and exits 0 when the catalog is
right; with catalog_only=1 too. The standby is a real one: a migrated server stopped cleanly and
started again with standby.signal, which keeps it in recovery, accepting read-only sessions."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from psycopg import sql

from tests import verification
from tests.helpers import UP_FILES, apply
from tooling import servers

DBNAME = "idempotency_test_standby"


@pytest.fixture(scope="module")
def standby() -> Iterator[servers.Server]:
    datadir = servers.throwaway_datadir("idempotency-standby-")
    local = servers.LocalServer(datadir)
    try:
        local.initdb()
        local.start()
        primary = local.server()
        with primary.connect(autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DBNAME)))
        with primary.connect(DBNAME, autocommit=True) as conn:
            for path in UP_FILES:
                apply(conn, path)
        local.stop("fast")
        signal = os.open(datadir / "standby.signal", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.close(signal)
        if local.as_user:
            os.chown(datadir / "standby.signal", local.owner, -1)
        local.start()
        server = local.server()
        with server.connect(DBNAME) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        assert row == (True,), "the server must be in recovery: a hot standby"
        yield server
    finally:
        local.stop("immediate")
        shutil.rmtree(datadir.parent, ignore_errors=True)


@pytest.mark.parametrize("variables", [(), ("catalog_only=1",)], ids=["full", "catalog_only"])
def test_a_hot_standby_runs_the_catalog_checks_and_skips_the_behaviour_tests(
    standby: servers.Server, variables: tuple[str, ...]
) -> None:
    run = verification.run_script(standby, DBNAME, *variables)
    verification.assert_passes(run, behaviour=False)
    reason = "catalog_only is set" if variables else "a hot standby (in recovery)"
    assert all(reason in text for text in run.skipped), run.describe()
