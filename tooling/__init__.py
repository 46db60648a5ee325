"""What `make` runs for users: the migration files of sql/, the one list of them
(tooling.migrations), the server lifecycle (tooling.servers), the root-owned copy of the server
binaries (tooling.bincache), private paths and secret files on a shared host (tooling.private),
and the export layouts for other migration tools (tooling.export, standard library only); with
the records the suite and the benchmark store to start from (tooling.records). The suite and the
benchmark import it; it imports nothing from tests/ or bench/."""

from __future__ import annotations

import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SQL_DIR = ROOT / "sql"


def __getattr__(name: str) -> tuple[Path, ...]:
    """UP_FILES and DOWN_FILES, read from sql/ when asked for (tooling.migrations), so that
    importing the package for anything else never depends on what sql/ holds."""
    if name not in ("UP_FILES", "DOWN_FILES"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    migrations = importlib.import_module("tooling.migrations")
    if name == "UP_FILES":
        return migrations.up_files()
    return migrations.down_files()
