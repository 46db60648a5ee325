"""The grants the guide gives let an application role run get, save, delete and cleanup, and
nothing more; the report's grants (SELECT, INSERT, DELETE, "do not grant UPDATE") make its own
upsert fail with permission denied.

Roles are cluster-wide: every test creates its own uniquely named role and drops it afterwards
(DROP OWNED BY, then DROP ROLE), so nothing is left on the server.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql

from tests.helpers import REPORT_GET, REPORT_SAVE, sqlstate_of

_numbers = itertools.count(1)

REPORT_GRANTS = "GRANT SELECT, INSERT, DELETE ON idempotency_records TO {role}"
UPSERT_GRANTS = (
    "GRANT USAGE ON SCHEMA public TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_records TO {role}",
    "GRANT EXECUTE ON FUNCTION cleanup_expired_idempotency_records() TO {role}",
)
IMMUTABLE_GRANTS = (
    "GRANT USAGE ON SCHEMA public TO {role}",
    "GRANT SELECT, INSERT, DELETE ON idempotency_records TO {role}",
    "GRANT EXECUTE ON FUNCTION cleanup_expired_idempotency_records() TO {role}",
)

GET, SAVE = REPORT_GET, REPORT_SAVE
SAVE_ONCE = """
INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, expires_at)
VALUES (%s, %s, %s, %s, now() + INTERVAL '1 hour' * %s)
ON CONFLICT (request_id) DO NOTHING
"""
DELETE = "DELETE FROM idempotency_records WHERE request_id = %s"
CLEANUP = "DELETE FROM idempotency_records WHERE expires_at <= now()"
CLEANUP_FUNCTION = "SELECT deleted_count FROM cleanup_expired_idempotency_records()"


@pytest.fixture
def role(conn: psycopg.Connection) -> Iterator[str]:
    """A new role with no privileges, dropped (with its grants) after the test."""
    name = f"idempotency_test_app_{os.getpid()}_{next(_numbers)}"
    conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        conn.execute("RESET ROLE")
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def grant(conn: psycopg.Connection, role: str, *statements: str) -> None:
    for statement in statements:
        conn.execute(sql.SQL(statement).format(role=sql.Identifier(role)))


@contextmanager
def acting_as(conn: psycopg.Connection, role: str) -> Iterator[psycopg.Connection]:
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    try:
        yield conn
    finally:
        conn.execute("RESET ROLE")


def _seed_expired(conn: psycopg.Connection) -> str:
    key = str(uuid.uuid4())
    conn.execute(
        "INSERT INTO idempotency_records (request_id, operation, result_payload, created_at, expires_at) "
        "VALUES (%s, 'old', '{}', now() - INTERVAL '2 hours', now() - INTERVAL '1 hour')",
        (key,),
    )
    return key


@pytest.mark.parametrize("existing", [False, True], ids=["new key", "existing key"])
def test_the_reports_grants_make_its_own_upsert_fail(conn: psycopg.Connection, role: str, existing: bool) -> None:
    key = str(uuid.uuid4())
    if existing:
        conn.execute(SAVE, (key, "payment", "{}", 201, 24))
    grant(conn, role, REPORT_GRANTS)
    with acting_as(conn, role):
        state = sqlstate_of(conn, SAVE, (key, "payment", '{"retry": true}', 200, 24))
    assert state == "42501", (
        f"with only SELECT, INSERT, DELETE the report's ON CONFLICT DO UPDATE save is denied; got SQLSTATE {state}"
    )


def test_the_upsert_grants_run_get_save_delete_and_cleanup(conn: psycopg.Connection, role: str) -> None:
    grant(conn, role, *UPSERT_GRANTS)
    key, expired = str(uuid.uuid4()), _seed_expired(conn)
    with acting_as(conn, role):
        conn.execute(SAVE, (key, "payment", '{"n": 1}', 201, 24))
        conn.execute(SAVE, (key, "payment", '{"n": 2}', 200, 24))
        stored = conn.execute(GET, (key,)).fetchall()
        deleted = conn.execute(DELETE, (key,)).rowcount
        cleaned = conn.execute(CLEANUP).rowcount
        _seed_expired(conn)
        cleaned_by_function = conn.execute(CLEANUP_FUNCTION).fetchall()
    assert [(r[2], r[3]) for r in stored] == [('{"n": 2}', 200)], "get returns the second save's result"
    assert deleted == 1, "delete removes the record"
    assert cleaned == 1, f"the cleanup DELETE removes the expired record {expired}"
    assert cleaned_by_function == [(1,)], "the cleanup function runs as the role and deletes the expired record"


def test_the_upsert_grants_are_nothing_more(conn: psycopg.Connection, role: str) -> None:
    grant(conn, role, *UPSERT_GRANTS)
    held = {
        privilege
        for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
        if conn.execute("SELECT has_table_privilege(%s, 'idempotency_records', %s)", (role, privilege)).fetchone()
        == (True,)
    }
    assert held == {"SELECT", "INSERT", "UPDATE", "DELETE"}, f"table privileges of the application role: {held}"
    owner = conn.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'idempotency_records'::regclass")
    assert owner.fetchone() != (role,), "the application role does not own the table"


@pytest.mark.parametrize(
    "statement",
    [
        "TRUNCATE idempotency_records",
        "DROP TABLE idempotency_records",
        "ALTER TABLE idempotency_records DROP CONSTRAINT chk_expires_at",
        "ALTER TABLE idempotency_records ADD COLUMN note TEXT",
        "CREATE INDEX idx_by_status ON idempotency_records (status_code)",
        "DROP FUNCTION cleanup_expired_idempotency_records()",
    ],
)
def test_the_upsert_grants_cannot_empty_drop_or_alter(conn: psycopg.Connection, role: str, statement: str) -> None:
    grant(conn, role, *UPSERT_GRANTS)
    with acting_as(conn, role):
        state = sqlstate_of(conn, statement)
    assert state == "42501", f"{statement}: the application role is refused; got SQLSTATE {state}"


def test_the_immutable_grants_save_once_and_read_back_the_first_result(conn: psycopg.Connection, role: str) -> None:
    grant(conn, role, *IMMUTABLE_GRANTS)
    key = str(uuid.uuid4())
    _seed_expired(conn)
    with acting_as(conn, role):
        first = conn.execute(SAVE_ONCE, (key, "transfer", '{"n": 1}', 201, 72)).rowcount
        second = conn.execute(SAVE_ONCE, (key, "transfer", '{"n": 2}', 201, 72)).rowcount
        stored = conn.execute(GET, (key,)).fetchall()
        cleaned = conn.execute(CLEANUP_FUNCTION).fetchall()
        deleted = conn.execute(DELETE, (key,)).rowcount
    assert (first, second) == (1, 0), "the first save stores the record, the second stores nothing"
    assert [r[2] for r in stored] == ['{"n": 1}'], "reading back returns the first result"
    assert cleaned == [(1,)], "the cleanup function works without UPDATE"
    assert deleted == 1, "delete works without UPDATE"


@pytest.mark.parametrize(
    ("name", "statement"),
    [
        ("the upsert save", SAVE),
        ("an update", "UPDATE idempotency_records SET result_payload = 'forged' WHERE request_id = %s"),
        ("the retention update", "UPDATE idempotency_records SET expires_at = created_at + INTERVAL '1 hour'"),
    ],
)
def test_the_immutable_grants_change_no_record(conn: psycopg.Connection, role: str, name: str, statement: str) -> None:
    key = str(uuid.uuid4())
    conn.execute(SAVE, (key, "transfer", "{}", 201, 72))
    grant(conn, role, *IMMUTABLE_GRANTS)
    params: tuple[object, ...] = {1: (key,), 5: (key, "transfer", "{}", 201, 72)}.get(statement.count("%s"), ())
    with acting_as(conn, role):
        state = sqlstate_of(conn, statement, params)
    assert state == "42501", f"{name}: the immutable role has no UPDATE; got SQLSTATE {state}"


def test_execute_alone_does_not_let_a_role_clean_up(conn: psycopg.Connection, role: str) -> None:
    _seed_expired(conn)
    with acting_as(conn, role):
        state = sqlstate_of(conn, CLEANUP_FUNCTION)
    assert state == "42501", "the function runs with its caller's privileges: without DELETE it is denied"
    left = conn.execute("SELECT count(*) FROM idempotency_records").fetchone()
    assert left == (1,), "nothing was deleted"
