"""The migration files lint clean where users lint them: copied alone into an empty folder, with
sqlfluff's defaults (80 columns, its default rules, files over 20000 bytes skipped with only a
warning) and squawk with no configuration, and so does every SQL file an export layout writes
(tooling/lint.py, which `make lint` runs). And the check fails when it should: a line over 80
columns, or a file that sqlfluff skips instead of linting.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.helpers import SQL_DIR
from tooling import lint

BIN = Path(sys.executable).parent  # the venv's: sqlfluff and squawk come with `make install`
LONG = "-- " + "a line of a header comment, longer than eighty columns " * 2 + "\n"
TOO_LONG = f"LT05 Line is too long ({len(LONG) - 1} > 80)."


@pytest.fixture(scope="module")
def bindir() -> Path:
    missing = [name for name in ("sqlfluff", "squawk") if not (BIN / name).exists()]
    if missing:
        pytest.skip(f"{', '.join(missing)} not in {BIN}: run `make install`")
    return BIN


def copies(folder: Path) -> list[str]:
    folder.mkdir()
    for path in SQL_DIR.glob("*.sql"):
        shutil.copy(path, folder / path.name)
    return sorted(path.name for path in folder.iterdir())


def test_the_files_and_every_export_layout_lint_clean_with_no_configuration(bindir: Path) -> None:
    reports = lint.lint_all(bindir)
    assert reports[0].group == "sql" and reports[0].files == sorted(path.name for path in SQL_DIR.glob("*.sql"))
    for report in reports:
        assert report.problems == [], f"{report.group}: {report.problems}"
    # Each file of sql/ linted as a file, not skipped: under sqlfluff's default byte limit.
    assert reports[0].from_stdin == []
    for path in SQL_DIR.glob("*.sql"):
        assert path.stat().st_size < 20_000, f"{path.name}: {path.stat().st_size} bytes, sqlfluff would skip it"
    # Only the layouts that join up and down in one file go through stdin.
    assert {report.group for report in reports if report.from_stdin} <= set(lint.JOINED)


def test_a_line_over_80_columns_fails(bindir: Path, tmp_path: Path) -> None:
    files = copies(tmp_path / "sql")
    with (tmp_path / "sql" / files[0]).open("a") as out:
        out.write(LONG)
    report = lint.lint(bindir, "sql", tmp_path / "sql", files)
    assert [problem.split(": ", 1)[1] for problem in report.problems] == [TOO_LONG], report.problems
    assert report.problems[0].startswith(f"{files[0]}:"), report.problems


def test_a_file_sqlfluff_would_skip_fails(bindir: Path, tmp_path: Path) -> None:
    files = copies(tmp_path / "sql")
    big = tmp_path / "sql" / files[0]
    padding = "-- padding, which keeps the file valid and every line short\n"
    big.write_text(big.read_text() + padding * (20_000 // len(padding) + 1))
    report = lint.lint(bindir, "sql", tmp_path / "sql", files)
    assert report.problems == [f"{files[0]}: not linted by sqlfluff (skipped: larger than its byte limit?)"]


def test_a_layout_joining_up_and_down_is_linted_from_stdin(bindir: Path, tmp_path: Path) -> None:
    """dbmate's file of a migration holds its up and down SQL: over the limit, sqlfluff would skip
    it, so its content is linted from stdin, and a violation in it still fails."""
    folder = tmp_path / "dbmate"
    folder.mkdir()
    joined = folder / "045_create_idempotency_records.sql"
    up, down = (SQL_DIR / "045_create_idempotency_records.sql"), (SQL_DIR / "045_create_idempotency_records.down.sql")
    joined.write_text(f"-- migrate:up\n{up.read_text()}\n-- migrate:down\n{down.read_text()}{LONG}")
    report = lint.lint(bindir, "dbmate", folder, [joined.name])
    if joined.stat().st_size <= 20_000:
        pytest.fail("the joined file fits under the byte limit now: drop the stdin exception of tooling/lint.py")
    assert report.from_stdin == [joined.name]
    assert [problem.rsplit(": ", 1)[1] for problem in report.problems] == [TOO_LONG], report.problems
