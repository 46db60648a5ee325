"""plpgsql_check finds nothing in cleanup_expired_idempotency_records() nor in the four functions
of 047, with the extra, performance, security and compatibility warnings on.

plpgsql_check is packaged here only for Debian's PostgreSQL 15 (postgresql-15-plpgsql-check),
so this module starts its own PostgreSQL 15 server, whatever major the suite runs on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests import helpers
from tooling import servers

CONTROL = Path("/usr/share/postgresql/15/extension/plpgsql_check.control")

# Named arguments of plpgsql_check_function() in plpgsql_check 2.3 (its extension script).
CHECK = """
    SELECT plpgsql_check_function(
        %s::regprocedure,
        format => 'text',
        fatal_errors => FALSE,
        other_warnings => TRUE,
        extra_warnings => TRUE,
        performance_warnings => TRUE,
        security_warnings => TRUE,
        compatibility_warnings => TRUE
    )"""


@pytest.fixture(scope="module")
def pg15_with_plpgsql_check() -> Iterator[servers.Server]:
    if not CONTROL.exists():
        pytest.skip(f"{CONTROL} is absent: install the Debian package postgresql-15-plpgsql-check")
    with servers.throwaway_server("idempotency-plpgsql-check-", "15") as server:
        yield server


@pytest.fixture
def checked_conn(pg15_with_plpgsql_check: servers.Server) -> Iterator[psycopg.Connection]:
    """A connection to the server's own database, with plpgsql_check and the migrations,
    both removed again afterwards."""
    with pg15_with_plpgsql_check.connect(autocommit=True) as conn:
        conn.execute("CREATE EXTENSION plpgsql_check")
        helpers.apply_all(conn, helpers.UP_FILES)
        try:
            yield conn
        finally:
            helpers.apply_all(conn, helpers.DOWN_FILES)
            conn.execute("DROP EXTENSION plpgsql_check")


def findings(conn: psycopg.Connection, function: str) -> list[str]:
    return [row[0] for row in conn.execute(CHECK, [function])]


FUNCTIONS = (
    "cleanup_expired_idempotency_records()",
    "idempotency_claim(uuid, character varying, bytea, interval)",
    "idempotency_complete(uuid, uuid, text, integer, interval)",
    "idempotency_release(uuid, uuid)",
    "idempotency_key(text, text)",
)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_the_functions_have_no_findings(checked_conn: psycopg.Connection, function: str) -> None:
    version = checked_conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'plpgsql_check'").fetchone()
    assert version is not None and version[0].startswith("2."), f"expected plpgsql_check 2.x, got {version}"
    found = findings(checked_conn, function)
    assert found == [], f"plpgsql_check reported in {function}:\n" + "\n".join(found)


def test_the_checker_reports_a_broken_function(checked_conn: psycopg.Connection) -> None:
    """The same call does report problems: a function naming a column that does not exist."""
    checked_conn.execute(
        """CREATE FUNCTION broken_cleanup() RETURNS BIGINT LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM idempotency_records WHERE expired_at <= now();
            RETURN 0;
        END $$"""
    )
    try:
        found = findings(checked_conn, "broken_cleanup()")
    finally:
        checked_conn.execute("DROP FUNCTION broken_cleanup()")
    assert any('column "expired_at" does not exist' in line for line in found), found
