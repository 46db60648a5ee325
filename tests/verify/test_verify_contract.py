"""The verification script's copy of what 046 and 047 create is what they create: the sha256 of
each function's body and their settings, each written once in the script (one `\\set` line each),
equal what applying sql/046 and sql/047 gives, in public and in a schema whose name needs quoting.
A change of a body or of the settings in 046 or 047 fails this test until the script is updated. A
body one character off is not ok, with a HINT to apply the file again; the same body with Windows
line ends passes."""

from __future__ import annotations

import dataclasses
import hashlib
import re

import psycopg
import pytest
from psycopg import sql

from tests import verification
from tests.helpers import UP_FILES
from tooling.servers import Server

SET_LINE = re.compile(r"^\\set (\w+_sha256|\w+_settings) (.*)$", re.MULTILINE)
# Each function and the `\\set` lines of its body and its settings.
EMBEDDED = {
    "cleanup_expired_idempotency_records": ("function_body_sha256", "function_settings"),
    "idempotency_claim": ("claim_body_sha256", "protocol_settings"),
    "idempotency_complete": ("complete_body_sha256", "protocol_settings"),
    "idempotency_release": ("release_body_sha256", "protocol_settings"),
    "idempotency_key": ("key_body_sha256", "function_settings"),
}


def embedded() -> dict[str, str]:
    """The values the script compares, from its `\\set` lines (each must be there once)."""
    found = SET_LINE.findall(verification.SCRIPT.read_text())
    names = [name for name, _ in found]
    wanted = {name for pair in EMBEDDED.values() for name in pair}
    assert sorted(names) == sorted(wanted), f"each written once: {names}"
    return {name: value.strip("'") for name, value in found}


def _function(
    conn: psycopg.Connection, schema: str, name: str = "cleanup_expired_idempotency_records"
) -> tuple[str, list[str]]:
    row = conn.execute(
        "SELECT p.prosrc, coalesce(p.proconfig, '{}') FROM pg_proc AS p "
        "WHERE p.pronamespace = %s::regnamespace AND p.proname = %s",
        (sql.Identifier(schema).as_string(conn), name),
    ).fetchone()
    assert row is not None, f"no function {name} in {schema}"
    return row[0], sorted(row[1])


@pytest.mark.parametrize("schema", ["public", 'we"ird app'])
def test_the_embedded_bodies_and_settings_are_what_046_and_047_create(
    empty_conn: psycopg.Connection, schema: str
) -> None:
    if schema != "public":
        verification.install(empty_conn, schema)
    else:
        for path in UP_FILES:
            empty_conn.execute(path.read_text())
    expected = embedded()
    for name, (body_line, settings_line) in EMBEDDED.items():
        body, settings = _function(empty_conn, schema, name)
        assert hashlib.sha256(body.replace("\r\n", "\n").encode()).hexdigest() == expected[body_line], (
            f"the migration ships another body of {name} than the script compares: update \\set {body_line} in "
            f"{verification.SCRIPT.name} (and say in the guide what changed)"
        )
        row = empty_conn.execute("SELECT format(%s, %s::text)", (expected[settings_line], schema)).fetchone()
        assert row is not None
        assert "; ".join(settings) == row[0], (
            f"{name} has the settings {settings}: update \\set {settings_line} in {verification.SCRIPT.name}"
        )


@dataclasses.dataclass(frozen=True)
class Shipped:
    """A function as its migration creates it, and what the script says of another body."""

    name: str
    head: str  # CREATE OR REPLACE FUNCTION's text before AS: arguments, result, language, settings
    signature: str  # its argument types, for ALTER FUNCTION
    line: str  # what the script's line about its body says
    found: str  # what that line says of a body one character off
    hint: str  # what its HINT says
    edit: tuple[str, str]  # a change of one character: text of the body, and its replacement
    skips_behaviour: bool = False  # checked too: every behaviour test is skipped (none calls it untrusted)

    def __str__(self) -> str:
        return self.name


CLEANUP_FUNCTION = Shipped(
    "cleanup_expired_idempotency_records",
    "() RETURNS TABLE (deleted_count BIGINT) LANGUAGE plpgsql",
    "()",
    "function body is the one 046 ships",
    "found another body (sha256 ",
    "apply sql/046_create_idempotency_cleanup_job.sql again",
    ("FOR UPDATE SKIP LOCKED", "FOR UPDATE  SKIP LOCKED"),
)
RELEASE_FUNCTION = Shipped(
    "idempotency_release",
    "(request_id UUID, token UUID) RETURNS BOOLEAN LANGUAGE plpgsql SET lock_timeout = '100ms'",
    "(UUID, UUID)",
    "function idempotency_release of 047",
    "another body (sha256 ",
    "sql/047_create_idempotency_protocol.sql again",
    ("RETURN FOUND;", "RETURN  FOUND;"),
    skips_behaviour=True,
)


def _replace_body(conn: psycopg.Connection, function: Shipped, body: str) -> None:
    """CREATE OR REPLACE the function with `body`, then pin it as its migration does."""
    name = sql.Identifier(function.name)
    conn.execute(
        sql.SQL("CREATE OR REPLACE FUNCTION {}{} AS {}").format(name, sql.SQL(function.head), sql.Literal(body))
    )
    conn.execute(
        sql.SQL("ALTER FUNCTION {}{} SET search_path = pg_catalog, public, pg_temp").format(
            name, sql.SQL(function.signature)
        )
    )


@pytest.mark.parametrize("function", [CLEANUP_FUNCTION, RELEASE_FUNCTION], ids=str)
def test_a_body_one_character_off_is_not_ok_with_a_hint_to_apply_its_file_again(
    pg_server: Server, database: str, conn: psycopg.Connection, function: Shipped
) -> None:
    body, _ = _function(conn, "public", function.name)
    _replace_body(conn, function, body.replace(*function.edit))
    run = verification.run_script(pg_server, database)
    assert run.returncode != 0
    ok, text = run.line(function.line)
    assert not ok and function.found in text, run.describe()
    assert any(function.hint in hint for hint in run.diagnostics("HINT"))
    assert run.not_ok == [text], "only the body differs"
    if function.skips_behaviour:
        assert len(run.behaviour_skipped) == verification.BEHAVIOUR_TESTS, "no test calls a function it does not trust"


def test_the_same_body_with_windows_line_ends_passes(
    pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    """A checkout with CRLF line ends (git on Windows) applies 046 with \\r\\n in the body."""
    body, _ = _function(conn, "public")
    _replace_body(conn, CLEANUP_FUNCTION, body.replace("\n", "\r\n"))
    assert "\r\n" in _function(conn, "public")[0]
    verification.assert_passes(verification.run_script(pg_server, database))
