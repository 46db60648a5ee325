"""Damaged databases: the verification script names the damage on the right check, in full mode
and with catalog_only=1, and skips its behaviour tests; re-applying the up files (045, 046, 047)
then repairs it or refuses it with the documented SQLSTATE, a message naming the object, found vs expected and a HINT, changing
nothing. Never does the script exit 0 on a table that is not the contract, and never do the files
accept one that the script rejects.

Each damaged state is a fixture file, tests/fixtures/states/<state>.sql; the table of cases is in
docs/test-map.md, "The verification script".
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import psycopg
import pytest

from tests import deployers, verification
from tests.helpers import UP_046, UP_FILES, apply, catalog_snapshot, count
from tooling.servers import Server

INTRUDER = "idempotency_test_app_intruder"  # the role the fixture files name
REPAIRED = "repaired"


@dataclasses.dataclass(frozen=True)
class Damage:
    state: str  # tests/fixtures/states/<state>.sql
    check: str  # the script's check that must be `not ok`
    outcome: str  # REPAIRED, or the SQLSTATE re-applying fails with
    names: str = "public.idempotency_records"  # what the error message must name
    files: tuple[Path, ...] = UP_FILES  # re-applied in order
    migrated: bool = True  # the fixture starts from a migrated database, else an empty one
    role: str | None = None  # the untrusted role the fixture names, if any: created for it, dropped after
    options: str | None = None  # PGOPTIONS for the script's session (a session-level state)

    def __str__(self) -> str:
        return self.state if self.files == UP_FILES else f"{self.state}-{'+'.join(p.name[:3] for p in self.files)}"


EXISTS = "table idempotency_records exists"
OWNED = "are owned by one role"
TRIGGER = "no trigger on idempotency_records"
BODY = "function body is the one 046 ships"
SETTINGS = "function settings exactly as 046 sets them"
OTHER_COLUMNS = "other columns:"
OTHER_INDEXES = "other indexes:"

DAMAGES = [
    # the table's constraints and columns
    Damage("no_primary_key", "primary key idempotency_records_pkey", "42P07"),
    Damage("check_replaced_by_true", "check constraint chk_expires_at", "42P07"),
    Damage("check_not_valid", "check constraint chk_expires_at", "42P07"),
    Damage("unique_operation_status_code", "no other constraint on idempotency_records", "55000"),
    Damage("created_at_default_dropped", "column created_at", "42P07"),
    Damage("created_at_default_clock_timestamp", "column created_at", "42P07"),
    Damage("operation_type_text", "column operation", "42P07"),
    Damage("operation_widened_to_varchar_200", "column operation", "42P07"),
    Damage("operation_collation_c", "column operation", "42P07"),
    Damage("status_code_dropped", "column status_code", "42P07"),
    Damage("extra_not_null_column_without_default", OTHER_COLUMNS, "55000"),
    Damage("extra_column_default_calls_a_function", OTHER_COLUMNS, "55000"),
    # the indexes
    Damage(
        "expires_index_on_another_column", "index idx_idempotency_expires", "42P07", "public.idx_idempotency_expires"
    ),
    Damage("expires_index_using_hash", "index idx_idempotency_expires", "42P07", "public.idx_idempotency_expires"),
    Damage("expires_index_invalid", "index idx_idempotency_expires", "55000", "public.idx_idempotency_expires"),
    Damage("expires_index_missing", "index idx_idempotency_expires", REPAIRED),
    Damage("partial_unique_index", OTHER_INDEXES, "55000"),
    Damage("extra_index_calls_a_function", OTHER_INDEXES, "55000"),
    # what the table is, who owns it, what runs on it
    Damage("unlogged_table", "table idempotency_records is permanent", "42P07"),
    Damage("partitioned_table", EXISTS, "42P07", migrated=False),
    Damage("view_named_idempotency_records", EXISTS, "55000", migrated=False),
    Damage("foreign_table", EXISTS, "42P07", migrated=False),
    Damage("inheritance_child", "no parent, child or partition", "55000"),
    Damage("table_owned_by_another_role", OWNED, "42501", role=INTRUDER),
    Damage("table_precreated_by_another_role_with_trigger", TRIGGER, "42501", migrated=False, role=deployers.PLANTER),
    Damage("statement_trigger", TRIGGER, "55000"),
    Damage("trigger_enabled_for_replicas_only", TRIGGER, "55000"),
    Damage("trigger_privilege_granted_to_another_role", "may add triggers", "55000", role=INTRUDER),
    Damage("trigger_privilege_granted_to_another_role", "may add triggers", "55000", files=(UP_046,), role=INTRUDER),
    Damage("rule_on_delete", "no rule on idempotency_records", "55000"),
    Damage("rls_forced_with_policy", "no row security and no policy", "55000"),
    Damage("rls_forced_with_policy", "no row security and no policy", "55000", files=(UP_046,)),
    Damage("foreign_key_references_table", "no foreign key references idempotency_records", "55000"),
    Damage("foreign_key_references_table", "no foreign key references idempotency_records", "55000", files=(UP_046,)),
    Damage(
        "search_path_pg_temp_first",
        EXISTS,
        "3F000",
        "idempotency_records",
        migrated=False,
        options="-c search_path=pg_temp,public",
    ),
    Damage("table_absent", EXISTS, "42P01", files=(UP_046,)),
    Damage("expires_at_comment_missing", "comments on the table", REPAIRED),
    # the function
    Damage("function_security_definer", "SECURITY INVOKER", REPAIRED),
    Damage("function_marked_stable", "function attributes", REPAIRED),
    Damage("function_search_path_unpinned", SETTINGS, REPAIRED),
    Damage("function_extra_setting", SETTINGS, REPAIRED),
    Damage("function_body_report_delete_repinned", BODY, REPAIRED),
    Damage("function_body_of_an_earlier_046", BODY, REPAIRED),
    Damage(
        "function_owned_by_another_role",
        OWNED,
        "42501",
        "public.cleanup_expired_idempotency_records()",
        files=(UP_046,),
        role=INTRUDER,
    ),
    Damage("report_original_migrations", BODY, REPAIRED, migrated=False),
    # 047, the optional protocol, where it is installed
    Damage("protocol_claim_body_changed", "function idempotency_claim of 047", REPAIRED),
    Damage("protocol_release_missing", "installed whole, or not at all", REPAIRED),
    Damage("protocol_columns_without_functions", "installed whole, or not at all", REPAIRED),
    Damage("protocol_functions_without_columns", "installed whole, or not at all", REPAIRED),
    Damage("protocol_request_hash_of_type_text", "column request_hash of 047", "42701"),
    Damage("protocol_lease_token_with_a_default", "column lease_token of 047", "42701"),
    Damage(
        "protocol_key_owned_by_another_role",
        "function idempotency_key of 047",
        "42723",
        "schema public holds a function of 047's names",
        role=INTRUDER,
    ),
    Damage("protocol_overload_of_claim", "no other function of 047's names", "42723", "schema public"),
    Damage("protocol_release_of_another_result", "function idempotency_release of 047", "42723", "schema public"),
]


def test_every_fixture_file_is_a_case() -> None:
    files = {path.stem for path in verification.FIXTURES.glob("*.sql")}
    assert files == {damage.state for damage in DAMAGES}, "one fixture file per damaged state, each tested"


def reapply(conn: psycopg.Connection, files: tuple[Path, ...]) -> psycopg.Error | None:
    """Apply the files in order, each in its own transaction; the first error, or None."""
    for path in files:
        try:
            apply(conn, path)
        except psycopg.Error as error:
            return error
    return None


@pytest.mark.parametrize("damage", DAMAGES, ids=str)
def test_a_damaged_database_is_named_by_the_script_and_repaired_or_refused(
    pg_server: Server, request: pytest.FixtureRequest, damage: Damage
) -> None:
    dbname = request.getfixturevalue("database" if damage.migrated else "empty_database")
    with (
        pg_server.connect(dbname, autocommit=True) as conn,
        deployers.planter_role(conn, damage.role) if damage.role else contextlib.nullcontext(),
    ):
        verification.load_fixture(conn, damage.state)

        for mode in ((), ("catalog_only=1",)):
            run = verification.run_script(pg_server, dbname, *mode, options=damage.options)
            assert run.returncode != 0, f"{damage} {mode}: the script must exit non-zero\n{run.describe()}"
            assert len(run.results) == run.plan == verification.PLANNED, (
                f"{damage}: every test printed\n{run.describe()}"
            )
            assert any(damage.check in text for text in run.not_ok), (
                f"{damage} {mode}: check {damage.check!r} must be not ok\n{run.describe()}"
            )
            assert len(run.behaviour_skipped) == verification.BEHAVIOUR_TESTS, (
                f"{damage} {mode}: the behaviour tests must not run\n{run.describe()}"
            )

        before = catalog_snapshot(conn)
        rows = count(conn) if damage.outcome == REPAIRED else 0
        error = reapply(conn, damage.files)
        if damage.outcome == REPAIRED:
            assert error is None, f"{damage}: re-applying must succeed, got {error}"
            assert count(conn) == rows, f"{damage}: re-applying must keep every stored record"
            after = verification.run_script(pg_server, dbname)
            assert after.returncode == 0 and not after.not_ok, (
                f"{damage}: repaired, the script passes\n{after.describe()}"
            )
            return
        assert error is not None, f"{damage}: re-applying {[p.name for p in damage.files]} must not succeed"
        assert error.sqlstate == damage.outcome, f"{damage}: expected SQLSTATE {damage.outcome}, got {error!r}"
        assert damage.names in error.diag.message_primary, f"{damage}: the message must name {damage.names}: {error}"
        detail = error.diag.message_detail or ""
        assert "found" in detail and "expected" in detail, f"{damage}: DETAIL must give found vs expected: {detail}"
        assert error.diag.message_hint, f"{damage}: a HINT must say how to fix it"
        assert catalog_snapshot(conn) == before, f"{damage}: the refused file must change nothing"
