"""Fixtures of the protocol's tests: a fresh migrated database (the root conftest's) with 047
applied on top."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.protocol_calls import apply_protocol
from tooling.servers import Server


@pytest.fixture
def protocol_database(pg_server: Server, database: str) -> str:
    """Name of a fresh database with 045, 046 and 047 applied, dropped after the test."""
    with pg_server.connect(database, autocommit=True) as conn:
        apply_protocol(conn)
    return database


@pytest.fixture
def pconn(pg_server: Server, protocol_database: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection, as the table's owner, to a database with 047 applied: each
    call of a function is its own transaction."""
    with pg_server.connect(protocol_database, autocommit=True) as connection:
        yield connection
