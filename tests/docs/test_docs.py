"""Every fenced block of the docs runs the way its annotation says and returns what the text says
it returns (tests/docblocks.py: the annotations, the runner, the comparisons); every link finds its
heading, every page is run, the test map lists every test module, and no long statement is printed
twice."""

from __future__ import annotations

import ast
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.docblocks import (
    DOCUMENTS,
    FENCE,
    GUIDE,
    SEQUENCES,
    TEST_MAP,
    Block,
    anchors,
    drop_roles,
    long_statements,
    parse_blocks,
    parse_shells,
    pg_cron_blocks,
    run_block,
    run_fresh,
    run_psql_block,
    run_shell,
    server_roles,
    shells_to_run,
    shown,
    slug,
)
from tests.helpers import ROOT
from tooling.servers import Server


@pytest.mark.parametrize("paths", SEQUENCES.values(), ids=list(SEQUENCES))
def test_every_sql_block_runs_as_annotated(
    pg_server: Server,
    database: str,
    conn: psycopg.Connection,
    fresh_database: Callable[[], str],
    paths: tuple[Path, ...],
) -> None:
    blocks = [block for path in paths for block in parse_blocks(path)]
    roles_before = server_roles(conn)
    deferred: list[Block] = []
    try:
        for block in blocks:
            if block.place == "sequence":
                run_block(conn, block)
            elif block.place == "psql":
                run_psql_block(pg_server, database, block)
            elif block.place == "fresh":
                run_fresh(pg_server, fresh_database(), block)
            else:
                deferred.append(block)
    finally:
        drop_roles(conn, server_roles(conn) - roles_before)
    expected = [b for b in pg_cron_blocks() if b.path in paths]
    assert deferred == expected, "every pg_cron block is the one tests/usage/test_pg_cron.py runs, none is dropped"


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_every_shell_block_that_calls_psql_runs(
    pg_server: Server, fresh_database: Callable[[], str], tmp_path: Path, path: Path
) -> None:
    for shell, workdir in shells_to_run(path, tmp_path):
        done = run_shell(pg_server, fresh_database(), shell, workdir)
        assert done.returncode == 0, f"{shell.where}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        assert "ERROR" not in done.stderr, f"{shell.where}: psql printed an error:\n{done.stderr}"


def test_the_documents_state_results_the_tests_compare() -> None:
    compared = sum(1 for path in DOCUMENTS for block in parse_blocks(path) if block.compared)
    # A `-- returns:` line or a result block removed by mistake shows up here.
    assert compared >= 8, f"the documents state {compared} results that the tests compare"


def test_readme_commands_sit_in_fenced_blocks() -> None:
    """An indented code block is not run by anything; the README's commands are fenced."""
    lines = (ROOT / "README.md").read_text().splitlines()
    inside = False
    for number, line in enumerate(lines, 1):
        if FENCE.match(line) or line.rstrip() == "```":
            inside = not inside
            continue
        previous = lines[number - 2] if number > 1 else ""
        if not inside and line.startswith("    ") and not previous.strip():
            raise AssertionError(f"README.md:{number}: an indented code block; fence it so that the tests run it")


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_every_sql_fence_is_a_parsed_block(path: Path) -> None:
    fences = sum(1 for line in path.read_text().splitlines() if line.rstrip() == "```sql")
    assert len(parse_blocks(path)) == fences, f"{path.name}: every ```sql fence at the start of a line is a block"


def test_the_docs_have_blocks_of_every_kind() -> None:
    blocks = [block for path in DOCUMENTS for block in parse_blocks(path)]
    kinds = {
        "plain": sum(1 for b in blocks if b.place == "sequence" and b.error is None and b.role is None),
        "error": sum(1 for b in blocks if b.error is not None),
        "role": sum(1 for b in blocks if b.role is not None),
        "psql": sum(1 for b in blocks if b.place == "psql"),
        "pg_cron": sum(1 for b in blocks if b.place == "pg_cron"),
        "fresh": sum(1 for b in blocks if b.place == "fresh"),
        "shell": sum(len(parse_shells(path)) for path in DOCUMENTS),
    }
    # What the guide and its pages hold today: a block removed by mistake shows up here.
    minimum = {"plain": 50, "error": 13, "role": 8, "psql": 1, "pg_cron": 4, "fresh": 2, "shell": 5}
    short = {kind: (kinds[kind], least) for kind, least in minimum.items() if kinds[kind] < least}
    assert not short, f"the docs have fewer blocks than they document (kind: (found, expected at least)): {short}"


PG_CRON_TEST = ROOT / "tests" / "usage" / "test_pg_cron.py"
PG_CRON_RUNNER = "test_the_documented_pg_cron_blocks_all_run"


def test_the_pg_cron_test_runs_every_pg_cron_block() -> None:
    """Read, not imported (no test module imports another): the pg_cron test takes its blocks from
    tests/docblocks.py and runs each one, and is not skipped."""
    tree = ast.parse(PG_CRON_TEST.read_text())
    imported = {
        alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module == "tests.docblocks"
        for alias in node.names
    }
    assert "pg_cron_blocks" in imported, f"{shown(PG_CRON_TEST)} selects the blocks with tests/docblocks.py"
    (runner,) = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == PG_CRON_RUNNER]
    calls = {
        node.func.id for node in ast.walk(runner) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert {"pg_cron_blocks", "run_block"} <= calls, f"{PG_CRON_RUNNER} runs every one of them"
    marks = [ast.unparse(decorator) for decorator in runner.decorator_list]
    assert not any("skip" in mark for mark in marks), f"{PG_CRON_RUNNER} is not skipped: {marks}"


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_every_link_into_the_docs_finds_its_heading(path: Path) -> None:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", line):
            document = (path.parent / target).resolve() if target else path
            assert document.is_file(), f"{shown(path)}:{number}: link to a missing file {target}"
            assert anchor in anchors(document), f"{shown(path)}:{number}: no heading #{anchor} in {document.name}"


def test_every_page_of_the_docs_is_run() -> None:
    pages = set((ROOT / "docs").glob("*.md"))
    assert pages <= set(DOCUMENTS), (
        f"pages under docs/ that no test runs: {sorted(p.name for p in pages - set(DOCUMENTS))}"
    )


def test_the_test_map_lists_every_test_module() -> None:
    """Every module of tests/<folder>/ is linked in the test map, in the section of its folder, and
    the test map has a section for every folder and for nothing else."""
    sections = {
        heading: body
        for heading, body in re.findall(
            r"^## ([^\n]*)\n(.*?)(?=^## |\Z)", TEST_MAP.read_text(), re.MULTILINE | re.DOTALL
        )
    }
    by_folder = {
        heading.split(":")[0].removeprefix("tests/"): set(re.findall(r"\]\(\.\./(tests/[^)#]+\.py)\)", body))
        for heading, body in sections.items()
        if heading.startswith("tests/")
    }
    loose = sorted(path.name for path in (ROOT / "tests").glob("test_*.py"))
    assert not loose, f"test modules at the top of tests/, in no folder: {loose} (the test map's sections are folders)"
    modules = sorted((ROOT / "tests").glob("*/test_*.py"))
    folders = {path.parent.name for path in modules}
    assert set(by_folder) == folders, f"docs/test-map.md: sections {sorted(by_folder)}, folders {sorted(folders)}"
    for path in modules:
        module = str(path.relative_to(ROOT))
        assert module in by_folder[path.parent.name], (
            f"docs/test-map.md does not link {module} in tests/{path.parent.name}"
        )
    linked = set().union(*by_folder.values())
    assert linked <= {str(path.relative_to(ROOT)) for path in modules}, f"links to no module: {sorted(linked)}"


# A literal, a comment, a run of white space: what two copies of one statement may differ in.
def test_no_long_statement_is_printed_twice_across_the_docs() -> None:
    pages = tuple(path for path in DOCUMENTS if path.parent == ROOT / "docs")
    twice = [where for where in long_statements(pages).values() if len(where) > 1]
    assert not twice, (
        "statements of 5+ lines printed more than once, also with other literals "
        "(print once, refer by heading):\n" + "\n".join("; ".join(where) for where in twice)
    )


def test_the_guide_contents_list_every_section() -> None:
    text = GUIDE.read_text()
    contents = text.split("## Contents\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^ *- \[(.*)\]\(#([^)]*)\)$", contents, re.MULTILINE)
    inside = False
    headings = []
    for line in text.splitlines():
        if line.strip().startswith("```"):
            inside = not inside
        elif not inside and (heading := re.match(r"^#{2,3} (.*)$", line)) and heading.group(1) != "Contents":
            headings.append((heading.group(1), slug(heading.group(1))))
    assert listed == headings, "the guide's Contents lists its sections, in order"


TEST_PATH = re.compile(r"\btests/[\w/.<>*-]*[\w*>]")


def test_every_path_under_tests_that_a_file_names_exists() -> None:
    """The docs, the code and the comments name test modules, fixtures and folders by path: each
    one is there (a module moved without its mentions fails here)."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    wrong = []
    for name in listed.split():
        path = ROOT / name
        if path.suffix not in (".md", ".py", ".sql", ".toml", "") or not path.is_file():
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for mention in TEST_PATH.findall(line):
                if re.search(r"[A-Z]{2,}|[<*]", mention):
                    continue  # a pattern (tests/<folder>/, tests/fixtures/data/NAME.sql), not a path
                if not (ROOT / mention).exists():
                    wrong.append(f"{name}:{number}: {mention}")
    assert not wrong, "paths under tests/ that do not exist:\n" + "\n".join(wrong)
