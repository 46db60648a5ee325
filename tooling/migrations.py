"""The migration files: the one list of them, read from sql/. Every NNN_name.sql with its
NNN_name.down.sql, ordered by the number NNN: up files ascending, down files descending.
make migrate and make rollback, tooling.export, the tests and the benchmark all take the files
from here, so a new pair in sql/ reaches every one of them with no list edited.

    python3 -m tooling.migrations up|down [SQL_DIR]    the files, one a line, in the order to apply

A file of sql/ that is not a migration, an up file without its down file or the other way
round, and two migrations of one number are errors that name the file: nothing else lives in
sql/ (users copy it whole).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

from tooling import SQL_DIR

# Three digits, so that the names sort as the numbers do wherever they are listed.
FILE_NAME = re.compile(r"^(?P<number>[0-9]{3})_(?P<name>[a-z_]+)(?P<down>\.down)?\.sql$")


class MigrationFilesError(Exception):
    """sql/ holds a file that is not a migration, or a migration without its other half."""


@dataclasses.dataclass(frozen=True)
class Migration:
    """One numbered migration: its number (e.g. "045"), name, and its two files."""

    number: str
    name: str
    up: Path
    down: Path

    @property
    def stem(self) -> str:
        return f"{self.number}_{self.name}"


def migrations(sql_dir: Path = SQL_DIR) -> list[Migration]:
    """Every migration of sql_dir, by number."""
    halves: dict[tuple[str, str], dict[str, Path]] = {}
    for path in sorted(sql_dir.iterdir()):
        match = FILE_NAME.match(path.name)
        if match is None or not path.is_file():
            raise MigrationFilesError(f"{path}: not a migration file (NNN_snake_name.sql or NNN_snake_name.down.sql)")
        halves.setdefault((match["number"], match["name"]), {})["down" if match["down"] else "up"] = path
    found = []
    for (number, name), files in halves.items():
        expected = {"up": sql_dir / f"{number}_{name}.sql", "down": sql_dir / f"{number}_{name}.down.sql"}
        missing = [str(path) for half, path in expected.items() if half not in files]
        if missing:
            raise MigrationFilesError(f"{missing[0]} is missing: every migration is an up file and its down file")
        found.append(Migration(number, name, files["up"], files["down"]))
    numbers = [int(m.number) for m in found]
    twice = sorted({m.stem for m in found if numbers.count(int(m.number)) > 1})
    if twice:
        raise MigrationFilesError(f"{sql_dir}: one number, several migrations: {', '.join(twice)}")
    return sorted(found, key=lambda m: int(m.number))


def up_files(sql_dir: Path = SQL_DIR) -> tuple[Path, ...]:
    """The up files, in the order they are applied: ascending numbers."""
    return tuple(m.up for m in migrations(sql_dir))


def down_files(sql_dir: Path = SQL_DIR) -> tuple[Path, ...]:
    """The down files, in the order they are applied: descending numbers."""
    return tuple(m.down for m in reversed(migrations(sql_dir)))


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or argv[0] not in ("up", "down"):
        print("usage: python3 -m tooling.migrations up|down [SQL_DIR]", file=sys.stderr)
        return 2
    sql_dir = Path(argv[1]) if len(argv) == 2 else Path("sql")
    try:
        files = up_files(sql_dir) if argv[0] == "up" else down_files(sql_dir)
    except (MigrationFilesError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("\n".join(str(path) for path in files))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
