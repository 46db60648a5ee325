"""The fixture the deploy tests share: the empty database they deploy to."""

from __future__ import annotations

import psycopg
import pytest

from tests.deployers import Target
from tooling.servers import Server


@pytest.fixture
def target(pg_server: Server, empty_database: str, empty_conn: psycopg.Connection) -> Target:
    """A fresh database with nothing applied, and an autocommit connection to it."""
    return Target(pg_server, empty_database, empty_conn)
