"""Every query the docs give is safe to paste as a superuser where other roles can CREATE in a
schema on the search_path: no function or operator another role planted runs (CVE-2018-1058),
in any sql block of the docs, any bash block that calls psql, any pg_cron block.

How the calls that another role could capture are found. Every sql block runs in document
order, as tests/docs/test_docs.py runs it, on a server that prints the parse tree of every statement
it analyzes (`debug_print_parse`, sent to the client with `client_min_messages = log`): the
statements the client sends, each statement and expression a DO block runs, the body of a SQL
function the docs create. tests/shadowable.py reads each tree and, for every call the parser
resolved by name and argument types (functions, aggregates, window functions, operators, and the
`=` of IN, = ANY, NULLIF and IS DISTINCT FROM), takes the argument types as the parser saw them:
before the implicit casts it added, an untyped literal as `unknown`. Where those types are not
exactly the ones the resolved built-in declares, a function or operator with exactly those types
(an untyped literal as text for a function, as the other operand's type for an operator) in a
schema on the path would be chosen instead: the call is shadowable. A call written
`pg_catalog.name(...)` is not. The statement's text (the block, what plpgsql ran, or the
function's body) places each call on a line of the docs; statements that are not the docs' text
(the cleanup function's body, the runner's own queries) are left to tests/security/test_shadowing.py.

Run on the docs as they were, the derivation read 191 calls and found 33 shadowable, in 19
blocks, needing 18 distinct planted signatures: tests/fixtures/docs_shadowing_traps.sql plants
16 of them, beside tests/fixtures/hostile_shadowing_traps.sql (tests/security/test_shadowing.py's, which
plants the other two among the traps of the migrations' and the verification script's calls).
PROBES keeps each call in the form the docs had, which the derivation finds and which runs its
trap, and in the form they have now, which does neither.

The tests: the derivation finds no shadowable call in the docs, and every statement of the docs
that reads or writes data was read; every block runs with both fixtures planted and no trap runs
(a WARNING, and nextval on a sequence a rollback does not undo, read after every block, psql
blocks included); the same for the bash blocks and, on a server with pg_cron, the pg_cron blocks.
Each probe's two forms prove the traps armed and the derivation able to fail. Beside functions
and operators, the one table the docs create for the examples, `payments`, is refused when another
role created it first, instead of being written to through that role's trigger.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests import helpers, shadowable
from tests.docblocks import (
    DOCUMENTS,
    GUIDE,
    PATTERNS,
    SEQUENCES,
    Block,
    block_with,
    drop_roles,
    load_data,
    parse_blocks,
    parse_shells,
    pg_cron_blocks,
    run_block,
    run_psql_block,
    run_shell,
    shells_to_run,
    statements_of,
)
from tests.helpers import FIXTURES, UP_FILES, apply
from tests.shadowing_traps import HOSTILE_TRAPS, TRAP_RAN, plant, trap_calls
from tooling import servers
from tooling.servers import Server

# The traps of tests/security/test_shadowing.py (the migrations' and the verification script's calls), then
# those of the calls the docs made before they cast.
TRAPS = (HOSTILE_TRAPS, FIXTURES / "docs_shadowing_traps.sql")

# Each trap a call of the docs was caught by: that call as the docs wrote it, which runs the trap,
# and as they write it now, which runs none (on a migrated database).
PROBES: dict[str, tuple[str, str]] = {
    "= (oid, regclass)": (
        "SELECT reloptions FROM pg_class WHERE oid = 'idempotency_records'::regclass",
        "SELECT reloptions FROM pg_class WHERE oid = 'idempotency_records'::regclass::oid",
    ),
    "* (interval, integer)": (
        "PREPARE probe (INTEGER) AS SELECT now() + INTERVAL '1 hour' * $1; EXECUTE probe(24)",
        "PREPARE probe (DOUBLE PRECISION) AS SELECT now() + INTERVAL '1 hour' * $1; EXECUTE probe(24)",
    ),
    "= (character varying, character varying)": (
        "SELECT r.operation = 'login' FROM (VALUES ('login'::VARCHAR(100))) AS r (operation)",
        "SELECT r.operation::TEXT = 'login' FROM (VALUES ('login'::VARCHAR(100))) AS r (operation)",
    ),
    "= (information_schema.sql_identifier, information_schema.sql_identifier)": (
        "SELECT count(*) FROM information_schema.table_privileges WHERE table_name = 'idempotency_records'",
        "SELECT count(*) FROM information_schema.table_privileges WHERE table_name::NAME = 'idempotency_records'",
    ),
    "= (information_schema.sql_identifier, name)": (
        "SELECT count(*) FROM information_schema.table_privileges WHERE grantee IN ('postgres', 'jive_api_user')",
        "SELECT count(*) FROM information_schema.table_privileges WHERE grantee::NAME IN ('postgres', 'jive_api_user')",
    ),
    "= (information_schema.character_data, character varying)": (
        "SELECT count(*) FROM information_schema.table_privileges WHERE privilege_type IN ('INSERT', 'UPDATE')",
        "SELECT count(*) FROM information_schema.table_privileges WHERE privilege_type::TEXT IN ('INSERT', 'UPDATE')",
    ),
    "* (numeric, bigint)": (
        "SELECT round(100.0 * n_dead_tup / nullif(n_live_tup + n_dead_tup, 0), 2) FROM pg_stat_user_tables",
        "SELECT round(100.0 * n_dead_tup::NUMERIC / nullif(n_live_tup + n_dead_tup, 0)::NUMERIC, 2) "
        "FROM pg_stat_user_tables",
    ),
    "/ (numeric, bigint)": (
        "SELECT round(100.0 * n_dead_tup / nullif(n_live_tup + n_dead_tup, 0), 2) FROM pg_stat_user_tables",
        "SELECT round(100.0 * n_dead_tup::NUMERIC / nullif(n_live_tup + n_dead_tup, 0)::NUMERIC, 2) "
        "FROM pg_stat_user_tables",
    ),
    "pg_total_relation_size(text)": (
        "SELECT pg_total_relation_size('idempotency_records')",
        "SELECT pg_total_relation_size('idempotency_records'::regclass)",
    ),
    "pg_relation_size(text)": (
        "SELECT pg_relation_size('idempotency_records')",
        "SELECT pg_relation_size('idempotency_records'::regclass)",
    ),
    "pg_relation_size(oid)": (
        "SELECT pg_relation_size(indexrelid) FROM pg_stat_user_indexes",
        "SELECT pg_relation_size(indexrelid::regclass) FROM pg_stat_user_indexes",
    ),
    "pg_indexes_size(text)": (
        "SELECT pg_indexes_size('idempotency_records')",
        "SELECT pg_indexes_size('idempotency_records'::regclass)",
    ),
    "has_any_column_privilege(text, text, text)": (
        "SELECT has_any_column_privilege('postgres', 'idempotency_records', 'UPDATE')",
        "SELECT has_any_column_privilege('postgres'::NAME, 'idempotency_records', 'UPDATE')",
    ),
    "has_function_privilege(text, text, text)": (
        "SELECT has_function_privilege('postgres', 'cleanup_expired_idempotency_records()', 'EXECUTE')",
        "SELECT has_function_privilege('postgres'::NAME, 'cleanup_expired_idempotency_records()', 'EXECUTE')",
    ),
    "has_schema_privilege(text, oid, text)": (
        "SELECT n.nspname FROM pg_namespace AS n WHERE has_schema_privilege('public', n.oid, 'CREATE')",
        "SELECT n.nspname FROM pg_namespace AS n WHERE has_schema_privilege('public'::NAME, n.oid, 'CREATE')",
    ),
    "hashtextextended(text, integer)": (
        "SELECT pg_try_advisory_xact_lock(hashtextextended(gen_random_uuid()::TEXT, 0))",
        "SELECT pg_try_advisory_xact_lock(hashtextextended(gen_random_uuid()::TEXT, 0::BIGINT))",
    ),
    "obj_description(regclass, text)": (
        "SELECT obj_description('idempotency_records'::regclass, 'pg_class')",
        "SELECT obj_description('idempotency_records'::regclass::oid, 'pg_class'::NAME)",
    ),
    "col_description(oid, smallint)": (
        "SELECT col_description(a.attrelid, a.attnum) FROM pg_attribute AS a "
        "WHERE a.attrelid = 'idempotency_records'::regclass::oid AND a.attnum > 0",
        "SELECT col_description(a.attrelid, a.attnum::INTEGER) FROM pg_attribute AS a "
        "WHERE a.attrelid = 'idempotency_records'::regclass::oid AND a.attnum > 0",
    ),
}

# Blocks kept out of the checks, by where they start, with the reason. None: every block of the
# docs can be written so that it runs no other role's code.
UNCHECKED: dict[str, str] = {}


SQL_FUNCTION = re.compile(
    r'^SQL function "(?P<name>[^"]+)"(?: statement \d+| during startup| during inlining)?(?:\n|$)'
)


def _sources(analyzed: shadowable.Analyzed, catalog: shadowable.Catalog) -> list[str]:
    """The texts a statement's locations may point into: what the client sent, what plpgsql ran,
    or a SQL function's body."""
    if not analyzed.context:
        return [analyzed.running]
    if (query := shadowable.SPI_QUERY.match(analyzed.context)) is not None:
        return [query.group("query")]
    if (function := SQL_FUNCTION.match(analyzed.context)) is not None:
        rows = catalog.conn.execute(
            "SELECT prosrc FROM pg_catalog.pg_proc WHERE proname = %s", (function.group("name"),)
        )
        return [str(row[0]) for row in rows]
    raise AssertionError(f"a statement analyzed in a context not known here: {analyzed.context!r}")


def _bare(statement: str) -> str:
    """A statement without comments, its white space collapsed, for comparing."""
    return " ".join(re.sub(r"--[^\n]*", "", statement).split()).rstrip(";").strip()


def _statements(text: str) -> set[str]:
    return {_bare(statement) for statement in helpers.split_statements(text + "\n;")}


def _in_docs(statement: bytes, blocks: list[Block]) -> tuple[Block, int] | None:
    """The first block that prints `statement`, and where; plpgsql runs PERFORM x as SELECT x."""
    for block in blocks:
        text = block.text.encode()
        if (at := text.find(statement)) >= 0:
            return block, at
        if statement.startswith(b"SELECT ") and (at := text.find(b"PERFORM " + statement[7:])) >= 0:
            return block, at + 1
    return None


@dataclasses.dataclass(frozen=True)
class Located:
    """A call in the docs' text."""

    block: Block
    line: int
    text: str  # the line of the docs it is on
    call: shadowable.Call

    @property
    def where(self) -> str:
        return f"{self.block.where.rsplit(':', 1)[0]}:{self.line}"


def locate(
    analyzed: shadowable.Analyzed, blocks: list[Block], catalog: shadowable.Catalog
) -> tuple[list[str], list[Located]] | None:
    """The statements of one analyzed tree and their calls, placed in the docs; None if its text
    is not the docs' (the body of a function a block calls, a query of the runner, a prepared
    statement analyzed again when it runs, whose locations point into the text that prepared it)."""
    tree = shadowable.read_tree(analyzed.tree)
    queries = tree if isinstance(tree, list) else [tree]
    for source in _sources(analyzed, catalog):
        encoded = source.encode()
        statements: list[str] = []
        found: list[Located] = []
        for query in queries:
            assert isinstance(query, shadowable.Node) and query.kind == "QUERY", f"not a Query: {query!r}"
            start, length = query.number("stmt_location"), query.number("stmt_len")
            statement = encoded[start : start + length] if length > 0 else encoded[start:]
            if start < 0 or not statement.strip():
                break  # a body in SQL-standard form (BEGIN ATOMIC: pg_catalog's own) has no text
            if not analyzed.context and _bare(statement.decode()) not in _statements(source):
                break  # not one of the statements the client sent
            placed = _in_docs(statement.strip(), blocks)
            if placed is None:
                break
            block, at = placed
            text = block.text.encode()
            lead = len(statement) - len(statement.lstrip())
            statements.append(_bare(statement.decode()))
            for call in shadowable.calls(query, encoded, catalog):
                offset = at + call.location - start - lead if call.location >= 0 else at
                line = text[:offset].count(b"\n")
                found.append(Located(block, block.line + 1 + line, text.splitlines()[line].decode().strip(), call))
        else:
            return statements, found
    return None


def signature(call: shadowable.Call, catalog: shadowable.Catalog) -> str:
    """The function or operator that would capture the call: `name(types)`, `op (left, right)`."""
    types = ", ".join(catalog.type_name(t) for t in call.planted)
    return f"{call.resolved.name} ({types})" if call.kind == "operator" else f"{call.resolved.name}({types})"


def written(call: shadowable.Call, catalog: shadowable.Catalog) -> str:
    args = ", ".join(catalog.type_name(t) for t in call.args)
    declared = ", ".join(catalog.type_name(t) for t in call.declared)
    return f"{call.kind} {call.resolved.schema}.{call.resolved.name} called with ({args}), declared ({declared})"


# --- running the docs ----------------------------------------------------------------------


class Watch:
    """What a run of the docs looks at, on each database it uses."""

    def start(self, conn: shadowable.Recording) -> None:
        """On a new connection, before its first block."""

    def after(self, conn: shadowable.Recording, block: Block) -> None:
        """After each block that ran on the connection's database (through psql too)."""


def _roles(conn: psycopg.Connection) -> set[str]:
    """Roles on the server, less the idempotency_* ones of fixtures (the traps' role included)."""
    return {row[0] for row in conn.execute(r"SELECT rolname FROM pg_roles WHERE rolname NOT LIKE 'idempotency\_%'")}


def run_documents(
    pg_server: Server, database: str, fresh_database: Callable[[], str], paths: tuple[Path, ...], watch: Watch
) -> list[Block]:
    """Run the sql blocks of `paths` as tests/docs/test_docs.py does (in order on one database, a
    `fresh` block on a database of its own after its data, a `psql` block through psql), with
    `watch` looking on. Returns the pg_cron blocks, which need a server of their own."""
    deferred = []
    with pg_server.connect(database, autocommit=True) as plain:
        conn = shadowable.Recording(plain)
        roles = _roles(plain)
        watch.start(conn)
        try:
            for block in (block for path in paths for block in parse_blocks(path)):
                if block.where in UNCHECKED:
                    continue
                if block.place == "sequence":
                    run_block(conn, block)  # type: ignore[arg-type]
                    watch.after(conn, block)
                elif block.place == "psql":
                    run_psql_block(pg_server, database, block)
                    watch.after(conn, block)
                elif block.place == "fresh":
                    _run_fresh(pg_server, fresh_database(), block, watch)
                else:
                    deferred.append(block)
        finally:
            drop_roles(plain, _roles(plain) - roles)
    return deferred


def _run_fresh(pg_server: Server, dbname: str, block: Block, watch: Watch) -> None:
    with pg_server.connect(dbname, autocommit=True) as plain:
        roles = _roles(plain)
        try:
            if block.data is not None:
                load_data(plain, block.data)
            conn = shadowable.Recording(plain)
            watch.start(conn)
            run_block(conn, block)  # type: ignore[arg-type]
            watch.after(conn, block)
        finally:
            drop_roles(plain, _roles(plain) - roles)


DATA_STATEMENT = re.compile(r"(?i)(SELECT|INSERT|UPDATE|DELETE|WITH|VALUES|EXPLAIN|PREPARE)\b")


class Trace(Watch):
    """Every call of the docs' statements, as the server resolved it."""

    def __init__(self, blocks: list[Block]) -> None:
        self.blocks = blocks
        self.tracers: dict[int, shadowable.Tracer] = {}
        self.statements: set[tuple[str, str]] = set()  # (block, statement) analyzed
        self.calls: list[Located] = []
        self.shadowable: list[str] = []

    def start(self, conn: shadowable.Recording) -> None:
        self.tracers[id(conn.conn)] = shadowable.Tracer(conn)

    def after(self, conn: shadowable.Recording, block: Block) -> None:
        catalog = shadowable.Catalog(conn.conn)
        for analyzed in self.tracers[id(conn.conn)].take():
            located = locate(analyzed, [block, *self.blocks], catalog)
            if located is None:
                continue
            statements, calls = located
            self.statements |= {(block.where, statement) for statement in statements}
            self.calls += calls
            self.shadowable += [
                f"{c.where}: {written(c.call, catalog)}; {signature(c.call, catalog)} would run instead\n    {c.text}"
                for c in calls
                if c.call.shadowable
            ]

    def unanalyzed(self, blocks: list[Block]) -> list[str]:
        """The statements of `blocks` that query or change data (also inside a DO block) which
        the server never reported analyzing: a sign that a call was missed. The last statement
        of an `error` block may fail before its analysis ends."""
        missing = []
        for block in blocks:
            statements = statements_of(block.text)
            if block.error is not None:
                statements = statements[:-1]
            analyzed = [statement for where, statement in self.statements if where == block.where]
            for statement in map(_bare, statements):
                if DATA_STATEMENT.match(statement) and not any(statement in seen for seen in analyzed):
                    missing.append(f"{block.where}: {statement[:100]}")
        return missing


class Traps(Watch):
    """The traps of both fixtures planted by a role that can CREATE in public, on every database
    the run uses; which of them ran, after each block."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.checked = 0
        self.seen: dict[int, list[str]] = {}
        self.counted: dict[int, int] = {}

    def start(self, conn: shadowable.Recording) -> None:
        self.seen[id(conn.conn)] = plant(conn.conn, TRAPS)
        self.counted[id(conn.conn)] = 0

    def after(self, conn: shadowable.Recording, block: Block) -> None:
        key = id(conn.conn)
        calls, seen = trap_calls(conn.conn), self.seen[key]
        if calls != self.counted[key] or seen:
            self.ran.append(f"{block.where}: {calls - self.counted[key]} trap calls, {sorted(set(seen)) or 'in psql'}")
        self.counted[key] = calls
        seen.clear()
        self.checked += 1


# The sequences of tests/docs/test_docs.py that hold sql blocks, each on its own database.
RUNS = {name: paths for name, paths in SEQUENCES.items() if any(parse_blocks(path) for path in paths)}


def _blocks(paths: tuple[Path, ...]) -> list[Block]:
    return [block for path in paths for block in parse_blocks(path)]


# --- the docs --------------------------------------------------------------------------------


def test_every_sql_block_of_the_docs_is_checked_here() -> None:
    run = [block for paths in RUNS.values() for block in _blocks(paths)]
    every = [block for path in DOCUMENTS for block in parse_blocks(path)]
    assert sorted(b.where for b in run) == sorted(b.where for b in every), "RUNS covers every sql block"
    assert {b.where for b in every} >= UNCHECKED.keys(), "every block left unchecked exists"


@pytest.mark.parametrize("paths", RUNS.values(), ids=list(RUNS))
def test_every_call_in_the_docs_matches_its_builtin_exactly(
    pg_server: Server, database: str, fresh_database: Callable[[], str], paths: tuple[Path, ...]
) -> None:
    """No call of the docs can be captured: each one's argument types, as the parser saw them,
    are the ones the built-in it resolved to declares (or it names pg_catalog)."""
    blocks = _blocks(paths)
    trace = Trace(blocks)
    run_documents(pg_server, database, fresh_database, paths, trace)
    checked = [b for b in blocks if b.place != "pg_cron" and b.where not in UNCHECKED]
    assert not trace.shadowable, (
        f"{len(trace.shadowable)} calls of the docs a function or operator of another role would capture "
        "(cast the argument to the type the built-in declares):\n" + "\n".join(trace.shadowable)
    )
    missing = trace.unanalyzed(checked)
    assert not missing, "statements whose calls were not read:\n" + "\n".join(missing)
    assert len(trace.calls) >= 100, f"only {len(trace.calls)} calls read: the trace is not working"


def test_a_statement_the_server_never_analyzed_is_reported() -> None:
    blocks = _blocks(RUNS["guide and its pages"])
    missing = Trace(blocks).unanalyzed(blocks)
    assert any("ctid = ANY (ARRAY(" in m for m in missing), "a statement of a DO block"
    assert any("DELETE FROM idempotency_records WHERE request_id = $1" in m for m in missing), "a prepared statement"
    assert len(missing) >= 40, missing


@pytest.mark.parametrize("paths", RUNS.values(), ids=list(RUNS))
def test_no_trap_runs_while_the_docs_run(
    pg_server: Server, database: str, fresh_database: Callable[[], str], paths: tuple[Path, ...]
) -> None:
    traps = Traps()
    deferred = run_documents(pg_server, database, fresh_database, paths, traps)
    assert not traps.ran, "blocks of the docs ran another role's code:\n" + "\n".join(traps.ran)
    blocks = [b for b in _blocks(paths) if b.where not in UNCHECKED]
    assert traps.checked == len(blocks) - len(deferred), "every block ran, and was checked"
    assert deferred == [b for b in pg_cron_blocks() if b.path in paths], "the pg_cron blocks run below"


SHELL_DOCUMENTS = [path for path in DOCUMENTS if any(shell.not_run is None for shell in parse_shells(path))]


@pytest.mark.parametrize("path", SHELL_DOCUMENTS, ids=lambda p: p.name)
def test_no_trap_runs_in_the_shell_blocks(
    pg_server: Server, fresh_database: Callable[[], str], tmp_path: Path, path: Path
) -> None:
    for shell, workdir in shells_to_run(path, tmp_path):
        dbname = fresh_database()
        with pg_server.connect(dbname, autocommit=True) as conn:
            plant(conn, TRAPS)
            done = run_shell(pg_server, dbname, shell, workdir)
            assert done.returncode == 0, f"{shell.where}: exit {done.returncode}\n{done.stdout}{done.stderr}"
            assert TRAP_RAN not in done.stderr, f"{shell.where} ran another role's code:\n{done.stderr}"
            assert trap_calls(conn) == 0, f"{shell.where} ran another role's code (counted)"


# --- pg_cron ---------------------------------------------------------------------------------

CRON_DATABASE = "idempotency_cron_traps"


@pytest.fixture(scope="module")
def cron_server() -> Iterator[Server]:
    """PostgreSQL 15 with pg_cron preloaded, as tests/usage/test_pg_cron.py runs it."""
    missing = servers.pg_cron_missing()
    if missing is not None:
        pytest.skip(missing)
    # The guide's first pg_cron block creates the extension, with the traps planted.
    with servers.pg_cron_server("idempotency-cron-traps-", CRON_DATABASE, create_extension=False) as server:
        with server.connect(autocommit=True) as admin:
            admin.execute("CREATE DATABASE jive_money")  # where the managed-services page schedules its job
        yield server


@pytest.mark.slow
def test_no_trap_runs_in_the_pg_cron_blocks(cron_server: Server) -> None:
    """The guide's role and grants, then every pg_cron block in order, with the traps planted:
    none runs and no call is shadowable."""
    grants = [
        b for b in parse_blocks(GUIDE) if "CREATE ROLE jive_api_user LOGIN" in b.text or "GRANT UPDATE (" in b.text
    ]
    blocks = pg_cron_blocks()
    assert len(grants) == 2 and blocks
    with cron_server.connect(CRON_DATABASE, autocommit=True) as plain:
        for path in UP_FILES:
            apply(plain, path)
        roles = _roles(plain)
        conn = shadowable.Recording(plain)
        traps, trace = Traps(), Trace(blocks)
        traps.start(conn)
        trace.start(conn)
        try:
            for block in (*grants, *blocks):
                run_block(conn, block)  # type: ignore[arg-type]
                traps.after(conn, block)
                trace.after(conn, block)
        finally:
            if plain.execute("SELECT to_regclass('cron.job') IS NOT NULL").fetchone() == (True,):
                plain.execute("SELECT cron.unschedule(jobid) FROM cron.job")
            drop_roles(plain, _roles(plain) - roles)
    assert not traps.ran, "pg_cron blocks ran another role's code:\n" + "\n".join(traps.ran)
    assert not trace.shadowable, "\n".join(trace.shadowable)
    assert not trace.unanalyzed(blocks), trace.unanalyzed(blocks)


# --- the traps and the derivation ------------------------------------------------------------


def _labels(path: Path) -> set[str]:
    """The calls a trap fixture catches: the first string of each of its rows."""
    return set(re.findall(r"\(\s*'([^']+)',\s*'[\w.]+\(", path.read_text()))


def test_every_trap_of_the_docs_has_its_probe() -> None:
    assert _labels(TRAPS[1]) <= PROBES.keys(), f"no probe for {sorted(_labels(TRAPS[1]) - PROBES.keys())}"
    assert PROBES.keys() <= _labels(TRAPS[0]) | _labels(TRAPS[1]), "every probe has its trap"


@pytest.mark.parametrize("trap", sorted(PROBES))
def test_each_trap_runs_for_the_form_the_docs_had_and_not_for_theirs(conn: psycopg.Connection, trap: str) -> None:
    seen = plant(conn, TRAPS)
    unsafe, safe = PROBES[trap]
    conn.execute(unsafe)
    assert trap in seen and trap_calls(conn) >= 1, f"the trap {trap} did not run for {unsafe}: {sorted(set(seen))}"
    conn.execute("DEALLOCATE ALL")
    before, seen[:] = trap_calls(conn), []
    conn.execute(safe)
    assert (seen, trap_calls(conn)) == ([], before), f"{safe} ran another role's code: {sorted(set(seen))}"


def _derived(conn: psycopg.Connection, text: str) -> list[str]:
    """The planted signatures the derivation gives for the calls of `text` (its own statements,
    not those of the functions it calls)."""
    recording = shadowable.Recording(conn)
    tracer = shadowable.Tracer(recording)
    recording.execute(text)
    catalog = shadowable.Catalog(conn)
    found = []
    for analyzed in tracer.take():
        if analyzed.context:
            continue
        tree = shadowable.read_tree(analyzed.tree)
        for call in shadowable.calls(tree, analyzed.running.encode(), catalog):
            if call.shadowable:
                found.append(signature(call, catalog))
    return found


@pytest.mark.parametrize("trap", sorted(PROBES))
def test_the_derivation_gives_each_trap_for_the_form_the_docs_had_and_nothing_for_theirs(
    conn: psycopg.Connection, trap: str
) -> None:
    unsafe, safe = PROBES[trap]
    assert trap in _derived(conn, unsafe), f"the derivation does not find {trap} in {unsafe}"
    conn.execute("DEALLOCATE ALL")
    assert _derived(conn, safe) == [], f"the derivation finds a shadowable call in {safe}"


# How a table name reaches pg_total_relation_size(regclass): the parser sees these untyped (a
# function planted with text wins), and these typed or qualified (pg_catalog's wins).
UNTYPED = ("'pg_class'", "E'pg_class'", "$$pg_class$$", "$name$pg_class$name$", "-- a date\n'pg_class'", "NULL")
TYPED = (
    "'pg_class'::regclass",
    "'pg_class' :: regclass",
    "CAST('pg_class' AS regclass)",
    "regclass 'pg_class'",
    "pg_catalog.regclass 'pg_class'",
    "to_regclass('pg_class')",
)


@pytest.mark.parametrize("argument", UNTYPED + TYPED)
def test_the_derivation_reads_a_literal_as_the_parser_does(conn: psycopg.Connection, argument: str) -> None:
    derived = _derived(conn, f"SELECT pg_total_relation_size({argument})")
    expected = ["pg_total_relation_size(text)"] if argument in UNTYPED else []
    assert derived == expected, f"pg_total_relation_size({argument})"
    assert _derived(conn, f"SELECT pg_catalog.pg_total_relation_size({argument})") == [], "pg_catalog. is exact"


# --- a table another role created first ------------------------------------------------------

PAYMENTS_OF_ANOTHER_ROLE = FIXTURES / "payments_of_another_role.sql"
PAYMENT = "INSERT INTO payments (request_id, amount_cents) VALUES (gen_random_uuid(), 1500)"


def test_a_payments_table_another_role_created_is_refused_not_written_to(conn: psycopg.Connection) -> None:
    """The recipes' example table: with IF NOT EXISTS, as the docs had it, the other role's table
    (and its trigger) would be kept and written to; the docs' block refuses it."""
    block = block_with("CREATE TABLE payments", PATTERNS)
    seen = plant(conn, TRAPS)
    apply(conn, PAYMENTS_OF_ANOTHER_ROLE)
    with pytest.raises(psycopg.errors.DuplicateTable):
        conn.execute(block.text)
    assert (seen, trap_calls(conn)) == ([], 0)
    conn.execute(block.text.replace("CREATE TABLE payments", "CREATE TABLE IF NOT EXISTS payments"))
    conn.execute(PAYMENT)
    assert seen == ["trigger on payments"], "the form the docs had writes to the other role's table"
