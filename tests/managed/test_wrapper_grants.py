"""The immutable role's SECURITY DEFINER wrapper (docs/privileges.md) made by a managed service's
admin, who owns the table but is no superuser. ALTER FUNCTION ... OWNER TO the maintenance role
takes membership in that role, then CREATE on the schema for it: the block as the page printed it
before ("as the table's owner (or a superuser)") fails with 42501 on each in turn; the block as
printed now, which grants both first, runs as the admin, and the immutable role cleans up through
the wrapper."""

from __future__ import annotations

from collections.abc import Iterable

import psycopg
import pytest
from psycopg import sql

from tests.docblocks import block_with
from tests.managed_service import Managed, run_as_login
from tests.roles import maintenance_wrapper
from tooling import records

IMMUTABLE_ROLE = "CREATE ROLE jive_api_immutable LOGIN"
WRAPPER = "CREATE OR REPLACE FUNCTION idempotency_cleanup_as_maintenance()"
THROUGH_THE_WRAPPER = "SELECT deleted_count FROM idempotency_cleanup_as_maintenance();"
# The block as docs/privileges.md printed it before, without the two grants it needs there: the
# maintenance role made if missing, then the wrapper set up as the privileges tests set it up as a
# superuser, for the guide's immutable role.
OLD_WRAPPER = (
    """
DO $create$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'jive_maintenance') THEN
        CREATE ROLE jive_maintenance NOLOGIN;
    END IF;
END
$create$
""",
    *maintenance_wrapper("jive_maintenance", "jive_api_immutable"),
)


@pytest.fixture
def installed(managed: Managed) -> Managed:
    """045 and 046 applied by the admin, the guide's immutable role made by it."""
    managed.install()
    with managed.connect() as conn:
        run_as_login(conn, block_with(IMMUTABLE_ROLE))
    return managed


def failure(conn: psycopg.Connection, statements: Iterable[str | sql.Composable]) -> psycopg.Error | None:
    """Run the statements in turn, as psql with ON_ERROR_STOP does; the first error."""
    for statement in statements:
        try:
            conn.execute(statement)
        except psycopg.Error as error:
            return error
    return None


def test_the_block_as_printed_before_fails_twice_as_a_non_superuser_owner(installed: Managed) -> None:
    with installed.connect() as conn:
        first = failure(conn, OLD_WRAPPER)
        assert first is not None and first.sqlstate == "42501", f"42501, got {first}"
        assert first.diag.message_primary == 'must be member of role "jive_maintenance"', first.diag.message_primary
        conn.execute("GRANT jive_maintenance TO CURRENT_USER")
        second = failure(conn, OLD_WRAPPER)
        assert second is not None and second.sqlstate == "42501", f"42501, got {second}"
        assert second.diag.message_primary == "permission denied for schema public", second.diag.message_primary


def test_the_documented_block_runs_as_the_admin_and_the_wrapper_cleans_up(installed: Managed) -> None:
    with installed.connect() as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
        block = block_with(WRAPPER)
        run_as_login(conn, block)
        run_as_login(conn, block)  # and again: the admin stays a member, so it may replace the wrapper
        owner = conn.execute(
            "SELECT pg_get_userbyid(proowner), prosecdef FROM pg_proc WHERE proname = 'idempotency_cleanup_as_maintenance'"
        ).fetchone()
        assert owner == ("jive_maintenance", True), f"a SECURITY DEFINER function of jive_maintenance: {owner}"
        can_create = conn.execute("SELECT has_schema_privilege('jive_maintenance', 'public', 'CREATE')").fetchone()
        assert can_create == (False,), "the maintenance role's right to create in the schema was taken back"
        records.insert(conn, records.expired(operation="transfer"))
    installed.login("jive_api_immutable")
    with installed.connect("jive_api_immutable") as immutable:
        cleaned = run_as_login(immutable, block_with(THROUGH_THE_WRAPPER))
    assert cleaned is not None and cleaned.rows == (("1",),), (
        f"the immutable role deleted the expired record: {cleaned}"
    )
