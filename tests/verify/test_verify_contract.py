"""The verification script's copy of what 046 creates is what 046 creates: the sha256 of the
function's body and its settings, each written once in the script (one `\\set` line each), equal
what applying sql/046 gives, in public and in a schema whose name needs quoting. A change of the
body or the settings in 046 fails this test until the script is updated. A body one character off
is not ok, with a HINT to apply 046 again; the same body with Windows line ends passes."""

from __future__ import annotations

import hashlib
import re

import psycopg
import pytest
from psycopg import sql

from tests import verification
from tests.helpers import UP_FILES
from tooling.servers import Server

SET_LINE = re.compile(r"^\\set (function_body_sha256|function_settings) (.*)$", re.MULTILINE)


def embedded() -> dict[str, str]:
    """The values the script compares, from its `\\set` lines (each must be there once)."""
    found = SET_LINE.findall(verification.SCRIPT.read_text())
    names = [name for name, _ in found]
    assert sorted(names) == ["function_body_sha256", "function_settings"], f"each written once: {names}"
    return {name: value.strip("'") for name, value in found}


def _function(conn: psycopg.Connection, schema: str) -> tuple[str, list[str]]:
    row = conn.execute(
        "SELECT p.prosrc, coalesce(p.proconfig, '{}') FROM pg_proc AS p "
        "WHERE p.pronamespace = %s::regnamespace AND p.proname = 'cleanup_expired_idempotency_records'",
        (sql.Identifier(schema).as_string(conn),),
    ).fetchone()
    assert row is not None, f"046 created no function in {schema}"
    return row[0], sorted(row[1])


@pytest.mark.parametrize("schema", ["public", 'we"ird app'])
def test_the_embedded_body_and_settings_are_what_046_creates(empty_conn: psycopg.Connection, schema: str) -> None:
    if schema != "public":
        verification.install(empty_conn, schema)
    else:
        for path in UP_FILES:
            empty_conn.execute(path.read_text())
    body, settings = _function(empty_conn, schema)
    expected = embedded()
    assert hashlib.sha256(body.replace("\r\n", "\n").encode()).hexdigest() == expected["function_body_sha256"], (
        "sql/046 ships another body than the script compares: update \\set function_body_sha256 in "
        f"{verification.SCRIPT.name} (and say in the guide what changed)"
    )
    row = empty_conn.execute("SELECT format(%s, %s::text)", (expected["function_settings"], schema)).fetchone()
    assert row is not None
    assert "; ".join(settings) == row[0], (
        f"sql/046 sets {settings}: update \\set function_settings in {verification.SCRIPT.name}"
    )


def _replace_body(conn: psycopg.Connection, body: str) -> None:
    """CREATE OR REPLACE the function with `body`, then pin it as 046 does."""
    conn.execute(
        sql.SQL(
            "CREATE OR REPLACE FUNCTION cleanup_expired_idempotency_records() RETURNS TABLE (deleted_count BIGINT) "
            "LANGUAGE plpgsql AS {}"
        ).format(sql.Literal(body))
    )
    conn.execute("ALTER FUNCTION cleanup_expired_idempotency_records() SET search_path = pg_catalog, public, pg_temp")


def test_a_body_one_character_off_is_not_ok_with_a_hint_to_apply_046_again(
    pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    body, _ = _function(conn, "public")
    _replace_body(conn, body.replace("FOR UPDATE SKIP LOCKED", "FOR UPDATE  SKIP LOCKED"))
    run = verification.run_script(pg_server, database)
    assert run.returncode != 0
    ok, text = run.line("function body is the one 046 ships")
    assert not ok and "found another body (sha256 " in text, run.describe()
    assert any("apply sql/046_create_idempotency_cleanup_job.sql again" in hint for hint in run.diagnostics("HINT"))
    assert run.not_ok == [text], "only the body differs"


def test_the_same_body_with_windows_line_ends_passes(
    pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    """A checkout with CRLF line ends (git on Windows) applies 046 with \\r\\n in the body."""
    body, _ = _function(conn, "public")
    _replace_body(conn, body.replace("\n", "\r\n"))
    assert "\r\n" in _function(conn, "public")[0]
    verification.assert_passes(verification.run_script(pg_server, database))
