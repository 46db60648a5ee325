"""The node-pg-migrate and graphile-migrate exports run by the real tools (npm packages,
installed globally by .ci/run). Both read the database URL, password included, from
DATABASE_URL in their environment."""

from __future__ import annotations

import functools
from pathlib import Path

import psycopg

from tests import helpers
from tooling import export
from tooling.servers import Server

# --- node-pg-migrate ------------------------------------------------------------------

NPM_BOOKKEEPING = ("pgmigrations",)


def node_pg_migrate(folder: Path, *args: str, server: Server, db: str) -> str:
    """Run node-pg-migrate on folder; its stdout."""
    program = helpers.require("node-pg-migrate")
    env = helpers.tool_env(DATABASE_URL=server.url(db))
    return helpers.run_tool(
        [program, *args, "--migrations-dir", str(folder), "--no-verbose"], cwd=folder, env=env
    ).stdout


def npm_applied(conn: psycopg.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT name FROM pgmigrations ORDER BY run_on, id").fetchall()]


def test_node_pg_migrate_up_down_up(
    pg_server: Server, empty_database: str, empty_conn: psycopg.Connection, tmp_path: Path
) -> None:
    states = helpers.migration_states(empty_conn)
    export.export("node-pg-migrate", tmp_path)
    run = {"server": pg_server, "db": empty_database}

    node_pg_migrate(tmp_path, "up", **run)
    helpers.assert_catalog(empty_conn, states[-1], "up must build every migration", besides=NPM_BOOKKEEPING)
    down = functools.partial(node_pg_migrate, tmp_path, "down", **run)
    helpers.assert_undone_newest_first(
        empty_conn, states, down, "down must undo {number} only", besides=NPM_BOOKKEEPING
    )
    assert npm_applied(empty_conn) == []
    node_pg_migrate(tmp_path, "up", **run)
    helpers.assert_catalog(empty_conn, states[-1], "up again must rebuild everything", besides=NPM_BOOKKEEPING)
    again = node_pg_migrate(tmp_path, "up", **run)
    assert "No migrations to run" in again, f"nothing may be pending after up: {again}"
    assert npm_applied(empty_conn) == list(helpers.STEMS)


def test_node_pg_migrate_next_to_a_timestamped_history(
    pg_server: Server, empty_database: str, empty_conn: psycopg.Connection, tmp_path: Path
) -> None:
    """node-pg-migrate refuses to run a migration that sorts before one already run, so the
    files need --after; then `down` undoes ours, the newest first."""
    states = helpers.migration_states(empty_conn)
    user = export.Migration(
        helpers.USER_VERSION, "create_shop_orders", helpers.USER_UP.read_text(), helpers.USER_DOWN.read_text()
    )
    (tmp_path / f"{user.stem}.sql").write_text(export.node_pg_migrate_text(user))
    run = {"server": pg_server, "db": empty_database}
    node_pg_migrate(tmp_path, "up", **run)

    export.export("node-pg-migrate", tmp_path, after=helpers.USER_VERSION)
    node_pg_migrate(tmp_path, "up", **run)
    bookkeeping = (*NPM_BOOKKEEPING, helpers.USER_TABLE)
    helpers.assert_catalog(empty_conn, states[-1], "up must build every migration", besides=bookkeeping)
    down = functools.partial(node_pg_migrate, tmp_path, "down", **run)
    helpers.assert_undone_newest_first(
        empty_conn, states, down, "the next down must undo {number}", besides=bookkeeping
    )
    assert helpers.has_table(empty_conn, helpers.USER_TABLE), "the user's own migration must stay applied"


# --- graphile-migrate -----------------------------------------------------------------


def graphile_migrate(project: Path, *, server: Server, db: str) -> str:
    """`graphile-migrate migrate` in project (its migrations/ folder); its output."""
    program = helpers.require("graphile-migrate")
    env = helpers.tool_env(DATABASE_URL=server.url(db))
    result = helpers.run_tool([program, "migrate"], cwd=project, env=env)
    return result.stdout + result.stderr


def graphile_applied(conn: psycopg.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT filename FROM graphile_migrate.migrations ORDER BY filename")]


def write_gmrc(project: Path) -> None:
    """graphile-migrate's settings file: the connection comes from DATABASE_URL."""
    (project / ".gmrc").write_text('{\n  "afterReset": [],\n  "afterAllMigrations": [],\n  "afterCurrent": []\n}\n')


def test_graphile_migrate_migrate_then_nothing_pending(
    pg_server: Server, empty_database: str, empty_conn: psycopg.Connection, tmp_path: Path
) -> None:
    """graphile-migrate is forward-only: migrate, and migrate again does nothing. Its
    bookkeeping lives in the schema graphile_migrate, so public holds only our objects."""
    states = helpers.migration_states(empty_conn)
    write_gmrc(tmp_path)
    export.export("graphile-migrate", tmp_path / "migrations")
    run = {"server": pg_server, "db": empty_database}

    graphile_migrate(tmp_path, **run)
    assert helpers.catalog_snapshot(empty_conn) == states[-1], "migrate must build every migration"
    assert graphile_applied(empty_conn) == [f"{n:06}.sql" for n in range(1, len(helpers.STEMS) + 1)]
    again = graphile_migrate(tmp_path, **run)
    assert "Running migration" not in again, f"nothing may be pending: {again}"
    assert helpers.catalog_snapshot(empty_conn) == states[-1]


def test_graphile_migrate_next_to_a_committed_history(
    pg_server: Server, empty_database: str, empty_conn: psycopg.Connection, tmp_path: Path
) -> None:
    """The export chains ours after the user's committed migration; with no down in
    graphile-migrate, the guide's removal is the down files, the newest first, with psql."""
    states = helpers.migration_states(empty_conn)
    write_gmrc(tmp_path)
    committed = tmp_path / "migrations" / "committed"
    committed.mkdir(parents=True)
    body = helpers.USER_UP.read_text().strip() + "\n"
    header = f"--! Previous: -\n--! Hash: {export.graphile_hash(body, None)}\n--! Message: create shop orders\n\n"
    (committed / "000001-create-shop-orders.sql").write_text(header + body)
    run = {"server": pg_server, "db": empty_database}
    graphile_migrate(tmp_path, **run)

    export.export("graphile-migrate", tmp_path / "migrations")
    graphile_migrate(tmp_path, **run)
    helpers.assert_catalog(empty_conn, states[-1], "migrate must build every migration", besides=(helpers.USER_TABLE,))
    assert graphile_applied(empty_conn) == [f"{n:06}.sql" for n in range(1, len(helpers.STEMS) + 2)]

    down = tmp_path / "migrations" / "down"
    for stem in reversed(helpers.STEMS):
        name = f"{stem}.down.sql"
        helpers.psql(pg_server, empty_database, "-v", "ON_ERROR_STOP=1", "-1", "-f", str(down / name), check=True)
    helpers.assert_catalog(empty_conn, states[0], "the down files must remove all", besides=(helpers.USER_TABLE,))
    assert helpers.has_table(empty_conn, helpers.USER_TABLE), "the user's own migration must stay"
