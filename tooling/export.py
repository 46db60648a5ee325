"""Write the migrations into a folder, named the way a migration tool expects.

    python3 -m tooling.export TOOL DEST [--after NEWEST]      (make export TOOL=... DEST=...)
    python3 -m tooling.export --tools                          the tools, for make export's usage line

TOOL is one of:

    sqlx              the files as they are: NNN_name.sql (up) and NNN_name.down.sql (down)
    golang-migrate    NNN_name.up.sql and NNN_name.down.sql
    flyway            V45__name.sql (versioned) and U45__name.sql (undo, a Flyway Teams feature)
    dbmate            NNN_name.sql: the up under `-- migrate:up`, the down under `-- migrate:down`
    sqitch            sqitch.plan and deploy/, revert/, verify/ scripts
    liquibase         changelog.xml whose changesets run the files whole (splitStatements="false")
                      with the down files as their rollback, beside the files as they are
    yoyo              NNN_name.sql (up) and NNN_name.rollback.sql (down)
    node-pg-migrate   NNN_name.sql: the up under `-- Up Migration`, the down under `-- Down Migration`
    graphile-migrate  committed/NNNNNN-name.sql with graphile-migrate's Previous/Hash headers, chained
                      after the migrations already committed in DEST; down/ keeps the down files
    alembic           NNN_name.py revisions that run sql/NNN_name.sql (upgrade) and .down.sql (downgrade)
    django            NNN_name.py migrations whose RunSQL runs sql/NNN_name.sql and its .down.sql

--after NEWEST names the newest migration of the project the files join:
    for sqlx, golang-migrate, flyway, dbmate, yoyo and node-pg-migrate, a version number
    (e.g. a timestamp 20250101120000): the files get the next numbers (20250101120001,
    20250101120002), so they sort after that history instead of before it;
    for alembic, the revision id the first file revises (its down_revision);
    for django (required there), APP_LABEL or APP_LABEL.MIGRATION: the app the files go
    into and, if it has migrations already, the newest one, which the first file depends on.
liquibase (changelog order), sqitch (plan order) and graphile-migrate (hash chain) do
not order by version and take no --after.

The migrations are every pair of sql/ (tooling.migrations), in order. The SQL text of
every migration is copied unchanged. Only sqitch gets more: it runs each script with
psql outside any transaction, so its deploy and revert scripts wrap the file in
BEGIN/COMMIT (sqitch's own convention), and its verify scripts, which are new, fail
when an object the change creates is missing (045, 046 and 047; see SQITCH_VERIFY).

Nothing is overwritten: if a file to write already exists with other content, the
command names it and exits with status 1 before writing anything. A file that
already exists with the same content is left as it is.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import re
import sys
from collections.abc import Callable
from pathlib import Path

from tooling import SQL_DIR
from tooling import migrations as migration_files


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

    @property
    def title(self) -> str:
        return self.name.replace("_", " ")


def migrations(sql_dir: Path = SQL_DIR) -> list[Migration]:
    """Every migration of sql_dir with its SQL, in the order they are applied (tooling.migrations)."""
    return [
        Migration(m.number, m.name, m.up.read_text(), m.down.read_text()) for m in migration_files.migrations(sql_dir)
    ]


Files = dict[str, str]  # relative path -> content


class UsageError(Exception):
    """The options do not fit the tool."""


class ExportRefused(Exception):
    """A file to write exists with other content, or the SQL cannot be carried unchanged."""


@dataclasses.dataclass(frozen=True)
class Request:
    """What a layout is built from: the migrations, --after, and the folder written to."""

    migrations: list[Migration]
    after: str | None
    dest: Path


def renumbered(request: Request) -> list[Migration]:
    """The migrations with the numbers that follow --after (same width), or as they are."""
    if request.after is None:
        return request.migrations
    if not request.after.isdigit():
        raise UsageError(f"--after {request.after}: expected the version number of your newest migration")
    width, newest = len(request.after), int(request.after)
    return [
        dataclasses.replace(m, version=str(newest + position).zfill(width))
        for position, m in enumerate(request.migrations, start=1)
    ]


def no_after(tool: str, request: Request, why: str) -> None:
    if request.after is not None:
        raise UsageError(f"--after does not apply to {tool}: {why}")


def pairs(items: list[Migration], up: str, down: str, folder: str = "") -> Files:
    """Each migration as two files, folder/STEM{up} and folder/STEM{down}, holding its SQL unchanged."""
    files: Files = {}
    for m in items:
        files[f"{folder}{m.stem}{up}"] = m.up
        files[f"{folder}{m.stem}{down}"] = m.down
    return files


def for_sqlx(request: Request) -> Files:
    return pairs(renumbered(request), ".sql", ".down.sql")


def for_golang_migrate(request: Request) -> Files:
    return pairs(renumbered(request), ".up.sql", ".down.sql")


def for_flyway(request: Request) -> Files:
    files: Files = {}
    for m in renumbered(request):
        version = str(int(m.version))  # V45, not V045: Flyway compares versions as numbers anyway
        files[f"V{version}__{m.name}.sql"] = m.up
        files[f"U{version}__{m.name}.sql"] = m.down
    return files


def dbmate_text(m: Migration) -> str:
    """dbmate's single-file format: nothing may stand before `-- migrate:up`."""
    return f"-- migrate:up\n{m.up.rstrip()}\n\n-- migrate:down\n{m.down.rstrip()}\n"


def for_dbmate(request: Request) -> Files:
    # dbmate takes the leading digits of the name as the version: 045 stays 045.
    return {f"{m.stem}.sql": dbmate_text(m) for m in renumbered(request)}


SQITCH_PROJECT = "idempotency_records"
# A fixed planning time and planner keep the plan byte-identical between exports,
# so exporting again is a no-op.
SQITCH_PLANNED = "2026-01-01T00:00:00Z idempotency-records <idempotency-records@example.com>"

# What each change must leave behind; the verify script fails if any is missing. A migration with
# no entry here gets no verify script: sqitch says so and goes on (a verify script is optional).
SQITCH_VERIFY: dict[str, str] = {
    "create_idempotency_records": """\
-- Fails unless idempotency_records has its six columns, its check
-- constraint and its two indexes.
SELECT
    request_id,
    operation,
    result_payload,
    status_code,
    created_at,
    expires_at
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
-- Fails unless cleanup_expired_idempotency_records() exists (the cast
-- raises an error otherwise).
SELECT 'cleanup_expired_idempotency_records()'::regprocedure;
""",
    "create_idempotency_protocol": """\
-- Fails unless idempotency_records has the protocol's two columns and its
-- four functions exist (each cast raises an error otherwise).
SELECT
    request_hash,
    lease_token
FROM idempotency_records
WHERE FALSE;

SELECT
    'idempotency_claim(uuid, varchar, bytea, interval)'::regprocedure,
    'idempotency_complete(uuid, uuid, text, integer, interval)'::regprocedure,
    'idempotency_release(uuid, uuid)'::regprocedure,
    'idempotency_key(text, text)'::regprocedure;
""",
}


def sqitch_change(m: Migration) -> str:
    return m.stem


def in_transaction(text: str) -> str:
    return f"BEGIN;\n\n{text.rstrip()}\n\nCOMMIT;\n"


def for_sqitch(request: Request) -> Files:
    no_after("sqitch", request, "it orders changes by sqitch.plan: append the change lines to yours")
    lines = ["%syntax-version=1.0.0", f"%project={SQITCH_PROJECT}", ""]
    files: Files = {}
    previous: str | None = None
    for m in request.migrations:
        change = sqitch_change(m)
        requires = f" [{previous}]" if previous else ""
        lines.append(f"{change}{requires} {SQITCH_PLANNED} # {m.title}")
        files[f"deploy/{change}.sql"] = in_transaction(m.up)
        files[f"revert/{change}.sql"] = in_transaction(m.down)
        verify = SQITCH_VERIFY.get(m.name)
        if verify is not None:
            files[f"verify/{change}.sql"] = f"BEGIN;\n\n{verify.rstrip()}\n\nROLLBACK;\n"
        previous = change
    return {"sqitch.plan": "\n".join(lines) + "\n", **files}


# Liquibase's defaults split a file at every semicolon (cutting a dollar-quoted DO
# body apart) and read `--comment`-like lines of formatted SQL as directives. An XML
# changelog whose <sqlFile> sends each file whole, comments and all, avoids both.
LIQUIBASE_AUTHOR = "idempotency-records"
LIQUIBASE_HEAD = """\
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by make export TOOL=liquibase. Each changeset sends its file whole
     (splitStatements="false": the files hold dollar-quoted DO blocks), in one
     transaction; its rollback sends the down file the same way. -->
<databaseChangeLog
    xmlns="http://www.liquibase.org/xml/ns/dbchangelog"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xsi:schemaLocation="http://www.liquibase.org/xml/ns/dbchangelog
        http://www.liquibase.org/xml/ns/dbchangelog/dbchangelog-latest.xsd">
"""
LIQUIBASE_FILE = '<sqlFile path="{path}" relativeToChangelogFile="true" splitStatements="false" stripComments="false"/>'


def liquibase_changeset(m: Migration) -> str:
    up = LIQUIBASE_FILE.format(path=f"{m.stem}.sql")
    down = LIQUIBASE_FILE.format(path=f"{m.stem}.down.sql")
    return (
        f'    <changeSet id="{m.stem}" author="{LIQUIBASE_AUTHOR}">\n'
        f"        {up}\n"
        f"        <rollback>\n"
        f"            {down}\n"
        f"        </rollback>\n"
        f"    </changeSet>\n"
    )


def for_liquibase(request: Request) -> Files:
    no_after("liquibase", request, "it runs changesets in changelog order: include changelog.xml after yours")
    changesets = "".join(liquibase_changeset(m) for m in request.migrations)
    changelog = f"{LIQUIBASE_HEAD}{changesets}</databaseChangeLog>\n"
    return {"changelog.xml": changelog, **pairs(request.migrations, ".sql", ".down.sql")}


def for_yoyo(request: Request) -> Files:
    # yoyo reads NAME.rollback.sql as the rollback of NAME.sql; a `.down.sql` would be a migration.
    return pairs(renumbered(request), ".sql", ".rollback.sql")


# node-pg-migrate cuts an SQL migration at lines matching these (case-insensitive).
NODE_PG_MIGRATE_MARKER = re.compile(r"^\s*--[\s-]*(up|down)\s+migration", re.IGNORECASE | re.MULTILINE)


def node_pg_migrate_text(m: Migration) -> str:
    for kind, text in (("up", m.up), ("down", m.down)):
        found = NODE_PG_MIGRATE_MARKER.search(text)
        if found is not None:
            raise ExportRefused(
                f"{m.stem} ({kind}): the line {found.group(0).strip()!r} would be read by node-pg-migrate "
                "as its Up/Down Migration marker; reword that comment"
            )
    return f"-- Up Migration\n{m.up.rstrip()}\n\n-- Down Migration\n{m.down.rstrip()}\n"


def for_node_pg_migrate(request: Request) -> Files:
    return {f"{m.stem}.sql": node_pg_migrate_text(m) for m in renumbered(request)}


# graphile-migrate: committed/NNNNNN[-slug].sql, each naming the hash of the one before.
GRAPHILE_NAME = re.compile(r"^(?P<number>[0-9]+)(-[-_a-zA-Z0-9]*)?\.sql$")
GRAPHILE_HEADER = re.compile(r"^--! (?P<key>[A-Z][a-zA-Z0-9_]*)(?::(?P<value>.*))?$")


def graphile_hash(body: str, previous: str | None) -> str:
    """graphile-migrate's calculateHash: sha1 of the previous hash, a newline and the body."""
    text = ((previous or "") + "\n" + body.strip()).strip() + "\n"
    return "sha1:" + hashlib.sha1(text.encode()).hexdigest()


def graphile_parts(text: str) -> tuple[dict[str, str], str]:
    """Headers and body of a committed migration, as graphile-migrate parses them."""
    headers: dict[str, str] = {}
    lines = text.split("\n")
    count = 0
    for line in lines:
        match = GRAPHILE_HEADER.match(line)
        if match is None:
            break
        headers[match["key"]] = (match["value"] or "").strip()
        count += 1
    return headers, "\n".join(lines[count:]).strip() + "\n"


def graphile_history(committed: Path, ours: set[str]) -> tuple[int, str | None]:
    """Number and hash of the newest committed migration in DEST that is not one of ours."""
    newest: tuple[int, str | None] = (0, None)
    if not committed.is_dir():
        return newest
    for path in committed.glob("*.sql"):
        match = GRAPHILE_NAME.match(path.name)
        if match is None:
            continue
        headers, body = graphile_parts(path.read_text())
        if body not in ours and int(match["number"]) > newest[0]:
            newest = (int(match["number"]), headers.get("Hash"))
    return newest


def for_graphile_migrate(request: Request) -> Files:
    no_after("graphile-migrate", request, "it chains after the migrations already in DEST/committed by itself")
    bodies = [m.up.strip() + "\n" for m in request.migrations]
    number, previous = graphile_history(request.dest / "committed", set(bodies))
    files: Files = {}
    for m, body in zip(request.migrations, bodies, strict=True):
        number += 1
        current = graphile_hash(body, previous)
        header = f"--! Previous: {previous or '-'}\n--! Hash: {current}\n--! Message: {m.title}\n\n"
        files[f"committed/{number:06d}-{m.name.replace('_', '-')}.sql"] = header + body
        files[f"down/{m.stem}.down.sql"] = m.down
        previous = current
    return files


ALEMBIC_TEMPLATE = '''"""{title}

Revision ID: {revision}
Revises: {revises}
Runs sql/{stem}.sql whole (upgrade) and sql/{stem}.down.sql (downgrade).
"""

from pathlib import Path

from alembic import op

revision = "{revision}"
down_revision = {down_revision}
branch_labels = None
depends_on = None

SQL = Path(__file__).resolve().parent / "sql"


# To the driver as it is: op.execute would read ":409" in 047's text as a bind
# parameter, and a driver given parameters would read "%s" in format() calls.
RAW = {{"no_parameters": True}}


def upgrade() -> None:
    sql = (SQL / "{stem}.sql").read_text()
    op.get_bind().exec_driver_sql(sql, execution_options=RAW)


def downgrade() -> None:
    sql = (SQL / "{stem}.down.sql").read_text()
    op.get_bind().exec_driver_sql(sql, execution_options=RAW)
'''


def alembic_revision(m: Migration) -> str:
    """A revision id that fits alembic_version.version_num, a VARCHAR(32)."""
    return f"idempotency_{m.version}"


def for_alembic(request: Request) -> Files:
    files: Files = {}
    previous = request.after
    for m in request.migrations:
        revision = alembic_revision(m)
        files[f"{m.stem}.py"] = ALEMBIC_TEMPLATE.format(
            title=m.title,
            revision=revision,
            revises=previous or "",
            stem=m.stem,
            down_revision=repr(previous),
        )
        previous = revision
    return {**files, **pairs(request.migrations, ".sql", ".down.sql", "sql/")}


DJANGO_TEMPLATE = '''"""{title}: runs sql/{stem}.sql whole, and sql/{stem}.down.sql to unapply."""

from pathlib import Path

from django.db import migrations

SQL = Path(__file__).resolve().parent / "sql"


class Migration(migrations.Migration):
    dependencies = {dependencies}

    # One-element lists: RunSQL sends each file as one statement instead of splitting it.
    operations = [
        migrations.RunSQL(
            sql=[(SQL / "{stem}.sql").read_text()],
            reverse_sql=[(SQL / "{stem}.down.sql").read_text()],
        ),
    ]
'''
DJANGO_AFTER = re.compile(r"^(?P<app>[A-Za-z_][A-Za-z0-9_]*)(\.(?P<migration>[A-Za-z0-9_]+))?$")


def for_django(request: Request) -> Files:
    match = DJANGO_AFTER.match(request.after or "")
    if match is None:
        raise UsageError("django needs --after APP_LABEL or APP_LABEL.NEWEST_MIGRATION (the app the files go into)")
    app, previous = match["app"], match["migration"]
    files: Files = {}
    for m in request.migrations:
        dependencies = f"[({app!r}, {previous!r})]" if previous else "[]"
        files[f"{m.stem}.py"] = DJANGO_TEMPLATE.format(title=m.title, stem=m.stem, dependencies=dependencies)
        previous = m.stem
    return {**files, **pairs(request.migrations, ".sql", ".down.sql", "sql/")}


TOOLS: dict[str, Callable[[Request], Files]] = {
    "sqlx": for_sqlx,
    "golang-migrate": for_golang_migrate,
    "flyway": for_flyway,
    "dbmate": for_dbmate,
    "sqitch": for_sqitch,
    "liquibase": for_liquibase,
    "yoyo": for_yoyo,
    "node-pg-migrate": for_node_pg_migrate,
    "graphile-migrate": for_graphile_migrate,
    "alembic": for_alembic,
    "django": for_django,
}


def export(tool: str, dest: Path, sql_dir: Path = SQL_DIR, *, after: str | None = None) -> list[tuple[Path, bool]]:
    """Write the files for `tool` under `dest`; return (path, written) for each.

    written is False for a file that already held exactly this content. Raises
    ExportRefused, having written nothing, when any file exists with other content,
    and UsageError when --after does not fit the tool.
    """
    files = TOOLS[tool](Request(migrations(sql_dir), after, dest))
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


class ListTools(argparse.Action):
    """--tools: print the tools, space-separated (make export's usage line), and exit."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the tools and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(" ".join(TOOLS))
        parser.exit()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m tooling.export", description="Write the migrations for TOOL.")
    parser.add_argument("--tools", action=ListTools)
    parser.add_argument("tool", choices=list(TOOLS), metavar="TOOL", help="|".join(TOOLS))
    parser.add_argument("dest", type=Path, metavar="DEST", help="folder to write into")
    parser.add_argument("--after", metavar="NEWEST", help="your newest migration: the files sort after it")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)  # exits with status 2 and a usage line on bad arguments
    try:
        results = export(args.tool, args.dest, after=args.after)
    except UsageError as error:
        print(f"usage error: {error}", file=sys.stderr)
        return 2
    except ExportRefused as refused:
        print(refused, file=sys.stderr)
        return 1
    for path, written in results:
        print(f"{'wrote' if written else 'unchanged (same content)'}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
