"""Lint the migrations as their users do, with no configuration of ours.

    python3 -m tooling.lint BINDIR        (make lint; BINDIR holds sqlfluff and squawk)

Users copy sql/*.sql, or what `make export` writes for their migration tool, into their
own repositories and lint them there. So this copies the files alone into an empty private
folder (removed afterwards) and runs there:

    sqlfluff lint --dialect postgres --ignore-local-config .
    squawk FILE...

sqlfluff's defaults: 80 columns, its default rules, and large_file_skip_byte_limit = 20000,
above which it skips a file with only a warning. --ignore-local-config reads no configuration
file: neither a developer's ~/.sqlfluff nor one in a parent of the folder (/tmp), which another
local user could have written. squawk reads the first .squawk.toml found going up from its
working directory: the folder holds an empty one, which is squawk's defaults.

Then the same for every SQL file that an export layout writes and that is not one of sql/*.sql
unchanged: sqitch's scripts (BEGIN/COMMIT, verify), graphile-migrate's headers, dbmate's and
node-pg-migrate's files, which hold a migration's up and down SQL under their tool's markers.

A violation fails, and so does a file that sqlfluff did not lint: every file must be linted, not
skipped. One exception, said in the output: the dbmate and node-pg-migrate files join up and
down and are larger than 20000 bytes, so a user's sqlfluff skips them; their content is linted
from stdin, which sqlfluff reads whatever its size, with the same defaults.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tooling import SQL_DIR, export

SQLFLUFF = ("lint", "--dialect", "postgres", "--ignore-local-config", "--format", "json")
# Layouts that keep a migration's up and down SQL in one file.
JOINED = ("dbmate", "node-pg-migrate")
AFTER = {"django": "app"}  # the layouts that need --after to be written


@dataclasses.dataclass
class Report:
    """What the linters said about one group of files."""

    group: str
    files: list[str]
    problems: list[str] = dataclasses.field(default_factory=list)
    from_stdin: list[str] = dataclasses.field(default_factory=list)


def run(command: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, input=stdin, capture_output=True, text=True, check=False, timeout=600)


def sqlfluff(bindir: Path, folder: Path, files: list[str], stdin: str | None = None) -> dict[str, list[str]]:
    """The violations sqlfluff reports for each file it linted (from stdin: the one file "stdin")."""
    result = run([str(bindir / "sqlfluff"), *SQLFLUFF, *(files if stdin is None else ["-"])], folder, stdin)
    if result.returncode not in (0, 1):
        raise RuntimeError(f"sqlfluff failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return {
        report["filepath"]: [
            f"{report['filepath']}:{v['start_line_no']}:{v['start_line_pos']}: {v['code']} {v['description']}"
            for v in report["violations"]
            if not v.get("warning")
        ]
        for report in json.loads(result.stdout or "[]")
    }


def lint(bindir: Path, group: str, folder: Path, files: list[str]) -> Report:
    """sqlfluff with its defaults and squawk with no configuration on `files`, relative to `folder`
    (sqlfluff on the folder itself where it holds only them, as a user runs it)."""
    report = Report(group, files)
    alone = sorted(path.name for path in folder.iterdir()) == files
    found = {str(Path(name)): lines for name, lines in sqlfluff(bindir, folder, ["."] if alone else files).items()}
    for name in files:
        if name in found:
            report.problems += found[name]
        elif group in JOINED:
            text = (folder / name).read_text()
            report.problems += [f"{name} (stdin){line.removeprefix('stdin')}" for line in _stdin(bindir, folder, text)]
            report.from_stdin.append(name)
        else:
            report.problems.append(f"{name}: not linted by sqlfluff (skipped: larger than its byte limit?)")
    result = run([str(bindir / "squawk"), *files], folder)
    if result.returncode != 0:
        report.problems.append(f"squawk ({result.returncode}):\n{result.stdout}{result.stderr}".rstrip())
    return report


def _stdin(bindir: Path, folder: Path, text: str) -> list[str]:
    found = sqlfluff(bindir, folder, [], stdin=text)
    if "stdin" not in found:
        raise RuntimeError("sqlfluff did not lint its standard input")
    return found["stdin"]


def layouts(dest: Path, sql_dir: Path) -> dict[str, list[str]]:
    """Per export layout, written under dest/TOOL, the SQL files that are not one of sql_dir's unchanged."""
    plain = {path.read_bytes() for path in sql_dir.glob("*.sql")}
    found: dict[str, list[str]] = {}
    for tool in export.TOOLS:
        export.export(tool, dest / tool, sql_dir, after=AFTER.get(tool))
        written = sorted((dest / tool).rglob("*.sql"))
        found[tool] = [str(path.relative_to(dest / tool)) for path in written if path.read_bytes() not in plain]
    return found


def lint_all(bindir: Path, sql_dir: Path = SQL_DIR) -> list[Report]:
    with tempfile.TemporaryDirectory(prefix="idempotency-lint-") as private:
        root = Path(private)
        (root / ".squawk.toml").write_text("")  # squawk's defaults; stops its search for one upwards
        alone = root / "sql"
        alone.mkdir()
        for path in sorted(sql_dir.glob("*.sql")):
            shutil.copy(path, alone / path.name)
        reports = [lint(bindir, "sql", alone, sorted(path.name for path in alone.iterdir()))]
        for tool, files in layouts(root / "export", sql_dir).items():
            if files:
                reports.append(lint(bindir, tool, root / "export" / tool, files))
        return reports


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python3 -m tooling.lint BINDIR (the folder of sqlfluff and squawk)", file=sys.stderr)
        return 2
    reports = lint_all(Path(argv[0]).resolve())
    print("sqlfluff with its defaults and squawk with no configuration, on copies in an empty folder:")
    for report in reports:
        where = "sql/*.sql" if report.group == "sql" else f"make export TOOL={report.group}"
        print(f"  {where}: {len(report.files)} files, {len(report.problems)} problems")
        if report.from_stdin:
            print(
                f"    {', '.join(report.from_stdin)}: up and down in one file, over sqlfluff's 20000-byte limit,"
                " which skips them by default; linted from stdin"
            )
        for problem in report.problems:
            print(f"    {problem}")
    return 1 if any(report.problems for report in reports) else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
