"""Small helpers shared by the test modules: the migration files, applying them,
catalog snapshots, plan inspection and psql."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tooling import ROOT, SQL_DIR, migrations
from tooling.plans import describe_plan, plan_nodes

__all__ = ["ROOT", "SQL_DIR", "describe_plan", "plan_nodes"]

# Every migration of sql/, read by tooling.migrations: up files in the order they are applied,
# down files in theirs. The contract's own two by name, for the tests about those two, and the
# optional protocol's, 047, for the tests about it.
UP_FILES = migrations.up_files()
DOWN_FILES = migrations.down_files()
_MIGRATIONS = migrations.migrations()
_BY_NUMBER = {m.number: m for m in _MIGRATIONS if m.number in ("045", "046", "047")}
UP_045, DOWN_045 = _BY_NUMBER["045"].up, _BY_NUMBER["045"].down
UP_046, DOWN_046 = _BY_NUMBER["046"].up, _BY_NUMBER["046"].down
UP_047, DOWN_047 = _BY_NUMBER["047"].up, _BY_NUMBER["047"].down
# Every migration's number and stem (NNN_name), in order: what the other tools record.
NUMBERS = tuple(m.number for m in _MIGRATIONS)
STEMS = tuple(m.stem for m in _MIGRATIONS)


def apply(conn: psycopg.Connection, path: Path) -> None:
    """Run a migration file the way a runner does: its whole text, one transaction.

    With no parameters psycopg sends the text with the simple query protocol, so
    a file of several statements runs as written.
    """
    with conn.transaction():
        conn.execute(path.read_text())


def sqlstate_of(conn: psycopg.Connection, query: Any, params: Any = ()) -> str | None:
    """The SQLSTATE a statement fails with (None if it succeeds); its transaction is rolled back."""
    try:
        with conn.transaction():
            conn.execute(query, params)
    except psycopg.Error as error:
        return error.sqlstate
    return None


def apply_all(conn: psycopg.Connection, paths: tuple[Path, ...]) -> None:
    for path in paths:
        apply(conn, path)


def count(conn: psycopg.Connection, where: str = "TRUE") -> int:
    row = conn.execute(f"SELECT count(*) FROM idempotency_records WHERE {where}").fetchone()
    assert row is not None
    return int(row[0])


# A snapshot is a dict of sorted row lists, one per kind of catalog object in the
# given schema. Comparing two snapshots shows a readable diff of what changed;
# unlike pg_dump text it does not vary with the server's major version.
SNAPSHOT_QUERIES: dict[str, str] = {
    "relations": """
        SELECT c.relname, c.relkind::text, c.relpersistence::text,
               obj_description(c.oid, 'pg_class')
        FROM pg_class AS c
        WHERE c.relnamespace = %(schema)s::regnamespace
        ORDER BY 1""",
    # Each column numbered by its position among the table's live columns, not by attnum: a
    # dropped column keeps its number for good (047.down then 047 adds its two columns again
    # with new numbers), and nothing else about the table differs.
    "columns": """
        SELECT c.relname, row_number() OVER (PARTITION BY c.relname ORDER BY a.attnum), a.attname,
               format_type(a.atttypid, a.atttypmod),
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid), col_description(c.oid, a.attnum)
        FROM pg_attribute AS a
        JOIN pg_class AS c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = %(schema)s::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1, 2""",
    "constraints": """
        SELECT t.relname, con.conname, con.contype::text, pg_get_constraintdef(con.oid)
        FROM pg_constraint AS con
        JOIN pg_class AS t ON t.oid = con.conrelid
        WHERE con.connamespace = %(schema)s::regnamespace AND con.contype <> 'n'
        ORDER BY 1, 2""",
    "indexes": """
        SELECT i.tablename, i.indexname, i.indexdef
        FROM pg_indexes AS i
        WHERE i.schemaname = %(schema)s
        ORDER BY 1, 2""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid),
               pg_get_function_result(p.oid), l.lanname, p.prosecdef, p.provolatile::text,
               p.proconfig, p.prosrc, obj_description(p.oid, 'pg_proc')
        FROM pg_proc AS p
        JOIN pg_language AS l ON l.oid = p.prolang
        WHERE p.pronamespace = %(schema)s::regnamespace
        ORDER BY 1, 2""",
    "types": """
        SELECT t.typname, t.typtype::text
        FROM pg_type AS t
        WHERE t.typnamespace = %(schema)s::regnamespace
        ORDER BY 1""",
}


def catalog_snapshot(conn: psycopg.Connection, schema: str = "public") -> dict[str, list[tuple[Any, ...]]]:
    """Sorted catalog rows for every object in `schema`."""
    return {kind: conn.execute(query, {"schema": schema}).fetchall() for kind, query in SNAPSHOT_QUERIES.items()}


def explain(conn: psycopg.Connection, query: str, params: Any = None) -> dict[str, Any]:
    """The top plan node of EXPLAIN (FORMAT JSON) for a query (not executed)."""
    row = conn.execute(f"EXPLAIN (FORMAT JSON) {query}", params).fetchone()
    assert row is not None
    document = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    return dict(document[0]["Plan"])


def psql(
    server: Any, dbname: str, *args: str, stdin: str | None = None, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the real psql binary against a database, never reading ~/.psqlrc."""
    return subprocess.run(
        [server.tool("psql"), "--no-psqlrc", "--quiet", "-d", server.conninfo(dbname), *args],
        env=server.client_env(),  # the password never in argv: /proc/*/cmdline is world-readable
        input=stdin,
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
    )


def split_statements(text: str) -> list[str]:
    """Split SQL text into statements at top-level semicolons, honouring quotes,
    dollar-quoted bodies and comments (enough for this project's files)."""
    statements: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if text.startswith("--", i):
            end = text.find("\n", i)
            end = len(text) if end == -1 else end
            current.append(text[i:end])
            i = end
            continue
        if char == "'":
            end = i + 1
            while True:
                end = text.index("'", end)
                if text.startswith("''", end):
                    end += 2
                    continue
                break
            current.append(text[i : end + 1])
            i = end + 1
            continue
        if char == "$":
            match = re.match(r"\$[A-Za-z_]*\$", text[i:])
            if match:
                tag = match.group(0)
                end = text.index(tag, i + len(tag)) + len(tag)
                current.append(text[i:end])
                i = end
                continue
        if char == ";":
            statement = "".join(current).strip()
            if statement and not all(line.strip().startswith("--") for line in statement.splitlines() if line.strip()):
                statements.append(statement)
            current = []
            i += 1
            continue
        current.append(char)
        i += 1
    return statements


Snapshot = dict[str, list[tuple[Any, ...]]]


def migration_states(conn: psycopg.Connection, schema: str = "public") -> tuple[Snapshot, ...]:
    """Catalog snapshots of the states the files move between, taken on an empty database (left
    empty again): states[i] after the first i up files, so states[0] is nothing, states[1] 045
    applied, states[2] 045 and 046, states[-1] a fresh migrate."""
    states = [catalog_snapshot(conn, schema)]
    for path in UP_FILES:
        apply(conn, path)
        states.append(catalog_snapshot(conn, schema))
    apply_all(conn, DOWN_FILES)
    assert catalog_snapshot(conn, schema) == states[0], "the down files must leave the database as it was"
    return tuple(states)


# --- fixture files (tests/fixtures/) -----------------------------------------------------------

FIXTURES = Path(__file__).resolve().parent / "fixtures"
INCLUDE = re.compile(r"^\\ir (\S+)$", re.MULTILINE)


def fixture_sql(path: Path) -> str:
    """A fixture file's SQL, with the files it includes with psql's \\ir (relative to it) in
    their place: psql runs the file as it is, a psycopg connection runs this."""
    return INCLUDE.sub(lambda match: fixture_sql(path.parent / match.group(1)).rstrip("\n"), path.read_text())


# --- other migration tools (tests/tools/) -----------------------------------------------------

# The user's own earlier migration, versioned by a timestamp, and the table it creates.
USER_VERSION = "20250101120000"
USER_TABLE = "shop_orders"
USER_UP = FIXTURES / "user_history_shop_orders.sql"
USER_DOWN = FIXTURES / "user_history_shop_orders.down.sql"


def without(snapshot: Snapshot, tables: tuple[str, ...]) -> Snapshot:
    """The snapshot minus rows about the given tables (a tool's bookkeeping, the user's
    own): their columns, keys, indexes, sequences and row types."""

    def ours(row: tuple[object, ...]) -> bool:
        name = str(row[0]).lstrip("_")
        return not any(name.startswith(table.lstrip("_")) for table in tables)

    return {kind: [row for row in rows if ours(row)] for kind, rows in snapshot.items()}


def assert_catalog(
    conn: psycopg.Connection, expected: Snapshot, message: str, *, besides: tuple[str, ...] = ()
) -> None:
    """The catalog is `expected`, but for the rows about the tables `besides` (a tool's bookkeeping)."""
    assert without(catalog_snapshot(conn), besides) == expected, message


def assert_undone_newest_first(
    conn: psycopg.Connection,
    states: tuple[Snapshot, ...],
    undo: Callable[[], object],
    message: str,
    *,
    besides: tuple[str, ...] = (),
) -> None:
    """Call a tool's one-step undo once per migration of sql/: each call must undo the newest
    still applied, leaving the catalog of the migrations before it (`states`, as
    migration_states gives them). `message` names the migration undone as {number}."""
    for left in reversed(range(len(NUMBERS))):
        undo()
        assert_catalog(conn, states[left], message.format(number=NUMBERS[left]), besides=besides)


def require(program: str) -> str:
    """Path of a tool's program; skips (a failure in CI) when it is not installed."""
    found = shutil.which(program)
    if found is None:
        pytest.skip(f"{program} is not installed (CI installs it: see .ci/run)")
    return found


def run_tool(
    args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run a tool's command, asserting it exits 0; the message carries its output."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    return result


def tool_env(**settings: str) -> dict[str, str]:
    """The environment a tool runs with: ours plus its settings (credentials go here, never in argv)."""
    return {**os.environ, **settings}


def has_table(conn: psycopg.Connection, name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()
    return bool(row and row[0])


def has_function(conn: psycopg.Connection, signature: str) -> bool:
    """Whether the search_path finds the function `signature` (name and argument types)."""
    row = conn.execute("SELECT to_regprocedure(%s) IS NOT NULL", [signature]).fetchone()
    return bool(row and row[0])
