"""Fixtures of the protocol's tests. The root conftest's migrated databases hold 047 already
(it is one of the up files); these name what a test starts from."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.helpers import DOWN_047, apply
from tooling.servers import Server


@pytest.fixture
def protocol_database(database: str) -> str:
    """Name of a fresh database with 045, 046 and 047 applied, dropped after the test."""
    return database


@pytest.fixture
def pconn(pg_server: Server, protocol_database: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection, as the table's owner, to a database with 047 applied: each
    call of a function is its own transaction."""
    with pg_server.connect(protocol_database, autocommit=True) as connection:
        yield connection


@pytest.fixture
def contract_conn(conn: psycopg.Connection) -> psycopg.Connection:
    """An autocommit connection to a fresh database with 045 and 046 only: 047 rolled back."""
    apply(conn, DOWN_047)
    return conn
