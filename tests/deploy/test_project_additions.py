"""What a project may add to the table in its own later migrations, without changing what the
contract promises, stays: re-applying 045, 046 and 047 accepts it and changes nothing (045 not even
a catalog row's version), and the verification script still passes. The state is
tests/fixtures/verify_passes/project_additions.sql (a nullable column, a NOT NULL column with a
built-in default, a non-unique and a partial index, storage parameters of the table and of an
index, a statistics target, a column option), so that the files and the script agree on what is
the contract; tests/verify/test_drift.py has what both refuse.
"""

from __future__ import annotations

import psycopg

from tests import deployers, verification
from tests.helpers import UP_045, UP_046, UP_047, apply, catalog_snapshot
from tooling.servers import Server


def test_reapplying_the_files_keeps_a_projects_own_additions(
    pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    verification.load_fixture(conn, "project_additions", verification.PASSING)
    before = catalog_snapshot(conn), deployers.catalog_versions(conn)
    apply(conn, UP_045)
    assert (catalog_snapshot(conn), deployers.catalog_versions(conn)) == before, "045 changed something"
    apply(conn, UP_046)  # CREATE OR REPLACE writes the function's row again, as on any install
    assert catalog_snapshot(conn) == before[0], "046 changed the catalog"
    apply(conn, UP_047)  # CREATE OR REPLACE, as 046
    assert catalog_snapshot(conn) == before[0], "047 changed the catalog"
    run = verification.run_script(pg_server, database)
    assert run.returncode == 0 and not run.not_ok, f"the script passes after the re-apply\n{run.describe()}"
