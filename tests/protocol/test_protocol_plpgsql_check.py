"""plpgsql_check finds nothing in the four functions of 047, with the extra, performance, security
and compatibility warnings on (the check tests/test_plpgsql_check.py runs on the cleanup). It is
packaged here only for Debian's PostgreSQL 15, so the module starts its own PostgreSQL 15 server."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests import helpers
from tests.protocol.library import PROTOCOL_DOWN, apply_protocol
from tests.test_plpgsql_check import CONTROL, findings
from tooling import servers

FUNCTIONS = (
    "idempotency_claim(uuid, character varying, bytea, interval)",
    "idempotency_complete(uuid, uuid, text, integer, interval)",
    "idempotency_release(uuid, uuid)",
    "idempotency_key(text, text)",
)


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[psycopg.Connection]:
    if not CONTROL.exists():
        pytest.skip(f"{CONTROL} is absent: install the Debian package postgresql-15-plpgsql-check")
    with (
        servers.throwaway_server("idempotency-protocol-plpgsql-check-", "15") as server,
        server.connect(autocommit=True) as conn,
    ):
        conn.execute("CREATE EXTENSION plpgsql_check")
        helpers.apply_all(conn, helpers.UP_FILES)
        apply_protocol(conn)
        try:
            yield conn
        finally:
            helpers.apply_all(conn, (PROTOCOL_DOWN, *helpers.DOWN_FILES))


@pytest.mark.parametrize("function", FUNCTIONS)
def test_plpgsql_check_finds_nothing(checked: psycopg.Connection, function: str) -> None:
    found = findings(checked, function)
    assert found == [], f"plpgsql_check reported in {function}:\n" + "\n".join(found)
