"""The files keep no object of another role, act only on the install, and start no second copy
of it: each such state is refused with its SQLSTATE, a message naming the object, a DETAIL with
what was found and what was expected, and a HINT, and the install is left exactly as it was
(catalog snapshot and every catalog row's version).

The states are fixture files, tests/fixtures/deploy_states/<state>.sql. Each file is applied as
a runner does (its whole text, one transaction); tests/deploy/test_plain_psql_guards.py applies the same
states with plain psql.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import psycopg
import pytest

from tests import deployers
from tests.helpers import DOWN_045, DOWN_046, DOWN_047, UP_045, UP_046, UP_047, apply, catalog_snapshot, fixture_sql
from tooling.servers import Server

USER = "{user}"  # stands for the role that applies the files


@dataclasses.dataclass(frozen=True)
class Refusal:
    state: str  # tests/fixtures/deploy_states/<state>.sql
    path: Path  # the file applied, and refused
    sqlstate: str
    names: tuple[str, ...]  # what the message names (first) and its DETAIL (the rest)
    migrated: bool = True  # the state starts from a migrated database, else from an empty one
    session: bool = False  # a state of the session: loaded in the session that applies the file
    user_schema: bool = False  # the state adds a schema named after the user: compare it too

    def __str__(self) -> str:
        return f"{self.path.name}-{self.state}"


# What a refusal of a second copy names: the install, and the user's schema it found.
SECOND_COPY = (f"installed in another schema than {USER}", "public.idempotency_records", f"schema {USER}")

REFUSALS = [
    # A function of that name made by another role is neither kept nor replaced.
    *(
        Refusal(
            state,
            UP_046,
            "42501",
            (f"public.cleanup_expired_idempotency_records({args})", f"owner {deployers.PLANTER}"),
        )
        for state, args in (
            ("function_owned_by_another_role", ""),
            ("function_overload_owned_by_another_role", "integer"),
        )
    ),
    # A table of that name another role made, with a trap trigger, is not taken over.
    *(
        Refusal("table_planted_with_a_trap_trigger", path, sqlstate, ("public.idempotency_records",), migrated=False)
        for path, sqlstate in ((UP_045, "42501"), (UP_046, "55000"), (UP_047, "55000"))
    ),
    # A temporary table of that name never stands in for the install, up or down.
    *(
        Refusal("temporary_table_in_the_session", path, "3F000", (found,), session=True)
        for path, found in (
            (DOWN_045, "temporary table"),
            (UP_045, "temporary schema"),
            (UP_046, "permanent schema"),
            (UP_047, "permanent schema"),
            (DOWN_047, "temporary table"),
        )
    ),
    # A schema named after the user, first on the default search_path: no second copy.
    *(
        Refusal("schema_named_after_the_user", path, sqlstate, SECOND_COPY, user_schema=True)
        for path, sqlstate in ((UP_045, "42P07"), (UP_046, "3F000"), (UP_047, "3F000"))
    ),
    Refusal(
        "schema_named_after_the_user_with_a_second_table",
        UP_046,
        "42723",
        (
            f"cleanup_expired_idempotency_records() is installed in another schema than {USER}",
            "public.cleanup_expired_idempotency_records()",
            f"schema {USER}",
        ),
        user_schema=True,
    ),
    # 047 keeps no function of its names made by another role (and, above, acts on the install
    # only, in no temporary schema, and starts no second copy).
    Refusal(
        "protocol_function_owned_by_another_role",
        UP_047,
        "42723",
        ("schema public holds a function of 047's names", f"owned by {deployers.PLANTER}"),
    ),
    # What is not 045's is not removed by 045.down.
    Refusal("table_of_another_shape", DOWN_045, "55000", ("public.idempotency_records",), migrated=False),
    Refusal("index_name_on_another_table", DOWN_045, "55000", ("public.idx_idempotency_operation", "audit_log")),
    Refusal("table_of_another_shape", UP_045, "42P07", ("public.idempotency_records",), migrated=False),
    Refusal("index_name_on_another_table", UP_045, "42P07", ("public.idx_idempotency_operation",)),
]


def test_every_fixture_file_is_used() -> None:
    used = {refusal.state for refusal in REFUSALS} | {"cron_schema_planted_without_pg_cron"}
    used |= {"cleanup_function_without_isolation_check", "cleanup_role_with_the_reports_grants"}
    files = {path.stem for path in deployers.STATES.glob("*.sql")}
    assert files == used, f"one fixture file per state, each used: files {sorted(files)}, used {sorted(used)}"


@pytest.mark.parametrize("refusal", REFUSALS, ids=str)
def test_a_refused_state_is_named_and_left_as_it_was(
    pg_server: Server, request: pytest.FixtureRequest, refusal: Refusal
) -> None:
    dbname = request.getfixturevalue("database" if refusal.migrated else "empty_database")
    with pg_server.connect(dbname, autocommit=True) as conn, deployers.planter_role(conn):
        if refusal.session:
            conn.execute(fixture_sql(deployers.state_path(refusal.state)))
        else:
            deployers.load_state(conn, refusal.state)
        user = conn.info.user
        schemas = ("public", user) if refusal.user_schema else ("public",)
        before = [catalog_snapshot(conn, schema) for schema in schemas], deployers.catalog_versions(conn, *schemas)

        with pytest.raises(psycopg.Error) as raised:
            apply(conn, refusal.path)

        error = raised.value
        names = [name.replace(USER, user) for name in refusal.names]
        message, detail = error.diag.message_primary or "", error.diag.message_detail or ""
        assert error.sqlstate == refusal.sqlstate, f"{refusal}: SQLSTATE {refusal.sqlstate}, got {error!r}"
        assert names[0] in message, f"{refusal}: the message names {names[0]!r}: {message}"
        assert "found" in detail and "expected" in detail, f"{refusal}: DETAIL gives found and expected: {detail}"
        for name in names[1:]:
            assert name in f"{message} {detail}", f"{refusal}: message or DETAIL names {name!r}: {message} / {detail}"
        assert error.diag.message_hint, f"{refusal}: a HINT says what to do"
        after = [catalog_snapshot(conn, schema) for schema in schemas], deployers.catalog_versions(conn, *schemas)
        assert after == before, f"{refusal}: the refused file changed nothing"
        if refusal.session:
            assert conn.execute("SELECT count(*) FROM pg_temp.idempotency_records").fetchone() == (0,)


def test_046_down_never_reads_or_calls_a_cron_schema_pg_cron_did_not_make(
    pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    """Without pg_cron in this database, a schema named cron is another role's: 046.down drops
    the function without reading its job table or calling its unschedule."""
    trap_ran: list[str] = []
    conn.add_notice_handler(lambda notice: trap_ran.append(notice.message_primary or ""))
    with deployers.planter_role(conn):
        deployers.load_state(conn, "cron_schema_planted_without_pg_cron")
        apply(conn, DOWN_046)
        left = conn.execute("SELECT count(*) FROM cron.job").fetchone()
        assert conn.execute("SELECT to_regprocedure('cleanup_expired_idempotency_records()')").fetchone() == (None,)
    assert [text for text in trap_ran if "TRAP" in text] == [], f"046.down ran the planted code: {trap_ran}"
    assert left == (1,), "the planted job table is untouched"


@dataclasses.dataclass(frozen=True)
class Planted:
    """A function of our names another role made before the file that installs it ran."""

    state: str  # tests/fixtures/deploy_states/<state>.sql
    path: Path  # the file that stops, then installs its own
    error: type[psycopg.Error]  # what it stops with
    drop: str  # the planted function, dropped by hand
    owners: str  # the owners of what the file installs
    call: str  # a call of what it installs
    what: str  # what it installs, in a message

    def __str__(self) -> str:
        return self.path.name


PLANTED = [
    # The report's case: 046 applied anyway kept the planted function, and the next call by a
    # superuser ran its body.
    Planted(
        "function_owned_by_another_role",
        UP_046,
        psycopg.errors.InsufficientPrivilege,
        "DROP FUNCTION cleanup_expired_idempotency_records()",
        "SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE oid = 'cleanup_expired_idempotency_records()'::regprocedure",
        "SELECT deleted_count FROM cleanup_expired_idempotency_records()",
        "the function 046 installs belongs",
    ),
    # A superuser's CREATE OR REPLACE keeps a function's owner, who can change its body later.
    Planted(
        "protocol_function_owned_by_another_role",
        UP_047,
        psycopg.errors.DuplicateFunction,
        "DROP FUNCTION idempotency_key(TEXT, TEXT)",
        "SELECT DISTINCT pg_get_userbyid(proowner) FROM pg_proc WHERE proname LIKE 'idempotency\\_%'",
        "SELECT idempotency_key('tenant-a', 'order-1')",
        "the functions 047 installs belong",
    ),
]


@pytest.mark.parametrize("planted", PLANTED, ids=str)
def test_the_planted_function_never_runs_for_a_superuser_after_the_file(
    pg_server: Server, database: str, conn: psycopg.Connection, planted: Planted
) -> None:
    """The file stops instead of keeping the planted function, and once it is dropped installs
    its own, owned by the role applying it; no planted body ever runs."""
    warnings: list[str] = []
    conn.add_notice_handler(lambda notice: warnings.append(notice.message_primary or ""))
    with deployers.planter_role(conn):
        deployers.load_state(conn, planted.state)
        with pytest.raises(planted.error):
            apply(conn, planted.path)
        conn.execute(planted.drop)
        apply(conn, planted.path)
        owners = conn.execute(planted.owners).fetchall()
        conn.execute(planted.call).fetchall()
    assert owners == [(conn.info.user,)], f"{planted.what} to the role applying it: {owners}"
    assert [text for text in warnings if "TRAP" in text] == [], f"a planted body ran: {warnings}"
