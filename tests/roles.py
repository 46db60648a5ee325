"""Roles for the tests that act as another role: a new role with no privileges, uniquely named and
dropped with its grants afterwards (roles are cluster-wide), the guide's grants, and SET ROLE for a
block of statements."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

_numbers = itertools.count(1)

# The guide's grants for an application that saves with ON CONFLICT DO UPDATE (Security, Least
# privilege), statement for statement.
UPSERT_GRANTS = (
    "GRANT USAGE ON SCHEMA public TO {role}",
    "GRANT SELECT, INSERT, DELETE ON idempotency_records TO {role}",
    "GRANT UPDATE (operation, result_payload, status_code, expires_at) ON idempotency_records TO {role}",
    "GRANT EXECUTE ON FUNCTION cleanup_expired_idempotency_records() TO {role}",
)


def unique_name() -> str:
    """A role name no other test of this run or of another worker uses: idempotency_test_app_<pid>_<n>."""
    return f"idempotency_test_app_{os.getpid()}_{next(_numbers)}"


@contextmanager
def new_role(conn: psycopg.Connection, name: str) -> Iterator[str]:
    """Create a role with no privileges (NOLOGIN); drop it, with its grants, afterwards."""
    conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        conn.execute("RESET ROLE")
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def grant(conn: psycopg.Connection, role: str, *statements: str) -> None:
    """Run each GRANT with {role} standing for the role's name, quoted."""
    for statement in statements:
        conn.execute(sql.SQL(statement).format(role=sql.Identifier(role)))


@contextmanager
def acting_as(conn: psycopg.Connection, role: str) -> Iterator[psycopg.Connection]:
    """The block's statements run after SET ROLE role; RESET ROLE afterwards."""
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    try:
        yield conn
    finally:
        conn.execute("RESET ROLE")
