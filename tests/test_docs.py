"""Every fenced sql block of the docs runs, in order, on a migrated database."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from tests.helpers import ROOT

DOCUMENTS = (ROOT / "docs" / "README_IDEMPOTENCY.md", ROOT / "README.md")
BLOCK = re.compile(r"^```sql\n(.*?)^```", re.MULTILINE | re.DOTALL)


def sql_blocks(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every ```sql block."""
    text = path.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in BLOCK.finditer(text)]


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_every_sql_block_runs_in_order(conn: psycopg.Connection, path: Path) -> None:
    for line, block in sql_blocks(path):
        try:
            conn.execute(block)
        except psycopg.Error as error:
            raise AssertionError(f"{path.name}:{line}: block failed with {error.sqlstate}: {error}") from error


def test_the_guide_has_sql_blocks() -> None:
    assert len(sql_blocks(DOCUMENTS[0])) >= 3
