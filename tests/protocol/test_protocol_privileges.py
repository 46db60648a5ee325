"""The least grants a protocol client needs, as docs/protocol.md prints them ("Grants"), given to
a role of the test's own: with exactly those, every path of the four functions works (claimed,
in_progress, mismatch, replay, takeover, completion, release, a scoped key); without any one of
them, a call that needs it fails with 42501 and writes nothing; and the role can do no more than
its grants say (the functions are SECURITY INVOKER)."""

from __future__ import annotations

import datetime as dt
import os
import re
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from tests.docblocks import parse_blocks
from tests.helpers import sqlstate_of
from tests.protocol_calls import HASH, OTHER_HASH, PAGE, Claim, claim, complete, expire, release

DOCUMENTED_ROLE = "jive_protocol_client"
INSERTED = ("request_id", "operation", "result_payload", "status_code", "expires_at", "request_hash", "lease_token")
UPDATED = ("operation", "result_payload", "status_code", "created_at", "expires_at", "request_hash", "lease_token")
FUNCTIONS = (
    "idempotency_claim(UUID, VARCHAR, BYTEA, INTERVAL)",
    "idempotency_complete(UUID, UUID, TEXT, INTEGER, INTERVAL)",
    "idempotency_release(UUID, UUID)",
    "idempotency_key(TEXT, TEXT)",
)


def documented_grants() -> str:
    """The page's block that revokes from PUBLIC and grants the client role, without the CREATE ROLE."""
    (block,) = [b for b in parse_blocks(PAGE) if "GRANT INSERT (" in b.text]
    text = block.text.split("$create$;", 1)[1]
    columns = re.findall(r"GRANT (INSERT|UPDATE) \(([^)]*)\)", text)
    assert dict(columns) == {"INSERT": ", ".join(INSERTED), "UPDATE": ", ".join(UPDATED)}, columns
    return text


@pytest.fixture
def client(pconn: psycopg.Connection) -> Iterator[str]:
    """A role with exactly the page's grants (and LOGIN, which the page gives too)."""
    name = f"idempotency_test_app_{os.getpid()}_protocol"
    pconn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
    try:
        pconn.execute(documented_grants().replace(DOCUMENTED_ROLE, name))
        yield name
    finally:
        pconn.execute("RESET ROLE")
        pconn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        pconn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def as_role(conn: psycopg.Connection, role: str) -> None:
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))


def test_with_exactly_the_documented_grants_every_path_works(pconn: psycopg.Connection, client: str) -> None:
    key, expired = uuid.uuid4(), uuid.uuid4()
    as_role(pconn, client)
    first = claim(pconn, key)
    assert first.outcome == "claimed"
    assert claim(pconn, key).outcome == "in_progress"
    assert claim(pconn, key, request_hash=OTHER_HASH).outcome == "mismatch"
    assert release(pconn, key, first.token)
    second = claim(pconn, key)
    assert complete(pconn, key, second.token, '{"ok": 1}', 201, dt.timedelta(hours=1))
    assert claim(pconn, key) == Claim("replay", None, '{"ok": 1}', 201)
    stale = claim(pconn, expired).token
    pconn.execute("RESET ROLE")
    expire(pconn, expired)
    as_role(pconn, client)
    assert claim(pconn, expired, operation="transfer", request_hash=HASH).outcome == "claimed", "a takeover"
    assert complete(pconn, expired, stale) is False
    assert pconn.execute("SELECT idempotency_key('tenant-a', 'order-1')").fetchone() is not None


def _revoke(conn: psycopg.Connection, privilege: str, role: str) -> None:
    conn.execute(sql.SQL("REVOKE {} ON idempotency_records FROM {}").format(sql.SQL(privilege), sql.Identifier(role)))


def _table(conn: psycopg.Connection) -> list[tuple[object, ...]]:
    return conn.execute("SELECT * FROM idempotency_records ORDER BY request_id").fetchall()


# (privilege taken away, the call that then fails as the role; the setup runs as the owner)
NEEDED = [
    ("SELECT", "claim of a new key"),
    ("DELETE", "release"),
    *((f"INSERT ({column})", "claim of a new key") for column in INSERTED),
    *((f"UPDATE ({column})", "takeover of an expired key") for column in UPDATED),
    *(
        (f"UPDATE ({column})", "completion")
        for column in ("result_payload", "status_code", "expires_at", "lease_token")
    ),
]


@pytest.mark.parametrize(("privilege", "call"), NEEDED, ids=[f"{p} for the {c}" for p, c in NEEDED])
def test_each_table_grant_is_needed(pconn: psycopg.Connection, client: str, privilege: str, call: str) -> None:
    key = uuid.uuid4()
    token: uuid.UUID | None = None
    if call != "claim of a new key":
        token = claim(pconn, key).token
    if call == "takeover of an expired key":
        expire(pconn, key)
    _revoke(pconn, privilege, client)
    before = _table(pconn)
    as_role(pconn, client)
    queries = {
        "claim of a new key": (
            "SELECT * FROM idempotency_claim(%s, 'payment'::VARCHAR, %s, INTERVAL '1 minute')",
            (key, HASH),
        ),
        "takeover of an expired key": (
            "SELECT * FROM idempotency_claim(%s, 'payment'::VARCHAR, %s, INTERVAL '1 minute')",
            (key, HASH),
        ),
        "release": ("SELECT idempotency_release(%s, %s)", (key, token)),
        "completion": ("SELECT idempotency_complete(%s, %s, '{}', 200, INTERVAL '1 hour')", (key, token)),
    }
    query, params = queries[call]
    assert sqlstate_of(pconn, query, params) == "42501", f"without {privilege}, the {call} is refused"
    pconn.execute("RESET ROLE")
    assert _table(pconn) == before, "and writes nothing"


@pytest.mark.parametrize("function", FUNCTIONS)
def test_each_execute_grant_is_needed(pconn: psycopg.Connection, client: str, function: str) -> None:
    pconn.execute(sql.SQL("REVOKE EXECUTE ON FUNCTION {} FROM {}").format(sql.SQL(function), sql.Identifier(client)))
    as_role(pconn, client)
    allowed = pconn.execute("SELECT has_function_privilege(%s::regprocedure, 'EXECUTE')", (function,)).fetchone()
    assert allowed == (False,), f"without its grant (and with PUBLIC's revoked), {function} cannot be called"
    name, _, arguments = function.partition("(")
    placeholders = ", ".join(f"NULL::{argument.strip()}" for argument in arguments.rstrip(")").split(","))
    assert sqlstate_of(pconn, f"SELECT {name}({placeholders})") == "42501"


@pytest.mark.parametrize(
    "statement",
    [
        "TRUNCATE idempotency_records",
        "ALTER TABLE idempotency_records DROP COLUMN lease_token",
        "UPDATE idempotency_records SET request_id = gen_random_uuid()",
        "INSERT INTO idempotency_records (request_id, operation, result_payload, created_at, expires_at) "
        "VALUES (gen_random_uuid(), 'x', '{}', now() - INTERVAL '1 year', now() + INTERVAL '1 hour')",
        "CREATE OR REPLACE FUNCTION idempotency_key(scope TEXT, client_key TEXT) RETURNS UUID "
        "LANGUAGE sql AS $$ SELECT NULL::UUID $$",
    ],
)
def test_the_role_can_do_nothing_more(pconn: psycopg.Connection, client: str, statement: str) -> None:
    as_role(pconn, client)
    assert sqlstate_of(pconn, statement) == "42501", statement


def test_another_role_cannot_call_the_functions_once_public_is_revoked(pconn: psycopg.Connection, client: str) -> None:
    other = f"idempotency_test_app_{os.getpid()}_nobody"
    pconn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(other)))
    try:
        as_role(pconn, other)
        assert sqlstate_of(pconn, "SELECT idempotency_key('tenant-a', 'order-1')") == "42501"
    finally:
        pconn.execute("RESET ROLE")
        pconn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(other)))


def test_the_guides_upsert_role_needs_three_more_columns_and_the_execute_grants(pconn: psycopg.Connection) -> None:
    """docs/privileges.md, "The grants each recipe needs": the upsert role of the guide's Least
    privilege runs the protocol with UPDATE on created_at, request_hash and lease_token more."""
    name = f"idempotency_test_app_{os.getpid()}_upsert"
    role = sql.Identifier(name)
    pconn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(role))
    try:
        pconn.execute(sql.SQL("GRANT SELECT, INSERT, DELETE ON idempotency_records TO {}").format(role))
        pconn.execute(
            sql.SQL(
                "GRANT UPDATE (operation, result_payload, status_code, expires_at) ON idempotency_records TO {}"
            ).format(role)
        )
        key = uuid.uuid4()
        token = claim(pconn, key).token
        expire(pconn, key)
        takeover = "SELECT * FROM idempotency_claim(%s, 'payment'::VARCHAR, %s, INTERVAL '1 minute')"
        as_role(pconn, name)
        assert sqlstate_of(pconn, takeover, (key, HASH)) == "42501", "the upsert role alone cannot take a key over"
        pconn.execute("RESET ROLE")
        pconn.execute(
            sql.SQL("GRANT UPDATE (created_at, request_hash, lease_token) ON idempotency_records TO {}").format(role)
        )
        as_role(pconn, name)
        taken = claim(pconn, key)
        assert taken.outcome == "claimed" and complete(pconn, key, taken.token) and complete(pconn, key, token) is False
    finally:
        pconn.execute("RESET ROLE")
        pconn.execute(sql.SQL("DROP OWNED BY {}").format(role))
        pconn.execute(sql.SQL("DROP ROLE {}").format(role))
