"""047 refuses to go on where its objects would act on, or sit beside, something it did not
make: each state is a fixture file (tests/fixtures/protocol/<state>.sql). Each refusal has its
SQLSTATE, names the object, says what was found and what was expected, gives a HINT, and the
file (one transaction) leaves the catalog as it was."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from tests.helpers import apply, catalog_snapshot
from tests.protocol_calls import FIXTURES, PROTOCOL_UP, load_fixture, sqlstate_and_diagnostics


@dataclasses.dataclass(frozen=True)
class Refusal:
    state: str  # tests/fixtures/protocol/<state>.sql, or "" for an empty database
    sqlstate: str
    names: str  # what the message names
    found: str  # what the DETAIL says was found

    def __str__(self) -> str:
        return self.state or "no table"


REFUSALS = [
    Refusal("", "42P01", "table public.idempotency_records does not exist", "no relation"),
    Refusal(
        "temporary_table_of_the_same_name",
        "3F000",
        "idempotency_records does not resolve to a table in a permanent schema",
        "resolves to pg_temp",
    ),
    Refusal(
        "table_owned_by_another_role", "55000", "table public.idempotency_records is not the table", "owner {role}"
    ),
    Refusal("trigger_on_the_table", "55000", "table public.idempotency_records is not the table", "1 triggers"),
    Refusal("request_hash_of_type_text", "42701", "already has a column of 047", "request_hash text null"),
    Refusal(
        "lease_token_with_a_default",
        "42701",
        "already has a column of 047",
        "lease_token uuid not null default gen_random_uuid()",
    ),
    Refusal("function_owned_by_another_role", "42723", "schema public holds a function of 047", "owned by {role}"),
    Refusal("overload_of_claim", "42723", "schema public holds a function of 047", "operation text"),
    Refusal("release_of_another_result", "42723", "schema public holds a function of 047", "returns integer"),
]


def test_every_fixture_file_is_a_case() -> None:
    files = {path.stem for path in FIXTURES.glob("*.sql")}
    assert {refusal.state for refusal in REFUSALS if refusal.state} <= files
    assert files - {refusal.state for refusal in REFUSALS} <= {"shadowing_traps"}, "every state file is tested"


@contextlib.contextmanager
def other_role(conn: psycopg.Connection) -> Iterator[str]:
    name = f"idempotency_test_app_{os.getpid()}_other"
    conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        conn.execute("RESET ROLE")
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.mark.parametrize("refusal", REFUSALS, ids=str)
def test_047_refuses_and_changes_nothing(
    conn: psycopg.Connection, empty_conn: psycopg.Connection, refusal: Refusal
) -> None:
    target = conn if refusal.state else empty_conn
    with other_role(target) as role:
        if refusal.state:
            load_fixture(target, refusal.state, role=role)
        before = catalog_snapshot(target)
        with pytest.raises(psycopg.Error) as raised:
            apply(target, PROTOCOL_UP)
        sqlstate, message, detail, hint = sqlstate_and_diagnostics(raised.value)
        assert sqlstate == refusal.sqlstate, f"{refusal}: SQLSTATE {sqlstate} ({message}), expected {refusal.sqlstate}"
        assert refusal.names in message, f"{refusal}: the message names {refusal.names!r}: {message}"
        assert detail.startswith("found: ") and "; expected: " in detail, f"{refusal}: DETAIL {detail!r}"
        assert refusal.found.format(role=role) in detail, f"{refusal}: DETAIL names {refusal.found!r}: {detail}"
        assert hint, f"{refusal}: a HINT says what to do"
        assert catalog_snapshot(target) == before, f"{refusal}: the refused file changed the catalog"
        # a state that loaded a function of another role: it is still that role's, not replaced
        if refusal.state == "function_owned_by_another_role":
            owner = target.execute(
                "SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE proname = 'idempotency_key'"
            ).fetchall()
            assert owner == [(role,)]


def test_a_superuser_would_otherwise_keep_the_other_roles_function(conn: psycopg.Connection) -> None:
    """Why the owner check: CREATE OR REPLACE by a superuser keeps the function's owner, who
    can change its body later."""
    with other_role(conn) as role:
        load_fixture(conn, "function_owned_by_another_role", role=role)
        conn.execute(
            "CREATE OR REPLACE FUNCTION public.idempotency_key(scope TEXT, client_key TEXT) "
            "RETURNS UUID LANGUAGE sql AS $$ SELECT NULL::UUID $$"
        )
        owner = conn.execute("SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE proname = 'idempotency_key'")
        assert owner.fetchall() == [(role,)], "the replaced function is still the other role's"


def test_a_column_of_047_with_its_own_definition_is_kept(conn: psycopg.Connection) -> None:
    """A column a project added itself with exactly 047's definition is taken as it is."""
    conn.execute("ALTER TABLE idempotency_records ADD COLUMN lease_token UUID")
    conn.execute("COMMENT ON COLUMN idempotency_records.lease_token IS 'ours'")
    attnum = conn.execute(
        "SELECT attnum FROM pg_attribute WHERE attrelid = 'idempotency_records'::regclass AND attname = 'lease_token'"
    ).fetchone()
    apply(conn, PROTOCOL_UP)
    again = conn.execute(
        "SELECT attnum, col_description(attrelid, attnum) FROM pg_attribute "
        "WHERE attrelid = 'idempotency_records'::regclass AND attname = 'lease_token'"
    ).fetchone()
    assert again is not None and attnum is not None and again[0] == attnum[0], "the same column, not a new one"
    assert again[1] and again[1].startswith("Fencing token"), "with 047's comment"
