"""Who can vacuum the table (the guide's Vacuum and autovacuum and Performance): its owner (or a
superuser, or the database's owner). The application role, with every grant the guide gives it,
runs the guide's VACUUM block without an error: PostgreSQL only warns, and nothing is vacuumed
(vacuum_count unchanged, the dead rows still there); the owner's VACUUM vacuums. From PostgreSQL 17
the MAINTAIN privilege lets another role vacuum it; before, there is no such privilege. The
owner who is not a superuser (a managed service's admin) is tried in
tests/managed/test_getting_started.py."""

from __future__ import annotations

import psycopg

from tests import helpers, roles
from tests.docblocks import GUIDE, block_with, prose, run_block
from tests.vacuum import expired_and_cleaned_up, statistics

VACUUM = block_with("VACUUM (ANALYZE) idempotency_records;", GUIDE)


def cleaned(conn: psycopg.Connection, rows: int = 200) -> tuple[int, int]:
    expired_and_cleaned_up(conn, rows)
    return statistics(conn, f"n_dead_tup >= {rows}")


def vacuum_as(conn: psycopg.Connection, role: str) -> list[str]:
    """The guide's VACUUM block as `role`; the warnings it printed."""
    warnings: list[str] = []
    conn.add_notice_handler(lambda notice: warnings.append(notice.message_primary or ""))
    with roles.acting_as(conn, role):
        conn.execute(VACUUM.text)
    return warnings


def test_the_application_roles_vacuum_warns_and_vacuums_nothing_and_the_owners_vacuums(
    conn: psycopg.Connection, role: str
) -> None:
    roles.grant(conn, role, *roles.UPSERT_GRANTS)
    before = cleaned(conn)
    warnings = vacuum_as(conn, role)
    # PostgreSQL 15: skipping "idempotency_records" --- only table or database owner can vacuum it;
    # 16 and later: permission denied to vacuum "idempotency_records", skipping it.
    assert len(warnings) == 1 and "skipping" in warnings[0] and '"idempotency_records"' in warnings[0], warnings
    assert statistics(conn) == before, f"the application role's VACUUM vacuumed nothing: {before}"
    run_block(conn, VACUUM)  # as the owner
    guide = prose()
    assert "outside a transaction block, **as the table's owner**" in guide, "the guide says who runs it"
    assert "Vacuum right after a large cleanup**, as the table's owner" in guide
    count, dead = statistics(conn, f"vacuum_count > {before[0]}")
    assert (count, dead) == (before[0] + 1, 0), f"the owner's VACUUM vacuumed: vacuum_count {count}, n_dead_tup {dead}"


def test_from_postgresql_17_maintain_lets_another_role_vacuum(conn: psycopg.Connection, role: str) -> None:
    grant = f"GRANT MAINTAIN ON idempotency_records TO {role}"
    if conn.info.server_version < 170000:
        refused = helpers.sqlstate_of(conn, grant)
        assert refused == "42601", f"no MAINTAIN privilege before 17: {refused}"
        return
    conn.execute(grant)
    before = cleaned(conn)
    assert vacuum_as(conn, role) == [], "no warning: MAINTAIN is enough"
    count, dead = statistics(conn, f"vacuum_count > {before[0]}")
    assert (count, dead) == (before[0] + 1, 0), f"the role's VACUUM vacuumed: vacuum_count {count}, n_dead_tup {dead}"
