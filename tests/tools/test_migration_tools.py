"""The files run unchanged by other migration tools: dbmate, sqitch and (emulated) sqlx;
tests/tools/test_tools_*.py do the same for Liquibase, yoyo, Alembic, Django, node-pg-migrate
and graphile-migrate.

Each tool gets the files exactly as `make export TOOL=... DEST=...` writes them
(tooling/export.py), so the recipe in docs/README_IDEMPOTENCY.md is what runs here. After
every step the catalog is compared with the one the files leave when applied directly
(helpers.migration_states), apart from each tool's own bookkeeping table.

dbmate and sqitch are the real programs (skipped when absent; CI installs both).
sqlx-cli cannot be installed here, so `SqlxEmulation` does what its migrator does; see there.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import time
from pathlib import Path

import psycopg
import pytest

from tests import helpers
from tooling import export
from tooling.servers import Server

Bookkeeping = tuple[str, ...]


# --- dbmate -------------------------------------------------------------------------


def dbmate_url(server: Server, db: str) -> str:
    """dbmate asks for TLS unless told otherwise; the test server has none."""
    url = server.url(db)
    return url + ("&" if "?" in url else "?") + "sslmode=disable"


def test_dbmate_up_rollback_up(
    pg_server: Server, empty_database: str, empty_conn: psycopg.Connection, tmp_path: Path
) -> None:
    dbmate = helpers.require("dbmate")
    states = helpers.migration_states(empty_conn)
    migrations_dir = tmp_path / "db" / "migrations"
    export.export("dbmate", migrations_dir)
    env = helpers.tool_env(DATABASE_URL=dbmate_url(pg_server, empty_database))
    # --no-dump-schema: dbmate would otherwise write db/schema.sql with pg_dump after each step.
    dbmate_args = [dbmate, "--migrations-dir", str(migrations_dir), "--no-dump-schema"]
    bookkeeping = ("schema_migrations",)

    def applied() -> list[str]:
        return [row[0] for row in empty_conn.execute("SELECT version FROM schema_migrations ORDER BY version")]

    helpers.run_tool([*dbmate_args, "up"], cwd=tmp_path, env=env)
    helpers.assert_catalog(empty_conn, states[-1], "dbmate up must build every migration", besides=bookkeeping)
    assert applied() == list(helpers.NUMBERS), "dbmate must record every version"

    for left in reversed(range(len(helpers.NUMBERS))):  # each rollback undoes the newest left
        helpers.run_tool([*dbmate_args, "rollback"], cwd=tmp_path, env=env)
        undone = helpers.NUMBERS[left]
        helpers.assert_catalog(
            empty_conn, states[left], f"dbmate rollback must undo {undone} only", besides=bookkeeping
        )
        assert applied() == list(helpers.NUMBERS[:left])

    helpers.run_tool([*dbmate_args, "up"], cwd=tmp_path, env=env)
    helpers.assert_catalog(empty_conn, states[-1], "dbmate up again must rebuild everything", besides=bookkeeping)
    assert applied() == list(helpers.NUMBERS)
    again = helpers.run_tool([*dbmate_args, "up"], cwd=tmp_path, env=env)
    assert "Applying" not in again.stdout, f"nothing may be pending after up: {again.stdout}"


def dbmate_with_user_history(server: Server, db: str, tmp_path: Path) -> tuple[Path, list[str], dict[str, str]]:
    """A dbmate folder holding the user's own timestamped migration, applied with dbmate up;
    returns the folder, the dbmate command and its environment."""
    migrations_dir = tmp_path / "db" / "migrations"
    migrations_dir.mkdir(parents=True)
    user = export.Migration(
        helpers.USER_VERSION, "create_shop_orders", helpers.USER_UP.read_text(), helpers.USER_DOWN.read_text()
    )
    (migrations_dir / f"{user.stem}.sql").write_text(export.dbmate_text(user))
    env = helpers.tool_env(DATABASE_URL=dbmate_url(server, db))
    dbmate_args = [helpers.require("dbmate"), "--migrations-dir", str(migrations_dir), "--no-dump-schema"]
    helpers.run_tool([*dbmate_args, "up"], cwd=tmp_path, env=env)
    return migrations_dir, dbmate_args, env


def test_dbmate_next_to_a_timestamped_history(
    pg_server: Server, empty_database: str, empty_conn: psycopg.Connection, tmp_path: Path
) -> None:
    """With --after, the files get the versions after the user's newest, so dbmate's rollback
    (the newest version) undoes 047, 046, then 045, and never the user's own migration."""
    states = helpers.migration_states(empty_conn)
    migrations_dir, dbmate_args, env = dbmate_with_user_history(pg_server, empty_database, tmp_path)
    bookkeeping = ("schema_migrations", helpers.USER_TABLE)

    export.export("dbmate", migrations_dir, after=helpers.USER_VERSION)
    helpers.run_tool([*dbmate_args, "up"], cwd=tmp_path, env=env)
    helpers.assert_catalog(empty_conn, states[-1], "dbmate up must build every migration", besides=bookkeeping)
    applied = [row[0] for row in empty_conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    after = [str(int(helpers.USER_VERSION) + n) for n in range(1, len(helpers.NUMBERS) + 1)]
    assert applied == [helpers.USER_VERSION, *after], applied

    rollback = functools.partial(helpers.run_tool, [*dbmate_args, "rollback"], cwd=tmp_path, env=env)
    helpers.assert_undone_newest_first(
        empty_conn, states, rollback, "the next rollback must undo {number}", besides=bookkeeping
    )
    assert helpers.has_table(empty_conn, helpers.USER_TABLE), "the user's own migration must stay applied"


def test_dbmate_rolls_back_the_users_migration_when_ours_keep_045(
    pg_server: Server, empty_database: str, empty_conn: psycopg.Connection, tmp_path: Path
) -> None:
    """The pitfall the guide warns of: without --after, 045/046 are applied after the user's
    timestamped migration, but rollback picks the highest version, which is the user's."""
    migrations_dir, dbmate_args, env = dbmate_with_user_history(pg_server, empty_database, tmp_path)
    export.export("dbmate", migrations_dir)
    helpers.run_tool([*dbmate_args, "up"], cwd=tmp_path, env=env)
    assert helpers.has_table(empty_conn, "idempotency_records"), "dbmate up must apply 045 after the user's history"
    helpers.run_tool([*dbmate_args, "rollback"], cwd=tmp_path, env=env)
    assert not helpers.has_table(empty_conn, helpers.USER_TABLE), (
        "dbmate rollback undoes the highest version: the user's"
    )
    assert helpers.has_table(empty_conn, "idempotency_records"), "and leaves the files' migrations applied"


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
    return helpers.tool_env(
        HOME=str(home),
        SQITCH_USER_CONFIG=str(user_config),
        SQITCH_SYSTEM_CONFIG=str(system_config),
        SQITCH_CONFIG=str(project_config),
    )


def sqitch_target(server: Server, db: str) -> str:
    """No password in the target: it is sqitch's argv. sqitch takes it from PGPASSWORD."""
    return "db:" + re.sub(r"^postgres(ql)?://", "pg://", dataclasses.replace(server, password=None).url(db))


def test_sqitch_deploy_revert_deploy_with_verify(
    pg_server: Server, empty_database: str, empty_conn: psycopg.Connection, tmp_path: Path
) -> None:
    sqitch = helpers.require("sqitch")
    states = helpers.migration_states(empty_conn)
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
    helpers.run_tool([sqitch, "deploy", "--verify", target], cwd=project, env=env)
    assert helpers.catalog_snapshot(empty_conn) == states[-1], "sqitch deploy must build every migration"
    verified = helpers.run_tool([sqitch, "verify", target], cwd=project, env=env)
    assert "Verify successful" in verified.stdout, verified.stdout
    assert verify_scripts_fail() == [], "every verify script must pass on a deployed database"

    helpers.run_tool([sqitch, "revert", "-y", target], cwd=project, env=env)
    assert helpers.catalog_snapshot(empty_conn) == states[0], "sqitch revert must remove everything"
    assert verify_scripts_fail() == sorted(p.name for p in (project / "verify").glob("*.sql")), (
        "every verify script must fail once its objects are gone"
    )

    helpers.run_tool([sqitch, "deploy", target], cwd=project, env=env)
    assert helpers.catalog_snapshot(empty_conn) == states[-1], "sqitch deploy after revert must rebuild everything"
    again = helpers.run_tool([sqitch, "deploy", target], cwd=project, env=env)
    assert "Nothing to deploy" in again.stdout, again.stdout


def sqitch_user_project(project: Path) -> str:
    """The user's own sqitch project, one change named after its timestamp; returns its name."""
    change = f"{helpers.USER_VERSION}_create_shop_orders"
    project.mkdir()
    (project / "sqitch.plan").write_text(
        "%syntax-version=1.0.0\n%project=shop\n\n"
        f"{change} 2025-01-01T12:00:00Z Shop <shop@example.com> # create shop orders\n"
    )
    for kind, text in (("deploy", helpers.USER_UP.read_text()), ("revert", helpers.USER_DOWN.read_text())):
        (project / kind).mkdir()
        (project / kind / f"{change}.sql").write_text(export.in_transaction(text))
    return change


def test_sqitch_next_to_a_project_of_its_own(
    pg_server: Server, empty_database: str, empty_conn: psycopg.Connection, tmp_path: Path
) -> None:
    """The guide's recipe for an existing sqitch project: export into an empty folder, copy
    the scripts, append the change lines to the project's plan; revert --to steps back."""
    sqitch = helpers.require("sqitch")
    states = helpers.migration_states(empty_conn)
    project = tmp_path / "shop"
    user_change = sqitch_user_project(project)
    env = pg_server.client_env(sqitch_env(tmp_path, pg_server.tool("psql")))
    target = sqitch_target(pg_server, empty_database)
    helpers.run_tool([sqitch, "deploy", target], cwd=project, env=env)

    exported = tmp_path / "exported"
    export.export("sqitch", exported)
    for kind in ("deploy", "revert", "verify"):
        (project / kind).mkdir(exist_ok=True)
        for script in (exported / kind).glob("*.sql"):
            (project / kind / script.name).write_text(script.read_text())
    ours = [line for line in (exported / "sqitch.plan").read_text().splitlines() if line and line[0] != "%"]
    with (project / "sqitch.plan").open("a") as plan:
        plan.write("\n".join(ours) + "\n")

    helpers.run_tool([sqitch, "deploy", "--verify", target], cwd=project, env=env)
    bookkeeping = (helpers.USER_TABLE,)
    helpers.assert_catalog(empty_conn, states[-1], "deploy must build every migration", besides=bookkeeping)
    helpers.run_tool([sqitch, "revert", "-y", target, "--to", "@HEAD^"], cwd=project, env=env)
    newest = helpers.NUMBERS[-1]
    helpers.assert_catalog(empty_conn, states[-2], f"revert --to @HEAD^ must undo {newest}", besides=bookkeeping)
    helpers.run_tool([sqitch, "revert", "-y", target, "--to", user_change], cwd=project, env=env)
    helpers.assert_catalog(empty_conn, states[0], "revert --to the user's change: all of ours", besides=bookkeeping)
    assert helpers.has_table(empty_conn, helpers.USER_TABLE), "the user's own change must stay deployed"


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
        (47, "create idempotency protocol"),
    ]
    assert all(m.down is not None for m in parsed), "every version must have its down file"


def test_sqlx_emulation_run_revert_run(empty_conn: psycopg.Connection, tmp_path: Path) -> None:
    states = helpers.migration_states(empty_conn)
    export.export("sqlx", tmp_path)
    sqlx = SqlxEmulation(empty_conn, tmp_path)
    bookkeeping = (SqlxEmulation.TABLE,)

    versions = [int(number) for number in helpers.NUMBERS]
    assert sqlx.run() == versions
    helpers.assert_catalog(empty_conn, states[-1], "run must build every migration", besides=bookkeeping)
    for left in reversed(range(len(versions))):
        assert sqlx.revert() == versions[left]
        helpers.assert_catalog(empty_conn, states[left], f"revert must undo {versions[left]} only", besides=bookkeeping)
    assert sqlx.revert() is None
    assert sqlx.run() == versions
    helpers.assert_catalog(empty_conn, states[-1], "run after revert must rebuild everything", besides=bookkeeping)
    assert sqlx.run() == [], "nothing may be pending after run"


def test_sqlx_emulation_refuses_a_changed_applied_file(empty_conn: psycopg.Connection, tmp_path: Path) -> None:
    export.export("sqlx", tmp_path)
    assert SqlxEmulation(empty_conn, tmp_path).run() == [int(number) for number in helpers.NUMBERS]
    changed = tmp_path / "045_create_idempotency_records.sql"
    changed.write_text(changed.read_text() + "\n-- edited after it was applied\n")
    with pytest.raises(RuntimeError, match="migration 45 was previously applied but has been modified"):
        SqlxEmulation(empty_conn, tmp_path).run()
