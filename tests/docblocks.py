"""The docs' fenced blocks: how they are annotated, parsed, run and compared with the results the
text states. tests/docs/test_docs.py runs every block of the docs with it; the runner's own tests
are tests/harness/test_docs_runner.py.

A ```sql block runs in document order on one migrated database and must succeed.
An HTML comment on the line right before the fence changes how it runs:

    <!-- test: error SQLSTATE -->   its LAST statement must fail with exactly that SQLSTATE, and
                                    every statement before it must succeed (the whole block is one
                                    transaction, rolled back, so the sequence goes on)
    <!-- test: psql -->              runs through the real psql binary, on the same database; it
                                    fails on an error and on a meta-command that finds nothing
                                    (`\\df no_such_function` prints "(0 rows)" and exits 0)
    <!-- test: role NAME -->         runs after SET ROLE NAME (RESET ROLE afterwards)
    <!-- test: pg_cron -->           runs in tests/usage/test_pg_cron.py, on a server with pg_cron loaded
    <!-- test: fresh -->             runs alone on its own fresh migrated database
    <!-- test: fresh; data NAME -->  the same, after loading tests/fixtures/data/NAME.sql: the data
                                    the text around the block describes (e.g. 40,000 records)

`role NAME` and `error SQLSTATE` may be combined with `;` (`role app; error 42501`), and either may
follow `fresh` or `pg_cron`. Anything else is an error, and so is an annotation that does not sit
right before a fence. Roles the blocks create are dropped at the end: roles are cluster-wide.

A result stated in the text is compared with what the block returns. The block's result is that
of its last statement that returns rows (an `EXPLAIN` between `BEGIN` and `ROLLBACK` counts):

    -- returns: no row                        the block's last lines, as SQL comments: no row,
    -- returns: deleted_count = 150           or exactly one row whose named columns hold these
                                              values, as text (the other columns are not compared)

    <!-- test: result -->    before a ```text fence that follows the block (prose may sit between,
                             no other fence): a psql-style table (header, dashes, rows, an optional
                             "(N rows)") equal to the block's result, cell for cell; after a psql
                             block, lines of psql's output, in order (a line `...` skips any lines)
    <!-- test: plan -->      before a ```text fence that follows an EXPLAIN block: its plan nodes
                             (node type, index, relation; not costs, times or conditions) equal to
                             the plan the block printed, in order

SQL in other fences runs too. A ```bash block that calls psql runs with bash, on its own fresh
migrated database, in a directory where `sql/` and `tests/` are this checkout's: `psql` is the real
psql with its connection options (`-h`, `-p`, `-U`, `-d`) replaced by the test database's,
`docker exec [-i] CONTAINER command` runs the command here, and `make` does nothing (its targets
run in CI: `.ci/run` calls make migrate and make verify). A block that cannot run says why:

    <!-- test: not-run REASON -->  before any fence that is not ```sql
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql

from tests import helpers
from tests.helpers import ROOT
from tooling.servers import Server

GUIDE = ROOT / "docs" / "README_IDEMPOTENCY.md"
QUERIES = ROOT / "docs" / "queries.md"  # the repository's queries, as prepared statements
PERFORMANCE = ROOT / "docs" / "performance.md"  # plans, storage, what make bench measured
RELIABILITY = ROOT / "docs" / "reliability.md"  # what the concurrency and fault tests prove
PATTERNS = ROOT / "docs" / "patterns.md"  # the recipes
TEST_MAP = ROOT / "docs" / "test-map.md"
MANAGED = ROOT / "docs" / "managed-services.md"  # what differs on a managed service
PAGES = (
    QUERIES,
    ROOT / "docs" / "privileges.md",
    PERFORMANCE,
    RELIABILITY,
    PATTERNS,
    ROOT / "docs" / "migration-tools.md",
    MANAGED,
    TEST_MAP,
    ROOT / "docs" / "protocol.md",
)
DOCUMENTS = (GUIDE, ROOT / "README.md", ROOT / "CONTRIBUTING.md", *PAGES)
DATA = ROOT / "tests" / "fixtures" / "data"

FENCE = re.compile(r"^( *)```(\w*)\s*$")  # indented inside a list item too
ANNOTATION = re.compile(r"^\s*<!--\s*test:(.*?)-->\s*$")
SQLSTATE = re.compile(r"^[0-9A-Z]{5}$")
NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
PLACES = ("psql", "fresh", "pg_cron")
RETURNS = re.compile(r"^--\s*returns:\s*(.*?)\s*$")
PSQL_CALL = re.compile(r"(^|[\s;|&(])psql\s")
EMPTY_LISTING = re.compile(r"^\s*List of [^\n]*\n[^\n]*\n[-+]+\n\(0 rows\)", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class Expected:
    """A result printed in the text, in a ```text fence annotated `result` or `plan`."""

    kind: str  # result | plan
    line: int
    lines: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Block:
    """One ```sql block, how its annotation says to run it, and what the text says it returns."""

    path: Path
    line: int  # line of the opening fence, 1-based
    text: str
    place: str = "sequence"  # sequence | psql | fresh | pg_cron
    role: str | None = None
    error: str | None = None
    data: str | None = None
    expected: Expected | None = None

    @property
    def where(self) -> str:
        return f"{shown(self.path)}:{self.line}"

    @property
    def returns(self) -> str | None:
        """The `-- returns:` statement closing the block, if any."""
        stated = [m.group(1) for line in self.text.splitlines() if (m := RETURNS.match(line.strip()))]
        if not stated:
            return None
        last = [line.strip() for line in self.text.splitlines() if line.strip()][-len(stated) :]
        assert all(RETURNS.match(line) for line in last), f"{self.where}: `-- returns:` must close the block"
        return " ".join(stated)

    @property
    def compared(self) -> bool:
        return self.returns is not None or self.expected is not None


@dataclasses.dataclass(frozen=True)
class Shell:
    """A fence of another language that calls psql: run with bash, or not run, with the reason."""

    path: Path
    line: int
    text: str
    not_run: str | None = None

    @property
    def where(self) -> str:
        return f"{shown(self.path)}:{self.line}"


@dataclasses.dataclass(frozen=True)
class Result:
    """The block's last result with columns: names, and every value as PostgreSQL's text."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str | None, ...], ...]


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def prose(path: Path = GUIDE) -> str:
    """The document's text with every run of white space one space: a sentence is found in it
    wherever the lines break."""
    return " ".join(path.read_text().split())


def parse_annotation(text: str, where: str) -> dict[str, str]:
    """The directives of one `<!-- test: ... -->` comment; unknown ones raise."""
    found: dict[str, str] = {}
    for part in (p.strip() for p in text.split(";")):
        words = part.split()
        if words in (["psql"], ["fresh"], ["pg_cron"]):
            key, value = "place", words[0]
        elif words in (["result"], ["plan"]):
            key, value = "expected", words[0]
        elif len(words) == 2 and words[0] == "error" and SQLSTATE.match(words[1]):
            key, value = "error", words[1]
        elif len(words) == 2 and words[0] in ("role", "data") and NAME.match(words[1]):
            key, value = words[0], words[1]
        elif len(words) > 1 and words[0] == "not-run":
            key, value = "not_run", " ".join(words[1:])
        else:
            raise AssertionError(f"{where}: unknown test annotation {part!r}")
        if key in found:
            raise AssertionError(f"{where}: annotation gives {key} twice")
        found[key] = value
    alone = {"expected", "not_run"} & found.keys()
    if alone and len(found) > 1:
        raise AssertionError(f"{where}: {', '.join(sorted(alone))} takes no other directive")
    if found.get("place") == "psql" and len(found) > 1:
        raise AssertionError(f"{where}: a psql block takes no role or error directive")
    if "data" in found and found.get("place") != "fresh":
        raise AssertionError(f"{where}: data NAME needs fresh: the data goes into the block's own database")
    if "data" in found and not (DATA / f"{found['data']}.sql").is_file():
        raise AssertionError(f"{where}: no fixture {shown(DATA / (found['data'] + '.sql'))}")
    return found


@dataclasses.dataclass
class _Parsed:
    blocks: list[Block]
    shells: list[Shell]


def _attach(parsed: _Parsed, last_fence: str | None, kind: str, line: int, lines: list[str], where: str) -> None:
    """Give the preceding sql block the result a `result`/`plan` text block states."""
    if last_fence != "sql" or not parsed.blocks:
        raise AssertionError(f"{where}: a `{kind}` block must follow the ```sql block whose result it shows")
    block = parsed.blocks[-1]
    if block.expected is not None:
        raise AssertionError(f"{where}: {block.where} already has a stated result")
    parsed.blocks[-1] = dataclasses.replace(block, expected=Expected(kind, line, tuple(lines)))


def _parse(path: Path) -> _Parsed:
    lines = path.read_text().splitlines()
    parsed = _Parsed([], [])
    pending: tuple[int, dict[str, str]] | None = None
    last_fence: str | None = None
    i = 0
    while i < len(lines):
        where = f"{shown(path)}:{i + 1}"
        annotation = ANNOTATION.match(lines[i])
        fence = FENCE.match(lines[i])
        if pending is not None and not fence:
            raise AssertionError(f"{shown(path)}:{pending[0]}: a test annotation must sit right before a fence")
        if annotation:
            pending = (i + 1, parse_annotation(annotation.group(1), where))
            i += 1
            continue
        if fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
            if end is None:
                raise AssertionError(f"{where}: the fence is never closed")
            indent = len(fence.group(1))
            body = [line[indent:] if line[:indent].isspace() else line for line in lines[i + 1 : end]]
            _fence(parsed, path, fence.group(2), i + 1, body, pending, last_fence)
            last_fence = fence.group(2)
            pending = None
            i = end + 1
            continue
        if "<!--" in lines[i] and "test:" in lines[i]:
            raise AssertionError(f"{where}: a test annotation must be a whole line of its own")
        i += 1
    return parsed


def _fence(
    parsed: _Parsed,
    path: Path,
    language: str,
    line: int,
    body: list[str],
    pending: tuple[int, dict[str, str]] | None,
    last_fence: str | None,
) -> None:
    directives = dict(pending[1]) if pending else {}
    where = f"{shown(path)}:{line}"
    if language == "sql":
        if {"expected", "not_run"} & directives.keys():
            raise AssertionError(f"{where}: a ```sql block always runs; result, plan and not-run are for other fences")
        parsed.blocks.append(Block(path, line, "\n".join(body) + "\n", **directives))
    elif "expected" in directives:
        _attach(parsed, last_fence, directives["expected"], line, body, where)
    elif PSQL_CALL.search("\n".join(body)) or "not_run" in directives:
        if directives.keys() - {"not_run"}:
            raise AssertionError(f"{where}: a ```{language} block takes only not-run REASON")
        parsed.shells.append(Shell(path, line, "\n".join(body) + "\n", directives.get("not_run")))
    elif directives:
        raise AssertionError(f"{where}: a ```{language} block that calls no psql takes no annotation")


def parse_blocks(path: Path) -> list[Block]:
    """Every ```sql block of a Markdown file, with its annotation and stated result."""
    return _parse(path).blocks


def parse_shells(path: Path) -> list[Shell]:
    """Every fence of another language that calls psql (or says why it does not run)."""
    return _parse(path).shells


def block_with(snippet: str, *paths: Path) -> Block:
    """The one sql block of `paths` (every document if none) whose text contains `snippet`."""
    found = [block for path in paths or DOCUMENTS for block in parse_blocks(path) if snippet in block.text]
    assert len(found) == 1, f"exactly one sql block of the docs contains {snippet!r}, found {[b.where for b in found]}"
    return found[0]


def shell_with(snippet: str, *paths: Path) -> Shell:
    """The one shell block of `paths` (every document if none) whose text contains `snippet`."""
    found = [shell for path in paths or DOCUMENTS for shell in parse_shells(path) if snippet in shell.text]
    assert len(found) == 1, (
        f"exactly one shell block of the docs contains {snippet!r}, found {[s.where for s in found]}"
    )
    return found[0]


def pg_cron_blocks() -> list[Block]:
    """The blocks that tests/usage/test_pg_cron.py runs, in document order."""
    return [block for path in DOCUMENTS for block in parse_blocks(path) if block.place == "pg_cron"]


# --- running a block ---------------------------------------------------------------------


def _last_result(cursor: psycopg.Cursor) -> Result | None:
    """The last result set of a (multi-statement) execute that has columns."""
    found: Result | None = None
    while True:
        result = cursor.pgresult
        if result is not None and result.nfields:
            columns = tuple((result.fname(c) or b"").decode() for c in range(result.nfields))
            rows = tuple(
                tuple(None if (v := result.get_value(r, c)) is None else v.decode() for c in range(result.nfields))
                for r in range(result.ntuples)
            )
            found = Result(columns, rows)
        if not cursor.nextset():
            return found


def _execute(conn: psycopg.Connection, text: str, role: str | None) -> Result | None:
    if role is None:
        return _last_result(conn.execute(text))
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    try:
        return _last_result(conn.execute(text))
    finally:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
            conn.execute("RESET ROLE")


def _run_failing(conn: psycopg.Connection, block: Block) -> None:
    """The statements before the last succeed; the last fails with the annotated SQLSTATE."""
    *before, last = helpers.split_statements(block.text + "\n;")  # a last statement may lack its ;
    try:
        # One transaction, rolled back: whatever the block did before failing is undone.
        with conn.transaction():
            if before:
                try:
                    _execute(conn, ";\n".join(before) + ";", block.role)
                except psycopg.Error as error:
                    raise AssertionError(
                        f"{block.where}: block should fail with SQLSTATE {block.error} in its last statement, "
                        f"but an earlier one failed with {error.sqlstate}: {error}"
                    ) from error
            _execute(conn, last, block.role)
    except psycopg.Error as error:
        assert error.sqlstate == block.error, (
            f"{block.where}: block should fail with SQLSTATE {block.error}, failed with {error.sqlstate}: {error}"
        )
    else:
        raise AssertionError(f"{block.where}: block should fail with SQLSTATE {block.error}, but it succeeded")


def run_block(conn: psycopg.Connection, block: Block) -> Result | None:
    """Run one block on an autocommit connection, as its role and error directives say, and
    compare what it returns with what the text states."""
    # psycopg prepares statements it runs often and, after a ROLLBACK or DROP, clears them with
    # DEALLOCATE ALL, which would also remove the PREPAREd statements of the docs.
    conn.prepare_threshold = None
    result: Result | None = None
    if block.error is None:
        try:
            result = _execute(conn, block.text, block.role)
        except psycopg.Error as error:
            raise AssertionError(f"{block.where}: block failed with SQLSTATE {error.sqlstate}: {error}") from error
    else:
        _run_failing(conn, block)
    status = conn.info.transaction_status
    assert status == psycopg.pq.TransactionStatus.IDLE, f"{block.where}: block left a transaction open ({status.name})"
    users = conn.execute("SELECT current_user = session_user").fetchone()
    assert users == (True,), f"{block.where}: block left a SET ROLE behind"
    if block.error is None:
        compare_result(block, result)
    return result


# --- comparing a stated result -----------------------------------------------------------


def _stated_row(block: Block, stated: str) -> dict[str, str]:
    pairs = re.split(r",\s*(?=[a-z_][a-z0-9_]* = )", stated)
    row: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition(" = ")
        assert sep and NAME.match(name), f"{block.where}: `-- returns: {stated}`: expected `no row` or col = value, ..."
        row[name] = value
    return row


def compare_returns(block: Block, result: Result | None) -> None:
    stated = block.returns
    if stated is None:
        return
    assert result is not None, f"{block.where}: the text says it returns {stated!r}, but it returned no result"
    if stated == "no row":
        assert not result.rows, f"{block.where}: the text says no row comes back, got {list(result.rows)}"
        return
    row = _stated_row(block, stated)
    assert len(result.rows) == 1, f"{block.where}: the text states one row ({stated}), got {len(result.rows)} rows"
    found = dict(zip(result.columns, result.rows[0], strict=True))
    for name, value in row.items():
        assert name in found, f"{block.where}: the text names column {name}, the result has {list(result.columns)}"
        assert found[name] == value, f"{block.where}: column {name}: the text says {value!r}, got {found[name]!r}"


def parse_table(expected: Expected, where: str) -> Result:
    """A psql-style aligned table: header, a line of dashes, rows, an optional `(N rows)`."""
    lines = [line for line in expected.lines if line.strip()]
    assert len(lines) >= 2 and re.fullmatch(r"[-+]+", lines[1].strip()), (
        f"{where}: a result table needs a header and a line of dashes"
    )
    footer = re.fullmatch(r"\((\d+) rows?\)", lines[-1].strip())
    body = lines[2:-1] if footer else lines[2:]
    split = lambda line: tuple(cell.strip() for cell in line.split("|"))  # noqa: E731
    rows = tuple(split(line) for line in body)
    if footer:
        assert int(footer.group(1)) == len(rows), f"{where}: the table says {footer.group(0)} but shows {len(rows)}"
    return Result(split(lines[0]), rows)


def plan_shape(lines: list[str] | tuple[str, ...]) -> list[str]:
    """The node lines of a text plan: node type, index and relation, without costs and times."""
    shape = []
    for line in lines:
        text = re.sub(r"^\s*(->\s+)?", "", line)
        text = re.sub(r"\s+\((cost|actual)[^)]*\)", "", text).strip()
        if text and ":" not in text:
            shape.append(text)
    return shape


def compare_result(block: Block, result: Result | None) -> None:
    """The `-- returns:` line and the `result`/`plan` text block, against what the block returned."""
    compare_returns(block, result)
    expected = block.expected
    if expected is None:
        return
    where = f"{shown(block.path)}:{expected.line}"
    assert result is not None, f"{where}: states a result, but {block.where} returned none"
    if expected.kind == "plan":
        printed = [row[0] or "" for row in result.rows]
        assert plan_shape(expected.lines) == plan_shape(printed), (
            f"{where}: the plan in the text is not the plan {block.where} printed:\n" + "\n".join(printed)
        )
        return
    table = parse_table(expected, where)
    returned = tuple(tuple("" if v is None else v for v in row) for row in result.rows)
    assert table.columns == result.columns, f"{where}: columns {table.columns}, the block returned {result.columns}"
    assert table.rows == returned, f"{where}: rows {list(table.rows)}, the block returned {list(returned)}"


def compare_output(block: Block, output: str) -> None:
    """A psql block's output against its `result` text block: its lines, in order; `...` skips."""
    if block.expected is None:
        return
    where = f"{shown(block.path)}:{block.expected.line}"
    printed = [line.strip() for line in output.splitlines()]
    position = 0
    skipping = False
    for line in (line.strip() for line in block.expected.lines):
        if line == "...":
            skipping = True
            continue
        if skipping:
            found = next((i for i in range(position, len(printed)) if printed[i] == line), None)
        else:
            found = position if position < len(printed) and printed[position] == line else None
        assert found is not None, f"{where}: psql did not print {line!r} there:\n{output}"
        position, skipping = found + 1, False


def run_psql_block(server: Server, dbname: str, block: Block) -> str:
    """Run a block through psql, stopping at the first error; a meta-command that finds nothing fails."""
    result = helpers.psql(server, dbname, "-v", "ON_ERROR_STOP=1", stdin="\\set VERBOSITY verbose\n" + block.text)
    if result.returncode != 0:
        state = re.search(r"ERROR:\s+([0-9A-Z]{5}):", result.stderr)
        raise AssertionError(
            f"{block.where}: psql block failed with SQLSTATE {state.group(1) if state else 'unknown'} "
            f"(exit {result.returncode}): {result.stderr.strip()}"
        )
    empty = EMPTY_LISTING.search(result.stdout)
    assert empty is None and "Did not find any" not in result.stdout + result.stderr, (
        f"{block.where}: a meta-command found nothing:\n{result.stdout}{result.stderr}"
    )
    compare_output(block, result.stdout)
    return result.stdout


def server_roles(conn: psycopg.Connection) -> set[str]:
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


def load_data(conn: psycopg.Connection, name: str) -> None:
    """A data fixture, statement by statement in autocommit (it may VACUUM), with the fixtures it
    includes (\\ir) in their place."""
    for statement in helpers.split_statements(helpers.fixture_sql(DATA / f"{name}.sql")):
        conn.execute(statement)


def run_fresh(pg_server: Server, dbname: str, block: Block) -> set[str]:
    """Run a fresh block; return the roles it created (dropped here, before its database goes)."""
    with pg_server.connect(dbname, autocommit=True) as fresh:
        before = server_roles(fresh)
        try:
            if block.data is not None:
                load_data(fresh, block.data)
            run_block(fresh, block)
        finally:
            created = server_roles(fresh) - before
            drop_roles(fresh, created)
    return created


# The guide's pages run after it on the same database: a page may use the roles, grants and
# prepared statements the guide creates, as a reader who followed the guide has them.
SEQUENCES = {"guide and its pages": (GUIDE, *PAGES), "README": (ROOT / "README.md",)}


# --- shell blocks ------------------------------------------------------------------------

SHELL_PRELUDE = r"""
set -euo pipefail
psql() {
    local args=()
    while (($#)); do
        case "$1" in
            -h|-p|-U|-d|--host|--port|--username|--dbname) shift 2 ;;
            --host=*|--port=*|--username=*|--dbname=*) shift ;;
            *) args+=("$1"); shift ;;
        esac
    done
    command "$DOC_PSQL" -d "$DOC_CONNINFO" "${args[@]}"
}
docker() {
    [ "$1" = exec ] || { echo "docker $1: only docker exec runs here" >&2; return 2; }
    shift
    local env=()
    while [[ "$1" == -* ]]; do
        case "$1" in
            -e|--env) env+=("$2"); shift 2 ;;
            *) shift ;;
        esac
    done
    shift  # the container
    (for setting in "${env[@]}"; do export "$setting"; done; "$@")
}
make() { :; }
"""


def shells_to_run(path: Path, tmp_path: Path) -> Iterator[tuple[Shell, Path]]:
    """Every shell block of `path` that runs (not annotated not-run), each with a working
    directory of its own under tmp_path."""
    for shell in parse_shells(path):
        if shell.not_run is None:
            workdir = tmp_path / f"line{shell.line}"
            workdir.mkdir()
            yield shell, workdir


def run_shell(server: Server, dbname: str, shell: Shell, workdir: Path) -> subprocess.CompletedProcess[str]:
    """Run a shell block with bash against `dbname`, in `workdir` (where sql/ and tests/ are ours)."""
    for name in ("sql", "tests"):
        if not (workdir / name).exists():
            (workdir / name).symlink_to(ROOT / name)
    env = server.client_env()
    env.update(DOC_PSQL=server.tool("psql"), DOC_CONNINFO=server.conninfo(dbname), DATABASE_URL=server.conninfo(dbname))
    bash = shutil.which("bash")
    assert bash is not None
    return subprocess.run(
        [bash, "-c", SHELL_PRELUDE + shell.text],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- links and headings -------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of every heading of a Markdown file (headings inside fences are not headings)."""
    found: set[str] = set()
    inside = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
        elif not inside and (heading := re.match(r"^#{1,6} (.*)$", line)):
            found.add(slug(heading.group(1)))
    return found


# --- statements printed twice --------------------------------------------------------------

# A literal, a comment, a run of white space: what two copies of one statement may differ in.
# A string first, so that `--` inside one is no comment; a parameter ($1) stands for a literal;
# a number not part of a name.
LITERAL_OR_COMMENT = re.compile(r"'(?:[^']|'')*'|--[^\n]*|\$\d+|(?<![\w$.])\d+(?:\.\d+)?(?![\w.])")
# A prepared statement prints the statement it prepares: that one is compared too.
PREPARED = re.compile(r"^(?:\s*--[^\n]*\n)*\s*PREPARE\s+\w+\s*(?:\([^)]*\))?\s*AS\s+", re.IGNORECASE)


def normalised(statement: str) -> str:
    """The statement with every string and number literal replaced by `?`, comments dropped,
    white space collapsed and case folded: two copies that differ only in their literals
    ('payment' or 'login', one request_id or another) or in layout compare equal."""
    text = LITERAL_OR_COMMENT.sub(lambda m: "" if m.group().startswith("--") else "?", statement)
    text = re.sub(r"\s+", " ", text).strip().lower()
    return re.sub(r" ?([(),;]) ?", r"\1", text)


DOLLAR_BODY = re.compile(r"(\$[A-Za-z_]*\$)(.*?)\1", re.DOTALL)
# What opens a PL/pgSQL statement list before its first statement.
BLOCK_OPENERS = re.compile(r"^(?:\s*(?:DECLARE\b[^;]*?(?=\bBEGIN\b)|BEGIN|LOOP|THEN|ELSE)\b)+\s*", re.IGNORECASE)


def statements_of(text: str) -> list[str]:
    """The statements of `text`, and those inside its dollar-quoted bodies (a DO block's,
    a function's), each body's own statements stripped of the BEGIN/LOOP that opens them."""
    found = []
    for statement in helpers.split_statements(text + "\n;"):
        if prepared := PREPARED.match(statement):
            statement = statement[prepared.end() :]
        found.append(statement)
        for body in DOLLAR_BODY.finditer(statement):
            found += [BLOCK_OPENERS.sub("", inner) for inner in statements_of(body.group(2))]
    return found


def long_statements(paths: tuple[Path, ...]) -> dict[str, list[str]]:
    """Every SQL statement of five lines or more in the sql blocks of `paths`, also inside a
    DO block or a function body (comments and blank lines left out), by its normalised
    text, with where each copy is printed."""
    found: dict[str, list[str]] = {}
    for path in paths:
        for block in parse_blocks(path):
            for statement in statements_of(block.text):
                lines = [line for line in statement.splitlines() if line.strip() and not line.strip().startswith("--")]
                if len(lines) >= 5:
                    found.setdefault(normalised(statement), []).append(f"{block.where} ({lines[0].strip()})")
    return found
