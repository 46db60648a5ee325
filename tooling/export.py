"""Write the migrations into a folder, named the way a migration tool expects.

    python -m tooling.export TOOL DEST        (make export TOOL=... DEST=...)

TOOL is one of:

    sqlx            the files as they are: NNN_name.sql (up) and NNN_name.down.sql (down)
    golang-migrate  NNN_name.up.sql and NNN_name.down.sql
    flyway          V45__name.sql (versioned) and U45__name.sql (undo, a Flyway Teams feature)
    dbmate          NNN_name.sql: the up under `-- migrate:up`, the down under `-- migrate:down`
    sqitch          sqitch.plan and deploy/, revert/, verify/ scripts

The SQL text of every migration is copied unchanged. Only sqitch gets more: it runs
each script with psql outside any transaction, so its deploy and revert scripts wrap
the file in BEGIN/COMMIT (sqitch's own convention), and its verify scripts, which
are new, fail when an object the change creates is missing.

Nothing is overwritten: if a file to write already exists with other content, the
command names it and exits with status 1 before writing anything. A file that
already exists with the same content is left as it is.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable
from pathlib import Path

from tooling import SQL_DIR

UP_NAME = re.compile(r"^(?P<version>\d+)_(?P<name>[a-z0-9_]+)\.sql$")


@dataclasses.dataclass(frozen=True)
class Migration:
    """One numbered migration: its version (e.g. "045"), name, up and down SQL."""

    version: str
    name: str
    up: str
    down: str

    @property
    def stem(self) -> str:
        return f"{self.version}_{self.name}"


def migrations(sql_dir: Path = SQL_DIR) -> list[Migration]:
    """Every NNN_name.sql of sql_dir with its NNN_name.down.sql, in version order."""
    found = []
    for path in sorted(sql_dir.glob("*.sql")):
        match = UP_NAME.match(path.name)
        if match is None or path.name.endswith(".down.sql"):
            continue
        down = path.with_name(f"{match['version']}_{match['name']}.down.sql")
        found.append(Migration(match["version"], match["name"], path.read_text(), down.read_text()))
    return sorted(found, key=lambda m: int(m.version))


Files = dict[str, str]  # relative path -> content


def for_sqlx(items: list[Migration]) -> Files:
    files: Files = {}
    for m in items:
        files[f"{m.stem}.sql"] = m.up
        files[f"{m.stem}.down.sql"] = m.down
    return files


def for_golang_migrate(items: list[Migration]) -> Files:
    files: Files = {}
    for m in items:
        files[f"{m.stem}.up.sql"] = m.up
        files[f"{m.stem}.down.sql"] = m.down
    return files


def for_flyway(items: list[Migration]) -> Files:
    files: Files = {}
    for m in items:
        version = str(int(m.version))  # V45, not V045: Flyway compares versions as numbers anyway
        files[f"V{version}__{m.name}.sql"] = m.up
        files[f"U{version}__{m.name}.sql"] = m.down
    return files


def dbmate_text(m: Migration) -> str:
    """dbmate's single-file format: nothing may stand before `-- migrate:up`."""
    return f"-- migrate:up\n{m.up.rstrip()}\n\n-- migrate:down\n{m.down.rstrip()}\n"


def for_dbmate(items: list[Migration]) -> Files:
    # dbmate takes the leading digits of the name as the version: 045 stays 045.
    return {f"{m.stem}.sql": dbmate_text(m) for m in items}


SQITCH_PROJECT = "idempotency_records"
# A fixed planning time and planner keep the plan byte-identical between exports,
# so exporting again is a no-op.
SQITCH_PLANNED = "2026-01-01T00:00:00Z idempotency-records <idempotency-records@example.com>"

# What each change must leave behind; the verify script fails if any is missing.
SQITCH_VERIFY: dict[str, str] = {
    "create_idempotency_records": """\
-- Fails unless idempotency_records has its six columns, check constraint and two indexes.
SELECT request_id, operation, result_payload, status_code, created_at, expires_at
FROM idempotency_records
WHERE FALSE;

DO $verify$
BEGIN
    IF NOT EXISTS (
        SELECT 1
        FROM pg_catalog.pg_constraint
        WHERE conname = 'chk_expires_at' AND conrelid = 'idempotency_records'::regclass
    ) THEN
        RAISE EXCEPTION 'constraint chk_expires_at is missing';
    END IF;
    IF to_regclass('idx_idempotency_expires') IS NULL THEN
        RAISE EXCEPTION 'index idx_idempotency_expires is missing';
    END IF;
    IF to_regclass('idx_idempotency_operation') IS NULL THEN
        RAISE EXCEPTION 'index idx_idempotency_operation is missing';
    END IF;
END
$verify$;
""",
    "create_idempotency_cleanup_job": """\
-- Fails unless cleanup_expired_idempotency_records() exists (the cast raises an error otherwise).
SELECT 'cleanup_expired_idempotency_records()'::regprocedure;
""",
}


def sqitch_change(m: Migration) -> str:
    return m.stem


def in_transaction(text: str) -> str:
    return f"BEGIN;\n\n{text.rstrip()}\n\nCOMMIT;\n"


def for_sqitch(items: list[Migration]) -> Files:
    lines = ["%syntax-version=1.0.0", f"%project={SQITCH_PROJECT}", ""]
    files: Files = {}
    previous: str | None = None
    for m in items:
        change = sqitch_change(m)
        requires = f" [{previous}]" if previous else ""
        lines.append(f"{change}{requires} {SQITCH_PLANNED} # {m.name.replace('_', ' ')}")
        files[f"deploy/{change}.sql"] = in_transaction(m.up)
        files[f"revert/{change}.sql"] = in_transaction(m.down)
        verify = SQITCH_VERIFY[m.name]
        files[f"verify/{change}.sql"] = f"BEGIN;\n\n{verify.rstrip()}\n\nROLLBACK;\n"
        previous = change
    return {"sqitch.plan": "\n".join(lines) + "\n", **files}


TOOLS: dict[str, Callable[[list[Migration]], Files]] = {
    "sqlx": for_sqlx,
    "golang-migrate": for_golang_migrate,
    "flyway": for_flyway,
    "dbmate": for_dbmate,
    "sqitch": for_sqitch,
}


class ExportRefused(Exception):
    """A file to write exists with other content."""


def export(tool: str, dest: Path, sql_dir: Path = SQL_DIR) -> list[tuple[Path, bool]]:
    """Write the files for `tool` under `dest`; return (path, written) for each.

    written is False for a file that already held exactly this content. Raises
    ExportRefused, having written nothing, when any file exists with other content.
    """
    files = TOOLS[tool](migrations(sql_dir))
    conflicts = [
        dest / relative
        for relative, content in files.items()
        if (dest / relative).exists() and (dest / relative).read_bytes() != content.encode()
    ]
    if conflicts:
        names = ", ".join(str(path) for path in conflicts)
        raise ExportRefused(f"refusing to overwrite {names}: it exists with other content; nothing was written")
    results = []
    for relative, content in files.items():
        path = dest / relative
        if path.exists():
            results.append((path, False))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode())
        results.append((path, True))
    return results


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in TOOLS:
        print(f"usage: python -m tooling.export {{{'|'.join(TOOLS)}}} DEST", file=sys.stderr)
        return 2
    tool, dest = argv[0], Path(argv[1])
    try:
        results = export(tool, dest)
    except ExportRefused as refused:
        print(refused, file=sys.stderr)
        return 1
    for path, written in results:
        print(f"{'wrote' if written else 'unchanged (same content)'}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
