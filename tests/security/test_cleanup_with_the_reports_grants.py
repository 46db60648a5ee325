"""Every caller the report's cleanup served still cleans up: a role granted what that function
needed (SELECT and DELETE on the table, EXECUTE, USAGE on the schema), and nothing else, calls
cleanup_expired_idempotency_records() and it deletes every expired record, as the report's
function did (waiting for a record another transaction holds), with a NOTICE naming the grant
that gives it the cleanup that never waits. With that grant it skips held records instead.
The previous function refused such a role with 42501, and the table grew from then on.

The role's grants are tests/fixtures/deploy_states/cleanup_role_with_the_reports_grants.sql;
the guide's roles are tried by tests/security/test_privileges.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from tests import deployers
from tests.helpers import count
from tooling import records
from tooling.records import DAY
from tooling.servers import Server

CLEANUP = "SELECT deleted_count FROM cleanup_expired_idempotency_records()"
EXPIRED, LIVE = 3, 2


@pytest.fixture
def cleaner(conn: psycopg.Connection) -> Iterator[str]:
    """The role with the report's grants, and a table of 3 expired and 2 live records."""
    with deployers.planter_role(conn) as role:
        deployers.load_state(conn, "cleanup_role_with_the_reports_grants")
        records.insert_many(conn, EXPIRED, records.expired(operation="old"))
        records.insert_many(conn, LIVE, records.live(operation="live", lifetime=DAY))
        yield role


def notice_hints(conn: psycopg.Connection) -> list[str]:
    """The HINT of every NOTICE the connection receives from now on."""
    hints: list[str] = []

    def keep(notice: psycopg.errors.Diagnostic) -> None:
        if notice.severity_nonlocalized == "NOTICE":
            hints.append(notice.message_hint or "")

    conn.add_notice_handler(keep)
    return hints


def as_role(conn: psycopg.Connection, role: str) -> None:
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))


def test_a_role_with_select_delete_and_execute_deletes_what_has_expired(conn: psycopg.Connection, cleaner: str) -> None:
    hints = notice_hints(conn)
    as_role(conn, cleaner)
    deleted = conn.execute(CLEANUP).fetchall()
    conn.execute("RESET ROLE")
    assert deleted == [(EXPIRED,)], f"the cleanup deletes the {EXPIRED} expired records as {cleaner}"
    assert count(conn, "expires_at > now()") == LIVE and count(conn) == LIVE, "the live records stay"
    grant = f"GRANT UPDATE (expires_at) ON public.idempotency_records TO {cleaner};"
    assert any(grant in hint for hint in hints), f"a NOTICE names the grant {grant!r}: {hints}"


def test_with_the_grant_the_notice_names_it_skips_a_held_record_without_waiting(
    pg_server: Server, database: str, conn: psycopg.Connection, cleaner: str
) -> None:
    conn.execute(sql.SQL("GRANT UPDATE (expires_at) ON idempotency_records TO {}").format(sql.Identifier(cleaner)))
    hints = notice_hints(conn)
    with pg_server.connect(database) as holder:
        held = holder.execute(
            "SELECT request_id FROM idempotency_records WHERE expires_at <= now() LIMIT 1 FOR UPDATE"
        ).fetchone()
        as_role(conn, cleaner)
        conn.execute("SET lock_timeout = '1ms'")  # a wait on the holder would fail the call with 55P03
        deleted = conn.execute(CLEANUP).fetchall()
        conn.execute("RESET lock_timeout")
        conn.execute("RESET ROLE")
        holder.rollback()
    assert deleted == [(EXPIRED - 1,)], "it deletes every expired record but the held one, without waiting"
    assert held is not None and count(conn, f"request_id = '{held[0]}'") == 1, "the held record is left"
    assert hints == [], f"no NOTICE once the role can lock rows: {hints}"


def test_without_update_it_waits_for_a_held_record_as_the_reports_function_did(
    pg_server: Server, database: str, conn: psycopg.Connection, cleaner: str
) -> None:
    with pg_server.connect(database) as holder:
        holder.execute("SELECT 1 FROM idempotency_records WHERE expires_at <= now() LIMIT 1 FOR UPDATE")
        as_role(conn, cleaner)
        conn.execute("SET lock_timeout = '100ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            conn.execute(CLEANUP)
        conn.execute("RESET lock_timeout")
        holder.rollback()
        deleted = conn.execute(CLEANUP).fetchall()
        conn.execute("RESET ROLE")
    assert deleted == [(EXPIRED,)], "once the record is released, the cleanup deletes all the expired ones"


def test_without_select_or_delete_the_cleanup_is_still_refused(conn: psycopg.Connection, cleaner: str) -> None:
    conn.execute(sql.SQL("REVOKE DELETE ON idempotency_records FROM {}").format(sql.Identifier(cleaner)))
    as_role(conn, cleaner)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(CLEANUP)
    conn.execute("RESET ROLE")
    assert count(conn) == EXPIRED + LIVE, "nothing was deleted"
