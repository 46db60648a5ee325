"""The grants the guide gives let an application role run get, save, delete and cleanup, and
nothing more; the report's grants (SELECT, INSERT, DELETE, "do not grant UPDATE") make its own
upsert fail with permission denied.

Roles are cluster-wide: every test creates its own uniquely named role and drops it afterwards
(DROP OWNED BY, then DROP ROLE), so nothing is left on the server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from tests.helpers import sqlstate_of
from tests.roles import UPSERT_GRANTS, acting_as, grant, new_role
from tests.statements import CLAIM, CLEANUP_BATCH, GUARDED_SAVE, LOOKUP, RECORD_RESULT, REPORT_GET, REPORT_SAVE
from tooling import records
from tooling.records import save_params

REPORT_GRANTS = "GRANT SELECT, INSERT, DELETE ON idempotency_records TO {role}"
# Patterns, recipes 1, 3 and 5: the claim also resets created_at.
CLAIM_GRANTS = ("GRANT UPDATE (created_at) ON idempotency_records TO {role}",)
IMMUTABLE_GRANTS = (
    "GRANT USAGE ON SCHEMA public TO {role}",
    "GRANT SELECT ON idempotency_records TO {role}",
    "GRANT INSERT (request_id, operation, result_payload, status_code, expires_at) ON idempotency_records TO {role}",
)
# The maintenance role owns the SECURITY DEFINER wrapper the immutable role cleans up with.
MAINTENANCE_GRANTS = (
    "GRANT USAGE ON SCHEMA public TO {role}",
    "GRANT SELECT, DELETE ON idempotency_records TO {role}",
    "GRANT UPDATE (expires_at) ON idempotency_records TO {role}",
    "GRANT EXECUTE ON FUNCTION cleanup_expired_idempotency_records() TO {role}",
)
WRAPPER = """
CREATE OR REPLACE FUNCTION idempotency_cleanup_as_maintenance()
RETURNS TABLE (deleted_count BIGINT)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $wrapper$
    SELECT c.deleted_count FROM public.cleanup_expired_idempotency_records() AS c;
$wrapper$
"""
WRAPPER_GRANTS = (
    "ALTER FUNCTION idempotency_cleanup_as_maintenance() OWNER TO {maintenance}",
    "REVOKE EXECUTE ON FUNCTION idempotency_cleanup_as_maintenance() FROM PUBLIC",
    "GRANT EXECUTE ON FUNCTION idempotency_cleanup_as_maintenance() TO {role}",
)
WRAPPED_CLEANUP = "SELECT deleted_count FROM idempotency_cleanup_as_maintenance()"

SAVE_ONCE = """
INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, expires_at)
VALUES (%(request_id)s, %(operation)s, %(result_payload)s, %(status_code)s, now() + INTERVAL '1 hour' * %(ttl_hours)s)
ON CONFLICT (request_id) DO NOTHING
"""
DELETE = "DELETE FROM idempotency_records WHERE request_id = %s"
CLEANUP = "DELETE FROM idempotency_records WHERE expires_at <= now()"
CLEANUP_FUNCTION = "SELECT deleted_count FROM cleanup_expired_idempotency_records()"


@pytest.fixture
def maintenance(conn: psycopg.Connection, role: str) -> Iterator[str]:
    """A second new role, the owner of the cleanup wrapper, dropped after the test."""
    with new_role(conn, f"{role}_maintenance") as name:
        yield name


def _seed_expired(conn: psycopg.Connection) -> str:
    key = str(uuid.uuid4())
    records.insert(conn, records.expired(key, operation="old"))
    return key


@pytest.mark.parametrize("existing", [False, True], ids=["new key", "existing key"])
def test_the_reports_grants_make_its_own_upsert_fail(conn: psycopg.Connection, role: str, existing: bool) -> None:
    key = str(uuid.uuid4())
    if existing:
        conn.execute(REPORT_SAVE, save_params(key, "payment", "{}", 201, 24))
    grant(conn, role, REPORT_GRANTS)
    with acting_as(conn, role):
        state = sqlstate_of(conn, REPORT_SAVE, save_params(key, "payment", '{"retry": true}', 200, 24))
    assert state == "42501", (
        f"with only SELECT, INSERT, DELETE the report's ON CONFLICT DO UPDATE save is denied; got SQLSTATE {state}"
    )


def test_the_upsert_grants_run_get_save_delete_and_cleanup(conn: psycopg.Connection, role: str) -> None:
    grant(conn, role, *UPSERT_GRANTS)
    key, expired = str(uuid.uuid4()), _seed_expired(conn)
    with acting_as(conn, role):
        conn.execute(REPORT_SAVE, save_params(key, "payment", '{"n": 1}', 201, 24))
        conn.execute(REPORT_SAVE, save_params(key, "payment", '{"n": 2}', 200, 24))
        stored = conn.execute(REPORT_GET, {"request_id": key}).fetchall()
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
    assert held == {"SELECT", "INSERT", "DELETE"}, f"table-wide privileges of the application role: {held}"
    updatable = {
        row[0]
        for row in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'idempotency_records'::regclass AND attnum > 0 "
            "AND has_column_privilege(%s, attrelid, attnum, 'UPDATE')",
            (role,),
        )
    }
    assert updatable == {"operation", "result_payload", "status_code", "expires_at"}, (
        f"UPDATE only on the columns the save changes, got {sorted(updatable)}"
    )
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
        "UPDATE idempotency_records SET request_id = gen_random_uuid()",
        "UPDATE idempotency_records SET created_at = created_at - INTERVAL '1 day'",
    ],
)
def test_the_upsert_grants_cannot_truncate_drop_alter_or_rewrite_key_and_creation_time(
    conn: psycopg.Connection, role: str, statement: str
) -> None:
    grant(conn, role, *UPSERT_GRANTS)
    conn.execute(REPORT_SAVE, save_params(str(uuid.uuid4()), "payment", "{}", 201, 24))
    with acting_as(conn, role):
        state = sqlstate_of(conn, statement)
    assert state == "42501", f"{statement}: the application role is refused; got SQLSTATE {state}"


def test_the_upsert_grants_can_delete_every_record_live_ones_included(conn: psycopg.Connection, role: str) -> None:
    """What the guide says this role CAN do, and why the immutable variant exists: DELETE is
    table-wide, so the repository's delete right is also the right to empty the table."""
    grant(conn, role, *UPSERT_GRANTS)
    conn.execute(REPORT_SAVE, save_params(str(uuid.uuid4()), "payment", "{}", 201, 24))
    with acting_as(conn, role):
        deleted = conn.execute("DELETE FROM idempotency_records").rowcount
    assert deleted == 1, "DELETE without WHERE removes the live record too"


def test_the_claim_needs_update_on_created_at_and_runs_with_it(conn: psycopg.Connection, role: str) -> None:
    grant(conn, role, *UPSERT_GRANTS)
    expired = _seed_expired(conn)
    claim = {"request_id": expired, "operation": "payment"}
    with acting_as(conn, role):
        refused = sqlstate_of(conn, CLAIM, claim)
    assert refused == "42501", f"the save's grants alone cannot run the claim (it resets created_at): {refused}"
    grant(conn, role, *CLAIM_GRANTS)
    with acting_as(conn, role), conn.transaction():
        claimed = conn.execute(CLAIM, claim).fetchall()
        conn.execute(RECORD_RESULT, {"request_id": expired, "result_payload": '{"n": 1}', "status_code": 201})
        found = conn.execute(LOOKUP, {"request_id": expired}).fetchall()
    assert [str(r[0]) for r in claimed] == [expired], "the claim takes over the expired key"
    assert found == [("payment", '{"n": 1}', 201)], "the result is stored and read back"


def test_the_batched_cleanup_runs_with_the_upsert_grants(conn: psycopg.Connection, role: str) -> None:
    grant(conn, role, *UPSERT_GRANTS)
    _seed_expired(conn)
    with acting_as(conn, role):
        deleted = conn.execute(CLEANUP_BATCH).rowcount
    assert deleted == 1, "recipe 4's batch (FOR UPDATE needs UPDATE on one column) runs as the application role"


@pytest.fixture
def immutable(conn: psycopg.Connection, role: str, maintenance: str) -> str:
    """The application role of the immutable variant, with the wrapper owned by `maintenance`."""
    grant(conn, role, *IMMUTABLE_GRANTS)
    grant(conn, maintenance, *MAINTENANCE_GRANTS)
    conn.execute(WRAPPER)
    for statement in WRAPPER_GRANTS:
        conn.execute(sql.SQL(statement).format(role=sql.Identifier(role), maintenance=sql.Identifier(maintenance)))
    conn.execute("REVOKE EXECUTE ON FUNCTION cleanup_expired_idempotency_records() FROM PUBLIC")
    return role


def test_the_immutable_grants_save_once_read_back_and_clean_up_through_the_wrapper(
    conn: psycopg.Connection, immutable: str
) -> None:
    key, expired = str(uuid.uuid4()), _seed_expired(conn)
    with acting_as(conn, immutable):
        first = conn.execute(SAVE_ONCE, save_params(key, "transfer", '{"n": 1}', 201, 72)).rowcount
        second = conn.execute(SAVE_ONCE, save_params(key, "transfer", '{"n": 2}', 201, 72)).rowcount
        stored = conn.execute(REPORT_GET, {"request_id": key}).fetchall()
        cleaned = conn.execute(WRAPPED_CLEANUP).fetchall()
    assert (first, second) == (1, 0), "the first save stores the record, the second stores nothing"
    assert [r[2] for r in stored] == ['{"n": 1}'], "reading back returns the first result"
    assert cleaned == [(1,)], f"the wrapper deletes the expired record {expired}"
    assert {str(r[0]) for r in conn.execute("SELECT request_id FROM idempotency_records")} == {key}


@pytest.mark.parametrize(
    ("name", "statement"),
    [
        ("the upsert save", REPORT_SAVE),
        ("an update", "UPDATE idempotency_records SET result_payload = 'forged' WHERE request_id = %s"),
        ("the retention update", "UPDATE idempotency_records SET expires_at = created_at + INTERVAL '1 hour'"),
        ("a delete of the record", DELETE),
        ("a delete of every record", "DELETE FROM idempotency_records"),
        ("a delete of expired records", CLEANUP),
        ("truncate", "TRUNCATE idempotency_records"),
        ("the cleanup function itself", CLEANUP_FUNCTION),
        ("the batched cleanup", CLEANUP_BATCH),
        (
            "a record with a backdated created_at",
            "INSERT INTO idempotency_records (request_id, operation, result_payload, created_at, expires_at) "
            "VALUES (gen_random_uuid(), 'transfer', 'forged', now() - INTERVAL '1 year', now() + INTERVAL '1 hour')",
        ),
    ],
)
def test_the_immutable_grants_change_delete_or_forge_no_record(
    conn: psycopg.Connection, immutable: str, name: str, statement: str
) -> None:
    key = str(uuid.uuid4())
    conn.execute(REPORT_SAVE, save_params(key, "transfer", "{}", 201, 72))
    _seed_expired(conn)
    before = conn.execute("SELECT * FROM idempotency_records ORDER BY request_id").fetchall()
    params = (
        save_params(key, "transfer", "{}", 201, 72) if statement == REPORT_SAVE else (key,) if "%s" in statement else ()
    )
    with acting_as(conn, immutable):
        state = sqlstate_of(conn, statement, params)
    assert state == "42501", f"{name}: the immutable role is refused; got SQLSTATE {state}"
    after = conn.execute("SELECT * FROM idempotency_records ORDER BY request_id").fetchall()
    assert after == before, f"{name}: no stored record changed"


def test_the_wrapper_deletes_only_expired_records_whatever_the_callers_search_path(
    conn: psycopg.Connection, immutable: str
) -> None:
    """The immutable role's one way to delete: the wrapper, which deletes expired records of
    the real table only. A temporary table of the same name, first in the caller's
    search_path, changes nothing (the wrapper and the function pin their search_path)."""
    live = str(uuid.uuid4())
    conn.execute(REPORT_SAVE, save_params(live, "transfer", "{}", 201, 72))
    expired = _seed_expired(conn)
    with acting_as(conn, immutable):
        conn.execute("CREATE TEMPORARY TABLE idempotency_records (LIKE public.idempotency_records)")
        conn.execute(
            "INSERT INTO pg_temp.idempotency_records (request_id, operation, result_payload, created_at, expires_at) "
            "VALUES (gen_random_uuid(), 'decoy', '{}', now() - INTERVAL '2 days', now() - INTERVAL '1 day')"
        )
        conn.execute("SET search_path = pg_temp, public")
        cleaned = conn.execute(WRAPPED_CLEANUP).fetchall()
        decoys = conn.execute("SELECT count(*) FROM pg_temp.idempotency_records").fetchone()
        conn.execute("RESET search_path")
        conn.execute("DROP TABLE pg_temp.idempotency_records")
    assert cleaned == [(1,)], "the wrapper deleted one record"
    assert decoys == (1,), "the temporary table was not touched"
    kept = {str(r[0]) for r in conn.execute("SELECT request_id FROM idempotency_records")}
    assert kept == {live}, f"the expired record {expired} is gone and the live one {live} kept"


def test_only_granted_roles_may_call_the_wrapper(conn: psycopg.Connection, immutable: str) -> None:
    conn.execute(
        sql.SQL("REVOKE EXECUTE ON FUNCTION idempotency_cleanup_as_maintenance() FROM {}").format(
            sql.Identifier(immutable)
        )
    )
    _seed_expired(conn)
    with acting_as(conn, immutable):
        state = sqlstate_of(conn, WRAPPED_CLEANUP)
    assert state == "42501", (
        f"EXECUTE on the wrapper is revoked from PUBLIC: a role without the grant is refused ({state})"
    )


def test_execute_alone_does_not_let_a_role_clean_up(conn: psycopg.Connection, role: str) -> None:
    _seed_expired(conn)
    with acting_as(conn, role):
        state = sqlstate_of(conn, CLEANUP_FUNCTION)
    assert state == "42501", "the function runs with its caller's privileges: without DELETE it is denied"
    left = conn.execute("SELECT count(*) FROM idempotency_records").fetchone()
    assert left == (1,), "nothing was deleted"


def test_the_guarded_save_runs_with_the_upsert_grants(conn: psycopg.Connection, role: str) -> None:
    grant(conn, role, *UPSERT_GRANTS)
    key = uuid.uuid4()
    params = save_params(key, "payment", "{}", 201, 72)
    with acting_as(conn, role):
        stored = conn.execute(GUARDED_SAVE, params).fetchall()
        refused = conn.execute(GUARDED_SAVE, {**params, "operation": "login"}).fetchall()
    assert (stored, refused) == ([(key,)], []), "recipe 2 runs as the upsert role: stores, then refuses reuse"


def test_the_immutable_role_cannot_claim(conn: psycopg.Connection, immutable: str) -> None:
    expired = _seed_expired(conn)
    with acting_as(conn, immutable):
        state = sqlstate_of(conn, CLAIM, {"request_id": expired, "operation": "payment"})
    assert state == "42501", f"recipe 1 writes records: the immutable role is refused; got {state}"
