"""The committed catalog snapshot: tests/schema/catalog.json holds the sorted catalog rows
(helpers.catalog_snapshot) of every object that a fresh migrate creates in its schema, one value
a line, so that a change of the schema shows as one diff in review. The rows are the same on
PostgreSQL 15, 16 and 18 (pg_catalog's own text for every definition, no pg_dump).

    python3 -m tests.catalog        (make snapshot) write it again, from a fresh migrate

tests/schema/test_schema.py compares the catalog with it and prints the difference.
"""

from __future__ import annotations

import difflib
import json
import os
import sys

import psycopg
from psycopg import sql

from tests import helpers
from tooling import servers

SNAPSHOT = helpers.ROOT / "tests" / "schema" / "catalog.json"
REGENERATE = "make snapshot"


def _field(value: object) -> object:
    """A value as the file holds it: a text of several lines (a function's body) as its lines."""
    if isinstance(value, str) and "\n" in value:
        return {"lines": value.split("\n")}
    return value


def render(snapshot: helpers.Snapshot) -> str:
    """The snapshot as JSON, a kind of object a key, one value a line: a diff shows what changed."""
    document = {kind: [[_field(value) for value in row] for row in rows] for kind, rows in snapshot.items()}
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def committed() -> str:
    return SNAPSHOT.read_text()


def difference(conn: psycopg.Connection) -> str:
    """The unified diff of the committed snapshot and the catalog of conn's public schema
    (empty when they are the same)."""
    found = render(helpers.catalog_snapshot(conn))
    return "".join(
        difflib.unified_diff(
            committed().splitlines(keepends=True),
            found.splitlines(keepends=True),
            fromfile=str(SNAPSHOT.relative_to(helpers.ROOT)),
            tofile="the catalog a fresh migrate creates",
        )
    )


def write() -> str:
    """Migrate a new database on the suite's server (DATABASE_URL, PG*, or a throwaway one) and
    write its catalog to SNAPSHOT; return what was written."""
    name = f"idempotency_test_{os.getpid()}_snapshot"
    with servers.session_server("idempotency-snapshot-", in_memory=True) as server:
        with server.connect(autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        try:
            with server.connect(name, autocommit=True) as conn:
                helpers.apply_all(conn, helpers.UP_FILES)
                text = render(helpers.catalog_snapshot(conn))
        finally:
            with server.connect(autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
    SNAPSHOT.write_text(text)
    return text


def main(argv: list[str]) -> int:
    if argv:
        print("usage: python3 -m tests.catalog   (make snapshot)", file=sys.stderr)
        return 2
    before = committed() if SNAPSHOT.exists() else ""
    after = write()
    print(f"{'unchanged' if after == before else 'wrote'}: {SNAPSHOT.relative_to(helpers.ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
