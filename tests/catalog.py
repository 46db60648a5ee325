"""The committed catalog snapshot: tests/schema/catalog.json holds the sorted catalog rows
(helpers.catalog_snapshot) of every object that a fresh migrate creates in its schema, one value
a line, so that a change of the schema shows as one diff in review. The rows are the same on
PostgreSQL 15, 16 and 18 (pg_catalog's own text for every definition, no pg_dump).

tests/schema/test_schema.py compares the catalog of a fresh migrate with it and prints the
difference; `make snapshot` runs that test with IDEMPOTENCY_WRITE_SNAPSHOT=1, which writes the
file instead.
"""

from __future__ import annotations

import difflib
import json

import psycopg

from tests import helpers

SNAPSHOT = helpers.ROOT / "tests" / "schema" / "catalog.json"
REGENERATE = "make snapshot"
WRITE = "IDEMPOTENCY_WRITE_SNAPSHOT"  # set to 1: the test writes the snapshot instead of comparing


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


def write(conn: psycopg.Connection) -> bool:
    """Write the catalog of conn's public schema to SNAPSHOT; whether the file changed."""
    text = render(helpers.catalog_snapshot(conn))
    changed = not SNAPSHOT.exists() or committed() != text
    SNAPSHOT.write_text(text)
    return changed
