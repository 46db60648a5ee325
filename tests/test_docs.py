"""Every fenced sql block of the docs runs, and runs the way its annotation says.

A ```sql block runs in document order on one migrated database and must succeed.
An HTML comment on the line right before the fence changes how it runs:

    <!-- test: error SQLSTATE -->   must fail with exactly that SQLSTATE (its transaction is rolled
                                    back, so the sequence goes on)
    <!-- test: psql -->              runs through the real psql binary, on the same database
    <!-- test: role NAME -->         runs after SET ROLE NAME (RESET ROLE afterwards)
    <!-- test: pg_cron -->           runs in tests/test_pg_cron.py, on a server with pg_cron loaded
    <!-- test: fresh -->             runs alone on its own fresh migrated database

`role NAME` and `error SQLSTATE` may be combined with `;` (`role app; error 42501`), and either may
follow `fresh` or `pg_cron`. Anything else is an error, and so is an annotation that does not sit
right before a ```sql fence. Roles the blocks create are dropped at the end: roles are cluster-wide.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests import helpers
from tests.helpers import ROOT
from tooling.servers import Server

GUIDE = ROOT / "docs" / "README_IDEMPOTENCY.md"
DOCUMENTS = (GUIDE, ROOT / "README.md")

FENCE = re.compile(r"^```(\w*)\s*$")
ANNOTATION = re.compile(r"^\s*<!--\s*test:(.*?)-->\s*$")
SQLSTATE = re.compile(r"^[0-9A-Z]{5}$")
ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
PLACES = ("psql", "fresh", "pg_cron")


@dataclasses.dataclass(frozen=True)
class Block:
    """One ```sql block and how its annotation says to run it."""

    path: Path
    line: int  # line of the opening fence, 1-based
    text: str
    place: str = "sequence"  # sequence | psql | fresh | pg_cron
    role: str | None = None
    error: str | None = None

    @property
    def where(self) -> str:
        return f"{_shown(self.path)}:{self.line}"


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def parse_annotation(text: str, where: str) -> dict[str, str]:
    """The directives of one `<!-- test: ... -->` comment; unknown ones raise."""
    found: dict[str, str] = {}
    for part in (p.strip() for p in text.split(";")):
        words = part.split()
        if words == ["psql"] or words == ["fresh"] or words == ["pg_cron"]:
            key, value = "place", words[0]
        elif len(words) == 2 and words[0] == "error" and SQLSTATE.match(words[1]):
            key, value = "error", words[1]
        elif len(words) == 2 and words[0] == "role" and ROLE_NAME.match(words[1]):
            key, value = "role", words[1]
        else:
            raise AssertionError(f"{where}: unknown test annotation {part!r}")
        if key in found:
            raise AssertionError(f"{where}: annotation gives {key} twice")
        found[key] = value
    if found.get("place") == "psql" and len(found) > 1:
        raise AssertionError(f"{where}: a psql block takes no role or error directive")
    return found


def parse_blocks(path: Path) -> list[Block]:
    """Every ```sql block of a Markdown file, with its annotation."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    pending: tuple[int, dict[str, str]] | None = None
    i = 0
    while i < len(lines):
        where = f"{_shown(path)}:{i + 1}"
        annotation = ANNOTATION.match(lines[i])
        fence = FENCE.match(lines[i])
        if pending is not None and not (fence and fence.group(1) == "sql"):
            raise AssertionError(f"{_shown(path)}:{pending[0]}: a test annotation must sit right before a ```sql fence")
        if annotation:
            pending = (i + 1, parse_annotation(annotation.group(1), where))
            i += 1
            continue
        if fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].rstrip() == "```"), None)
            if end is None:
                raise AssertionError(f"{where}: the fence is never closed")
            if fence.group(1) == "sql":
                directives = pending[1] if pending else {}
                blocks.append(Block(path, i + 1, "\n".join(lines[i + 1 : end]) + "\n", **directives))
            pending = None
            i = end + 1
            continue
        if "<!--" in lines[i] and "test:" in lines[i]:
            raise AssertionError(f"{where}: a test annotation must be a whole line of its own")
        i += 1
    return blocks


def pg_cron_blocks() -> list[Block]:
    """The blocks that tests/test_pg_cron.py runs, in document order."""
    return [block for path in DOCUMENTS for block in parse_blocks(path) if block.place == "pg_cron"]


def _execute(conn: psycopg.Connection, block: Block) -> None:
    if block.role is None:
        conn.execute(block.text)
        return
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(block.role)))
    try:
        conn.execute(block.text)
    finally:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
            conn.execute("RESET ROLE")


def run_block(conn: psycopg.Connection, block: Block) -> None:
    """Run one block on an autocommit connection, as its role and error directives say."""
    # psycopg prepares statements it runs often and, after a ROLLBACK or DROP, clears them with
    # DEALLOCATE ALL, which would also remove the PREPAREd statements of the docs.
    conn.prepare_threshold = None
    if block.error is None:
        try:
            _execute(conn, block)
        except psycopg.Error as error:
            raise AssertionError(f"{block.where}: block failed with SQLSTATE {error.sqlstate}: {error}") from error
    else:
        try:
            # One transaction, rolled back: whatever the block did before failing is undone.
            with conn.transaction():
                _execute(conn, block)
        except psycopg.Error as error:
            assert error.sqlstate == block.error, (
                f"{block.where}: block should fail with SQLSTATE {block.error}, failed with {error.sqlstate}: {error}"
            )
        else:
            raise AssertionError(f"{block.where}: block should fail with SQLSTATE {block.error}, but it succeeded")
    status = conn.info.transaction_status
    assert status == psycopg.pq.TransactionStatus.IDLE, f"{block.where}: block left a transaction open ({status.name})"
    users = conn.execute("SELECT current_user = session_user").fetchone()
    assert users == (True,), f"{block.where}: block left a SET ROLE behind"


def run_psql_block(server: Server, dbname: str, block: Block) -> None:
    """Run a block through psql, stopping at the first error."""
    result = helpers.psql(server, dbname, "-v", "ON_ERROR_STOP=1", stdin="\\set VERBOSITY verbose\n" + block.text)
    if result.returncode != 0:
        state = re.search(r"ERROR:\s+([0-9A-Z]{5}):", result.stderr)
        raise AssertionError(
            f"{block.where}: psql block failed with SQLSTATE {state.group(1) if state else 'unknown'} "
            f"(exit {result.returncode}): {result.stderr.strip()}"
        )


def _roles(conn: psycopg.Connection) -> set[str]:
    """Roles on the server, less the idempotency_test_* roles that other tests'
    fixtures own (and may be creating right now, from another worker)."""
    return {
        row[0] for row in conn.execute(r"SELECT rolname FROM pg_roles WHERE rolname NOT LIKE 'idempotency\_test\_%'")
    }


def drop_roles(conn: psycopg.Connection, roles: set[str]) -> None:
    """Drop roles created during a test; `conn` is on the last database they hold privileges in."""
    for role in sorted(roles):
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _run_fresh(pg_server: Server, dbname: str, block: Block) -> set[str]:
    """Run a fresh block; return the roles it created (dropped here, before its database goes)."""
    with pg_server.connect(dbname, autocommit=True) as fresh:
        before = _roles(fresh)
        try:
            run_block(fresh, block)
        finally:
            created = _roles(fresh) - before
            drop_roles(fresh, created)
    return created


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_every_sql_block_runs_as_annotated(
    pg_server: Server,
    database: str,
    conn: psycopg.Connection,
    fresh_database: Callable[[], str],
    path: Path,
) -> None:
    blocks = parse_blocks(path)
    roles_before = _roles(conn)
    deferred: list[Block] = []
    try:
        for block in blocks:
            if block.place == "sequence":
                run_block(conn, block)
            elif block.place == "psql":
                run_psql_block(pg_server, database, block)
            elif block.place == "fresh":
                _run_fresh(pg_server, fresh_database(), block)
            else:
                deferred.append(block)
    finally:
        drop_roles(conn, _roles(conn) - roles_before)
    expected = [b for b in pg_cron_blocks() if b.path == path]
    assert deferred == expected, "every pg_cron block is the one tests/test_pg_cron.py runs, none is dropped"


def test_annotations_are_understood() -> None:
    for directive in ("error 23514", "psql", "role app_user", "pg_cron", "fresh", "role app; error 42501"):
        parse_annotation(directive, "here")
    for wrong in ("errors 23514", "error 2351", "role", "skip", "psql; error 42501", "role a; role b"):
        with pytest.raises(AssertionError):
            parse_annotation(wrong, "here")


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_every_sql_fence_is_a_parsed_block(path: Path) -> None:
    fences = sum(1 for line in path.read_text().splitlines() if line.rstrip() == "```sql")
    assert len(parse_blocks(path)) == fences, f"{path.name}: every ```sql fence at the start of a line is a block"


def test_the_guide_has_blocks_of_every_kind() -> None:
    blocks = parse_blocks(GUIDE)
    kinds = {
        "plain": sum(1 for b in blocks if b.place == "sequence" and b.error is None and b.role is None),
        "error": sum(1 for b in blocks if b.error is not None),
        "role": sum(1 for b in blocks if b.role is not None),
        "psql": sum(1 for b in blocks if b.place == "psql"),
        "pg_cron": sum(1 for b in blocks if b.place == "pg_cron"),
        "fresh": sum(1 for b in blocks if b.place == "fresh"),
    }
    # What the guide's own sections hold today: a block removed by mistake shows up here.
    minimum = {"plain": 50, "error": 13, "role": 8, "psql": 1, "pg_cron": 4, "fresh": 2}
    short = {kind: (kinds[kind], least) for kind, least in minimum.items() if kinds[kind] < least}
    assert not short, f"the guide has fewer blocks than it documents (kind: (found, expected at least)): {short}"


SELF_TEST = """\
<!-- test: error 23514 -->
```sql
INSERT INTO idempotency_records (request_id, operation, result_payload, expires_at)
VALUES ('00000000-0000-0000-0000-0000000000d1', 'x', '{}', now() - INTERVAL '1 hour');
```

```sql
CREATE ROLE ROLE_NAME_HERE NOLOGIN;
GRANT SELECT ON idempotency_records TO ROLE_NAME_HERE;
```

<!-- test: role ROLE_NAME_HERE -->
```sql
SELECT count(*) FROM idempotency_records;
```

<!-- test: role ROLE_NAME_HERE; error 42501 -->
```sql
DELETE FROM idempotency_records;
```

<!-- test: psql -->
```sql
\\d idempotency_records
```
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "doc.md"
    path.write_text(text)
    return path


def test_the_runner_runs_each_kind_of_block(
    tmp_path: Path, pg_server: Server, database: str, conn: psycopg.Connection
) -> None:
    role = f"docs_selftest_{os.getpid()}"
    blocks = parse_blocks(_write(tmp_path, SELF_TEST.replace("ROLE_NAME_HERE", role)))
    assert [(b.place, b.role, b.error) for b in blocks] == [
        ("sequence", None, "23514"),
        ("sequence", None, None),
        ("sequence", role, None),
        ("sequence", role, "42501"),
        ("psql", None, None),
    ]
    try:
        for block in blocks[:4]:
            run_block(conn, block)
        run_psql_block(pg_server, database, blocks[4])
    finally:
        drop_roles(conn, {role})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "<!-- test: error 42501 -->\n```sql\nSELECT 1;\n```\n",
            r"doc.md:2: block should fail with SQLSTATE 42501, but it succeeded",
        ),
        (
            "<!-- test: error 42501 -->\n```sql\nSELECT 1/0;\n```\n",
            r"doc.md:2: block should fail with SQLSTATE 42501, failed with 22012",
        ),
        ("text\n\n```sql\nSELECT * FROM missing;\n```\n", r"doc.md:3: block failed with SQLSTATE 42P01"),
        ("```sql\nBEGIN;\n```\n", r"doc.md:1: block left a transaction open"),
        ("<!-- test: fresh -->\n\n```sql\nSELECT 1;\n```\n", r"doc.md:1: a test annotation must sit right before"),
        ("<!-- test: maybe -->\n```sql\nSELECT 1;\n```\n", r"doc.md:1: unknown test annotation 'maybe'"),
    ],
)
def test_the_runner_reports_a_wrong_block_by_file_and_line(
    tmp_path: Path, conn: psycopg.Connection, text: str, message: str
) -> None:
    with pytest.raises(AssertionError, match=message):
        for block in parse_blocks(_write(tmp_path, text)):
            run_block(conn, block)


def test_a_failing_psql_block_names_its_sqlstate(tmp_path: Path, pg_server: Server, database: str) -> None:
    (block,) = parse_blocks(_write(tmp_path, "<!-- test: psql -->\n```sql\nSELECT * FROM missing;\n```\n"))
    with pytest.raises(AssertionError, match=r"doc.md:2: psql block failed with SQLSTATE 42P01"):
        run_psql_block(pg_server, database, block)


def test_the_pg_cron_test_runs_every_pg_cron_block() -> None:
    from tests import test_pg_cron

    runner = inspect.getsource(test_pg_cron.test_the_documented_pg_cron_blocks_all_run)
    assert test_pg_cron.pg_cron_blocks is pg_cron_blocks, "tests/test_pg_cron.py selects the blocks with this module"
    assert "pg_cron_blocks()" in runner and "run_block(" in runner, "and runs every one of them"
    assert not any(
        mark.name == "skip"
        for mark in getattr(test_pg_cron.test_the_documented_pg_cron_blocks_all_run, "pytestmark", [])
    )
