"""The files run unchanged by other migration tools: dbmate, sqitch and (emulated) sqlx.

Each tool gets the files exactly as `make export TOOL=... DEST=...` writes them
(tooling/export.py), so the recipe in docs/README_IDEMPOTENCY.md is what runs here. After
every step the catalog is compared with the one the files leave when applied directly
(helpers.migration_states), apart from each tool's own bookkeeping table.

dbmate and sqitch are the real programs (skipped when absent; CI installs both).
sqlx-cli cannot be installed here, so `SqlxEmulation` does what its migrator does; see there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from tests import helpers
from tests.helpers import Snapshot, catalog_snapshot, migration_states
from tooling import export
from tooling.servers import Server

Bookkeeping = tuple[str, ...]


def without(snapshot: Snapshot, tables: Bookkeeping) -> Snapshot:
    """The snapshot minus rows about a tool's own tables (their columns, keys, row types)."""

    def ours(row: tuple[object, ...]) -> bool:
        name = str(row[0]).lstrip("_")
        return not any(name.startswith(table.lstrip("_")) for table in tables)

    return {kind: [row for row in rows if ours(row)] for kind, rows in snapshot.items()}


def run_tool(args: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    return result


def require(program: str) -> str:
    found = shutil.which(program)
    if found is None:
        pytest.skip(f"{program} is not installed (CI installs it: see .ci/run)")
    return found


# --- dbmate -------------------------------------------------------------------------


def dbmate_url(server: Server, db: str) -> str:
    """dbmate asks for TLS unless told otherwise; the test server has none."""
    url = server.url(db)
    return url + ("&" if "?" in url else "?") + "sslmode=disable"


def test_dbmate_up_rollback_up(
    pg_server: Server, empty_database: str, empty_conn: psycopg.Connection, tmp_path: Path
) -> None:
    dbmate = require("dbmate")
    states = migration_states(empty_conn)
    migrations_dir = tmp_path / "db" / "migrations"
    export.export("dbmate", migrations_dir)
    env = {**os.environ, "DATABASE_URL": dbmate_url(pg_server, empty_database)}
    # --no-dump-schema: dbmate would otherwise write db/schema.sql with pg_dump after each step.
    dbmate_args = [dbmate, "--migrations-dir", str(migrations_dir), "--no-dump-schema"]
    bookkeeping = ("schema_migrations",)

    def applied() -> list[str]:
        return [row[0] for row in empty_conn.execute("SELECT version FROM schema_migrations ORDER BY version")]

    run_tool([*dbmate_args, "up"], cwd=tmp_path, env=env)
    assert without(catalog_snapshot(empty_conn), bookkeeping) == states[2], "dbmate up must build 045 and 046"
    assert applied() == ["045", "046"], "dbmate must record both versions"

    run_tool([*dbmate_args, "rollback"], cwd=tmp_path, env=env)
    assert without(catalog_snapshot(empty_conn), bookkeeping) == states[1], "dbmate rollback must undo 046 only"
    assert applied() == ["045"]
    run_tool([*dbmate_args, "rollback"], cwd=tmp_path, env=env)
    assert without(catalog_snapshot(empty_conn), bookkeeping) == states[0], "a second rollback must undo 045"
    assert applied() == []

    run_tool([*dbmate_args, "up"], cwd=tmp_path, env=env)
    assert without(catalog_snapshot(empty_conn), bookkeeping) == states[2], "dbmate up again must rebuild both"
    assert applied() == ["045", "046"]
    again = run_tool([*dbmate_args, "up"], cwd=tmp_path, env=env)
    assert "Applying" not in again.stdout, f"nothing may be pending after up: {again.stdout}"


# --- sqitch -------------------------------------------------------------------------


def sqitch_env(tmp_path: Path, psql: str) -> dict[str, str]:
    """A private HOME and configuration: sqitch writes nothing outside tmp_path."""
    home = tmp_path / "home"
    home.mkdir()
    user_config = home / "sqitch.conf"
    user_config.write_text("[user]\n\tname = Idempotency Test\n\temail = idempotency-test@example.com\n")
    system_config = home / "system.conf"
    system_config.write_text("")
    project_config = home / "project.conf"
    project_config.write_text(f'[core]\n\tengine = pg\n[engine "pg"]\n\tclient = {psql}\n')
    return {
        **os.environ,
        "HOME": str(home),
        "SQITCH_USER_CONFIG": str(user_config),
        "SQITCH_SYSTEM_CONFIG": str(system_config),
        "SQITCH_CONFIG": str(project_config),
    }


def sqitch_target(server: Server, db: str) -> str:
    """No password in the target: it is sqitch's argv. sqitch takes it from PGPASSWORD."""
    return "db:" + re.sub(r"^postgres(ql)?://", "pg://", dataclasses.replace(server, password=None).url(db))


def test_sqitch_deploy_revert_deploy_with_verify(
    pg_server: Server, empty_database: str, empty_conn: psycopg.Connection, tmp_path: Path
) -> None:
    sqitch = require("sqitch")
    states = migration_states(empty_conn)
    project = tmp_path / "project"
    export.export("sqitch", project)
    env = pg_server.client_env(sqitch_env(tmp_path, pg_server.tool("psql")))
    target = sqitch_target(pg_server, empty_database)

    def verify_scripts_fail() -> list[str]:
        """Names of the verify scripts that fail when run alone through psql."""
        failing = []
        for script in sorted((project / "verify").glob("*.sql")):
            result = helpers.psql(pg_server, empty_database, "-v", "ON_ERROR_STOP=1", "-f", str(script))
            if result.returncode != 0:
                failing.append(script.name)
        return failing

    # sqitch keeps its registry in its own schema (sqitch), so public holds only our objects.
    run_tool([sqitch, "deploy", "--verify", target], cwd=project, env=env)
    assert catalog_snapshot(empty_conn) == states[2], "sqitch deploy must build 045 and 046"
    verified = run_tool([sqitch, "verify", target], cwd=project, env=env)
    assert "Verify successful" in verified.stdout, verified.stdout
    assert verify_scripts_fail() == [], "every verify script must pass on a deployed database"

    run_tool([sqitch, "revert", "-y", target], cwd=project, env=env)
    assert catalog_snapshot(empty_conn) == states[0], "sqitch revert must remove everything"
    assert verify_scripts_fail() == sorted(p.name for p in (project / "verify").glob("*.sql")), (
        "every verify script must fail once its objects are gone"
    )

    run_tool([sqitch, "deploy", target], cwd=project, env=env)
    assert catalog_snapshot(empty_conn) == states[2], "sqitch deploy after revert must rebuild both"
    again = run_tool([sqitch, "deploy", target], cwd=project, env=env)
    assert "Nothing to deploy" in again.stdout, again.stdout


# --- sqlx (emulated) ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SqlxMigration:
    version: int
    description: str
    up: str
    down: str | None

    @property
    def checksum(self) -> bytes:
        return hashlib.sha384(self.up.encode()).digest()


class SqlxEmulation:
    """An EMULATION of sqlx-cli's migrator (`sqlx migrate run` / `sqlx migrate revert`),
    which cannot be installed here. It does what sqlx does with a migrations folder:

    - the version is the file name up to the first `_`, parsed as an integer; the rest,
      minus the suffix, with `_` read as a space, is the description;
    - `NNN_name.down.sql` is the down of version NNN; `NNN_name.sql` (or `.up.sql`) its up;
    - each file's whole text is sent as ONE simple-protocol query (psycopg sends a query
      without parameters that way), inside its own transaction, together with the row
      that records it in `_sqlx_migrations` (version, description, success, SHA-384
      checksum of the up, execution time), like sqlx's bookkeeping table;
    - `run` refuses to go on when an applied migration's file has changed (checksum);
    - `revert` undoes the latest applied version with its down file and deletes its row.
    """

    TABLE = "_sqlx_migrations"

    def __init__(self, conn: psycopg.Connection, folder: Path) -> None:
        self.conn = conn
        self.migrations = self.parse(folder)

    @staticmethod
    def parse(folder: Path) -> list[SqlxMigration]:
        ups: dict[int, tuple[str, str]] = {}
        downs: dict[int, str] = {}
        for path in sorted(folder.glob("*.sql")):
            version_text, _, rest = path.name.partition("_")
            version = int(version_text)
            if rest.endswith(".down.sql"):
                downs[version] = path.read_text()
            else:
                description = rest.removesuffix(".sql").removesuffix(".up").replace("_", " ")
                ups[version] = (description, path.read_text())
        return [SqlxMigration(v, d, up, downs.get(v)) for v, (d, up) in sorted(ups.items())]

    def ensure_table(self) -> None:
        self.conn.execute(
            """CREATE TABLE IF NOT EXISTS _sqlx_migrations (
                version BIGINT PRIMARY KEY,
                description TEXT NOT NULL,
                installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
                success BOOLEAN NOT NULL,
                checksum BYTEA NOT NULL,
                execution_time BIGINT NOT NULL
            )"""
        )

    def applied(self) -> dict[int, bytes]:
        self.ensure_table()
        rows = self.conn.execute("SELECT version, checksum FROM _sqlx_migrations ORDER BY version").fetchall()
        return {int(version): bytes(checksum) for version, checksum in rows}

    def run(self) -> list[int]:
        applied = self.applied()
        done = []
        for migration in self.migrations:
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    raise RuntimeError(f"migration {migration.version} was previously applied but has been modified")
                continue
            started = time.monotonic_ns()
            with self.conn.transaction():
                self.conn.execute(migration.up)  # whole file, one simple-protocol query
                self.conn.execute(
                    "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)"
                    " VALUES (%s, %s, TRUE, %s, %s)",
                    [migration.version, migration.description, migration.checksum, time.monotonic_ns() - started],
                )
            done.append(migration.version)
        return done

    def revert(self) -> int | None:
        applied = self.applied()
        if not applied:
            return None
        latest = max(applied)
        migration = next(m for m in self.migrations if m.version == latest)
        assert migration.down is not None, f"migration {latest} has no down file"
        with self.conn.transaction():
            self.conn.execute(migration.down)  # whole file, one simple-protocol query
            self.conn.execute("DELETE FROM _sqlx_migrations WHERE version = %s", [latest])
        return latest


def test_sqlx_emulation_parses_the_files_as_sqlx_does(tmp_path: Path) -> None:
    export.export("sqlx", tmp_path)
    parsed = SqlxEmulation.parse(tmp_path)
    assert [(m.version, m.description) for m in parsed] == [
        (45, "create idempotency records"),
        (46, "create idempotency cleanup job"),
    ]
    assert all(m.down is not None for m in parsed), "every version must have its down file"


def test_sqlx_emulation_run_revert_run(empty_conn: psycopg.Connection, tmp_path: Path) -> None:
    states = migration_states(empty_conn)
    export.export("sqlx", tmp_path)
    sqlx = SqlxEmulation(empty_conn, tmp_path)
    bookkeeping = (SqlxEmulation.TABLE,)

    assert sqlx.run() == [45, 46]
    assert without(catalog_snapshot(empty_conn), bookkeeping) == states[2], "run must build 045 and 046"
    assert sqlx.revert() == 46
    assert without(catalog_snapshot(empty_conn), bookkeeping) == states[1], "the first revert must undo 046 only"
    assert sqlx.revert() == 45
    assert without(catalog_snapshot(empty_conn), bookkeeping) == states[0], "the second revert must undo 045"
    assert sqlx.revert() is None
    assert sqlx.run() == [45, 46]
    assert without(catalog_snapshot(empty_conn), bookkeeping) == states[2], "run after revert must rebuild both"
    assert sqlx.run() == [], "nothing may be pending after run"


def test_sqlx_emulation_refuses_a_changed_applied_file(empty_conn: psycopg.Connection, tmp_path: Path) -> None:
    export.export("sqlx", tmp_path)
    assert SqlxEmulation(empty_conn, tmp_path).run() == [45, 46]
    changed = tmp_path / "045_create_idempotency_records.sql"
    changed.write_text(changed.read_text() + "\n-- edited after it was applied\n")
    with pytest.raises(RuntimeError, match="migration 45 was previously applied but has been modified"):
        SqlxEmulation(empty_conn, tmp_path).run()
