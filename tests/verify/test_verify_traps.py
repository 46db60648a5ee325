"""The verification script runs no code of another role, in full mode and with catalog_only=1, as a
superuser and as the application role: a role that may CREATE in the schema installs the table and
the function there itself (045, 046 and 047, as it is allowed to) and plants a trap of each kind
(tests/fixtures/verify_traps/): a row trigger, a statement trigger, a rule, a view named
idempotency_records, a partitioned table with a trigger on its partition, an inheritance child, a
policy calling its function, the function's body swapped (046's, and 047's claim), a column default
and an index expression calling its function. Each trap counts itself on a sequence and records the role it ran as (neither
undone by the script's rollback); first each is shown armed (the statement the behaviour tests
would run does run it, as that role), then the script runs four ways and the count must not move.

Even when the DBA names that role as trusted (-v owner=...), the trap's own check fails and keeps
the behaviour tests from running. And the script runs no DDL: event triggers on every DDL event
never fire during a run."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from tests import verification
from tests.helpers import ROOT, UP_FILES, fixture_sql
from tests.roles import UPSERT_GRANTS, grant, new_role, unique_name
from tests.statements import REPORT_GET, REPORT_SAVE, render
from tooling.servers import Server

TRAPS = ROOT / "tests" / "fixtures" / "verify_traps"

# Probes: each trap is shown to fire on one of these statements, as written here. The report's
# get and save with literals, a new key each time; a plain insert of an expired record; the
# cleanup, the report's and the function's.
SAVE = render(
    REPORT_SAVE,
    request_id="gen_random_uuid()",
    operation="'payment'",
    result_payload="'{}'",
    status_code="201",
    ttl_hours="1",
)
GET = render(REPORT_GET, request_id="gen_random_uuid()")
EXPIRED = (
    "INSERT INTO idempotency_records (request_id, operation, result_payload, created_at, expires_at) "
    "VALUES (gen_random_uuid(), 'old', '{}', now() - INTERVAL '2 hours', now() - INTERVAL '1 hour')"
)
CLEANUP = "SELECT deleted_count FROM cleanup_expired_idempotency_records()"
# 047's claim, as the script's own tests call it
CLAIM = (
    "SELECT outcome FROM idempotency_claim(gen_random_uuid(), 'verify'::VARCHAR, "
    "sha256(uuid_send(gen_random_uuid())), INTERVAL '1 minute')"
)
# the report's repository cleanup (IdempotencyRepository::cleanup_expired): without ONLY it reaches
# every child table (the function says ONLY since a child's rows have ctids of their own)
REPORT_CLEANUP = "DELETE FROM idempotency_records WHERE expires_at <= now()"
COUNT_EXPIRED = "SELECT count(*) FROM idempotency_records WHERE expires_at <= now() AND request_id <> gen_random_uuid()"


@dataclasses.dataclass(frozen=True)
class Trap:
    kind: str  # tests/fixtures/verify_traps/<kind>.sql
    check: str  # the script's check that names it
    probe: tuple[str, ...]  # what the behaviour tests would run, which runs the trap
    victim: str = "dba"  # who the probe runs as: dba (a superuser) or app (the application role)

    def __str__(self) -> str:
        return self.kind


TRAP_KINDS = [
    Trap("row_trigger", "no trigger on idempotency_records", (SAVE,)),
    Trap("statement_trigger", "no trigger on idempotency_records", (SAVE,)),
    Trap("rule", "no rule on idempotency_records", (EXPIRED,)),  # ON CONFLICT refuses a table with rules
    Trap("view", "exists as an ordinary heap table", (COUNT_EXPIRED,)),
    Trap("partition_trigger", "exists as an ordinary heap table", (SAVE,)),
    Trap("inheritance_child", "no parent, child or partition", (EXPIRED, REPORT_CLEANUP)),
    Trap("policy", "no row security and no policy", (SAVE,), victim="app"),
    Trap("function_body", "function body is the one 046 ships", (CLEANUP,)),
    Trap("protocol_function_body", "function idempotency_claim of 047", (CLAIM,)),
    Trap("column_default", "column created_at", (SAVE,)),
    Trap("index_expression", "other indexes:", (SAVE,)),
]


@dataclasses.dataclass(frozen=True)
class Roles:
    hostile: str  # may CREATE in public, owns the install and the traps
    app: str  # the application role, with the guide's grants on the hostile's objects


@pytest.fixture
def roles(empty_conn: psycopg.Connection) -> Iterator[Roles]:
    base = unique_name()
    with new_role(empty_conn, f"{base}_hostile") as hostile, new_role(empty_conn, f"{base}_app") as app:
        yield Roles(hostile, app)


def plant(conn: psycopg.Connection, roles: Roles, kind: str | None) -> None:
    """As the hostile role: the up files where it may CREATE, the recorder, the trap, and the
    guide's grants to the application role on what it made."""
    hostile = sql.Identifier(roles.hostile)
    conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(hostile))
    conn.execute(sql.SQL("SET ROLE {}").format(hostile))
    try:
        with conn.transaction():
            for path in UP_FILES:
                conn.execute(path.read_text())
            conn.execute(fixture_sql(TRAPS / "recorder.sql"))
            if kind is not None:
                conn.execute(fixture_sql(TRAPS / f"{kind}.sql"))
            grant(conn, roles.app, *UPSERT_GRANTS)
    finally:
        conn.execute("RESET ROLE")


def trap_record(conn: psycopg.Connection) -> tuple[int, str | None]:
    """How many times a trap ran, rolled back or not, and the role it last ran as."""
    row = conn.execute(
        "SELECT (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM public.verify_trap_calls), "
        "(SELECT rolname FROM pg_roles WHERE oid = (SELECT last_value FROM public.verify_trap_ran_as))"
    ).fetchone()
    assert row is not None
    return int(row[0]), row[1]


@pytest.mark.parametrize("trap", TRAP_KINDS, ids=str)
def test_each_trap_is_armed(empty_conn: psycopg.Connection, roles: Roles, trap: Trap) -> None:
    """The statements the behaviour tests run do run the trap, as whoever runs them."""
    plant(empty_conn, roles, trap.kind)
    before = trap_record(empty_conn)[0]
    victim = roles.app if trap.victim == "app" else "postgres"
    with empty_conn.transaction(force_rollback=True):
        if trap.victim == "app":
            empty_conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(roles.app)))
        for statement in trap.probe:
            empty_conn.execute(statement)
    calls, ran_as = trap_record(empty_conn)
    assert calls > before, f"the {trap} trap did not run: it is not armed"
    if trap.victim == "app":
        assert ran_as == victim, f"the {trap} trap ran as {ran_as}"
    else:
        assert ran_as != roles.hostile, f"the {trap} trap ran as {ran_as}, not as the superuser"


RUNS = {
    "superuser, full": ((), None),
    "superuser, catalog_only": (("catalog_only=1",), None),
    "superuser, full, the hostile role named trusted": (("owner={hostile}",), None),
    "application role, full": ((), "-c role={app}"),
}


@pytest.mark.parametrize("trap", TRAP_KINDS, ids=str)
def test_the_script_runs_no_trap(
    pg_server: Server, empty_database: str, empty_conn: psycopg.Connection, roles: Roles, trap: Trap
) -> None:
    plant(empty_conn, roles, trap.kind)
    before = trap_record(empty_conn)
    for label, (variables, options) in RUNS.items():
        named = [variable.format(hostile=roles.hostile) for variable in variables]
        run = verification.run_script(
            pg_server, empty_database, *named, options=options and options.format(app=roles.app)
        )
        assert "verify trap ran" not in run.stderr, f"{trap}, {label}: a trap ran\n{run.describe()}"
        assert trap_record(empty_conn) == before, f"{trap}, {label}: a trap ran (rolled back)\n{run.describe()}"
        assert run.returncode != 0 and len(run.behaviour_skipped) == verification.BEHAVIOUR_TESTS, (
            f"{label}\n{run.describe()}"
        )
        assert any(trap.check in text for text in run.not_ok), f"{trap}, {label}: {trap.check!r}\n{run.describe()}"


def test_an_install_the_untrusted_role_owns_fails_unless_named_trusted(
    pg_server: Server, empty_database: str, empty_conn: psycopg.Connection, roles: Roles
) -> None:
    """The same install with no trap: its owner could swap the body or add a trigger between the
    checks and the tests, so it is not ok unless the DBA names that role with -v owner; then the
    behaviour tests run."""
    plant(empty_conn, roles, None)
    run = verification.run_script(pg_server, empty_database)
    assert run.returncode != 0 and len(run.behaviour_skipped) == verification.BEHAVIOUR_TESTS, run.describe()
    assert run.not_ok == [
        "their owner is a role you trust: you, a superuser, or the role named with -v owner: "
        f"found {roles.hostile} (not you, not a superuser, no -v owner), expected a trusted owner"
    ], run.describe()
    trusted = verification.run_script(pg_server, empty_database, f"owner={roles.hostile}")
    verification.assert_passes(trusted)
    assert trap_record(empty_conn)[0] == 0


EVENT_TRIGGERS = """
CREATE SEQUENCE public.verify_ddl_events;
CREATE FUNCTION public.verify_ddl_event() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM nextval('public.verify_ddl_events');
END
$$;
CREATE EVENT TRIGGER verify_ddl_start ON ddl_command_start EXECUTE FUNCTION public.verify_ddl_event();
CREATE EVENT TRIGGER verify_ddl_end ON ddl_command_end EXECUTE FUNCTION public.verify_ddl_event();
CREATE EVENT TRIGGER verify_sql_drop ON sql_drop EXECUTE FUNCTION public.verify_ddl_event();
CREATE EVENT TRIGGER verify_table_rewrite ON table_rewrite EXECUTE FUNCTION public.verify_ddl_event();
"""


def _ddl_events(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM public.verify_ddl_events").fetchone()
    assert row is not None
    return int(row[0])


def test_the_script_runs_no_ddl(pg_server: Server, database: str, conn: psycopg.Connection) -> None:
    """Event triggers on every DDL event: a passing run, a catalog_only run and a failing one fire
    none (a temporary table, the DDL the script used to run, does)."""
    conn.execute(EVENT_TRIGGERS)
    with conn.transaction(force_rollback=True):
        conn.execute("CREATE TEMPORARY TABLE armed (n INTEGER)")
    armed = _ddl_events(conn)
    assert armed > 0, "the event triggers fire"
    verification.assert_passes(verification.run_script(pg_server, database))
    verification.assert_passes(verification.run_script(pg_server, database, "catalog_only=1"), behaviour=False)
    conn.execute("COMMENT ON COLUMN idempotency_records.expires_at IS NULL")
    after_damage = _ddl_events(conn)
    failed = verification.run_script(pg_server, database)
    assert failed.returncode != 0, failed.describe()
    assert _ddl_events(conn) == after_damage, "the script ran DDL"
    assert after_damage == armed + 2, "only the COMMENT of this test fired (start and end)"
