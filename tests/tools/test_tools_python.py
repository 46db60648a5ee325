"""The yoyo, Alembic and Django exports run by the real tools (the dependency group
`tools` in pyproject.toml, part of `make install`), each as its own command-line
program in a subprocess, with the connection in a private settings file or the
environment, never in argv."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import psycopg

from tests import helpers
from tooling import export
from tooling.servers import Server

BIN = Path(sys.executable).parent


def private_file(path: Path, text: str) -> None:
    """A settings file holding a password: created here only, readable by us only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def sqlalchemy_url(server: Server, db: str) -> str:
    """The server's URL for SQLAlchemy-style tools, with the psycopg (3) driver."""
    return "postgresql+psycopg://" + server.url(db).split("://", 1)[1]


# --- yoyo -----------------------------------------------------------------------------

YOYO_BOOKKEEPING = ("_yoyo", "yoyo_lock")


def yoyo(project: Path, *args: str) -> str:
    """`yoyo ARGS` in project, whose yoyo.ini holds the database and the sources."""
    return helpers.run_tool([str(BIN / "yoyo"), *args, "--batch"], cwd=project, env=helpers.tool_env()).stdout


def yoyo_project(project: Path, server: Server, db: str) -> Path:
    """A project folder with migrations/ and a private yoyo.ini pointing at db."""
    migrations = project / "migrations"
    migrations.mkdir(parents=True)
    url = sqlalchemy_url(server, db).replace("%", "%%")  # the ini file interpolates %
    private_file(project / "yoyo.ini", f"[DEFAULT]\nsources = {migrations}\ndatabase = {url}\nbatch_mode = on\n")
    return migrations


def yoyo_applied(conn: psycopg.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT migration_id FROM _yoyo_migration ORDER BY applied_at_utc")]


def test_yoyo_apply_rollback_apply(
    pg_server: Server, empty_database: str, empty_conn: psycopg.Connection, tmp_path: Path
) -> None:
    states = helpers.migration_states(empty_conn)
    migrations = yoyo_project(tmp_path, pg_server, empty_database)
    export.export("yoyo", migrations)

    yoyo(tmp_path, "apply")
    helpers.assert_catalog(empty_conn, states[-1], "apply must build every migration", besides=YOYO_BOOKKEEPING)
    rollback = functools.partial(yoyo, tmp_path, "rollback")
    helpers.assert_undone_newest_first(
        empty_conn, states, rollback, "rollback must undo {number} only", besides=YOYO_BOOKKEEPING
    )
    assert yoyo_applied(empty_conn) == []
    yoyo(tmp_path, "apply")
    helpers.assert_catalog(empty_conn, states[-1], "apply again must rebuild everything", besides=YOYO_BOOKKEEPING)
    yoyo(tmp_path, "apply")
    assert yoyo_applied(empty_conn) == list(helpers.STEMS), "a second apply must apply nothing"


def test_yoyo_next_to_a_timestamped_history(
    pg_server: Server, empty_database: str, empty_conn: psycopg.Connection, tmp_path: Path
) -> None:
    """yoyo's batch rollback undoes the last migration in id order: with --after, ours, newest first."""
    states = helpers.migration_states(empty_conn)
    migrations = yoyo_project(tmp_path, pg_server, empty_database)
    (migrations / f"{helpers.USER_VERSION}_create_shop_orders.sql").write_text(helpers.USER_UP.read_text())
    (migrations / f"{helpers.USER_VERSION}_create_shop_orders.rollback.sql").write_text(helpers.USER_DOWN.read_text())
    yoyo(tmp_path, "apply")

    export.export("yoyo", migrations, after=helpers.USER_VERSION)
    yoyo(tmp_path, "apply")
    bookkeeping = (*YOYO_BOOKKEEPING, helpers.USER_TABLE)
    helpers.assert_catalog(empty_conn, states[-1], "apply must build every migration", besides=bookkeeping)
    rollback = functools.partial(yoyo, tmp_path, "rollback")
    helpers.assert_undone_newest_first(
        empty_conn, states, rollback, "the next rollback must undo {number}", besides=bookkeeping
    )
    assert helpers.has_table(empty_conn, helpers.USER_TABLE), "the user's own migration must stay applied"


# --- Alembic --------------------------------------------------------------------------

ALEMBIC_PROJECT = helpers.FIXTURES / "alembic_project"
ALEMBIC_BOOKKEEPING = ("alembic_version",)


def alembic_project(project: Path) -> Path:
    """alembic.ini and env.py of a minimal project (tests/fixtures/alembic_project); its versions/."""
    project.mkdir(exist_ok=True)
    for name in ("alembic.ini", "env.py", "script.py.mako"):
        (project / name).write_text((ALEMBIC_PROJECT / name).read_text())
    versions = project / "versions"
    versions.mkdir()
    return versions


def alembic(project: Path, server: Server, db: str, *args: str) -> str:
    env = helpers.tool_env(IDEMPOTENCY_ALEMBIC_URL=sqlalchemy_url(server, db))
    result = helpers.run_tool([str(BIN / "alembic"), "-c", "alembic.ini", *args], cwd=project, env=env)
    return result.stdout + result.stderr


def test_alembic_upgrade_downgrade_upgrade(
    pg_server: Server, empty_database: str, empty_conn: psycopg.Connection, tmp_path: Path
) -> None:
    states = helpers.migration_states(empty_conn)
    export.export("alembic", alembic_project(tmp_path))
    run = (tmp_path, pg_server, empty_database)

    alembic(*run, "upgrade", "head")
    helpers.assert_catalog(empty_conn, states[-1], "upgrade must build everything", besides=ALEMBIC_BOOKKEEPING)
    alembic(*run, "downgrade", "-1")
    newest = helpers.NUMBERS[-1]
    helpers.assert_catalog(empty_conn, states[-2], f"downgrade -1 must undo {newest}", besides=ALEMBIC_BOOKKEEPING)
    alembic(*run, "downgrade", "base")
    helpers.assert_catalog(empty_conn, states[0], "downgrade base: nothing left", besides=ALEMBIC_BOOKKEEPING)
    alembic(*run, "upgrade", "head")
    helpers.assert_catalog(empty_conn, states[-1], "upgrade again rebuilds everything", besides=ALEMBIC_BOOKKEEPING)
    again = alembic(*run, "upgrade", "head")
    assert "Running upgrade" not in again, f"nothing may be pending: {again}"


def test_alembic_next_to_a_revision_of_its_own(
    pg_server: Server, empty_database: str, empty_conn: psycopg.Connection, tmp_path: Path
) -> None:
    """--after makes 045 revise the user's head; downgrade -1 then undoes the newest of ours."""
    states = helpers.migration_states(empty_conn)
    versions = alembic_project(tmp_path)
    user = (ALEMBIC_PROJECT / "user_revision.py").read_text().replace("USER_VERSION", helpers.USER_VERSION)
    (versions / f"{helpers.USER_VERSION}_create_shop_orders.py").write_text(user)
    (versions / "shop").mkdir()
    for path in (helpers.USER_UP, helpers.USER_DOWN):
        (versions / "shop" / path.name).write_text(path.read_text())
    run = (tmp_path, pg_server, empty_database)
    alembic(*run, "upgrade", "head")

    export.export("alembic", versions, after=helpers.USER_VERSION)
    alembic(*run, "upgrade", "head")
    bookkeeping = (*ALEMBIC_BOOKKEEPING, helpers.USER_TABLE)
    helpers.assert_catalog(empty_conn, states[-1], "upgrade must build every migration", besides=bookkeeping)
    alembic(*run, "downgrade", "-1")
    newest = helpers.NUMBERS[-1]
    helpers.assert_catalog(empty_conn, states[-2], f"downgrade -1 must undo {newest}", besides=bookkeeping)
    alembic(*run, "downgrade", helpers.USER_VERSION)  # the revision id of the user's newest
    helpers.assert_catalog(empty_conn, states[0], "downgrade to the user's: all of ours", besides=bookkeeping)
    assert helpers.has_table(empty_conn, helpers.USER_TABLE), "the user's own revision must stay applied"


# --- Django ---------------------------------------------------------------------------

DJANGO_PROJECT = helpers.FIXTURES / "django_project"
DJANGO_BOOKKEEPING = ("django_migrations",)


def django_project(project: Path, server: Server) -> Path:
    """settings.py and the app `shop` (tests/fixtures/django_project); the app's migrations/."""
    project.mkdir(exist_ok=True)
    (project / "settings.py").write_text((DJANGO_PROJECT / "settings.py").read_text())
    migrations = project / "shop" / "migrations"
    migrations.mkdir(parents=True)
    (project / "shop" / "__init__.py").write_text("")
    (migrations / "__init__.py").write_text("")
    return migrations


def django_admin(project: Path, server: Server, db: str, *args: str) -> str:
    env = helpers.tool_env(
        DJANGO_SETTINGS_MODULE="settings",
        PYTHONPATH=str(project),
        PGHOST=server.host,
        PGPORT=str(server.port),
        PGUSER=server.user,
        PGPASSWORD=server.password or "",
        PGDATABASE=db,
    )
    return helpers.run_tool([str(BIN / "django-admin"), *args], cwd=project, env=env).stdout


def test_django_migrate_unapply_migrate(
    pg_server: Server, empty_database: str, empty_conn: psycopg.Connection, tmp_path: Path
) -> None:
    states = helpers.migration_states(empty_conn)
    export.export("django", django_project(tmp_path, pg_server), after="shop")
    run = (tmp_path, pg_server, empty_database)

    django_admin(*run, "migrate", "shop")
    helpers.assert_catalog(empty_conn, states[-1], "migrate must build everything", besides=DJANGO_BOOKKEEPING)
    django_admin(*run, "migrate", "shop", helpers.STEMS[0])
    helpers.assert_catalog(empty_conn, states[1], "migrate to 045 undoes the later ones", besides=DJANGO_BOOKKEEPING)
    django_admin(*run, "migrate", "shop", "zero")
    helpers.assert_catalog(empty_conn, states[0], "migrate shop zero: nothing left", besides=DJANGO_BOOKKEEPING)
    django_admin(*run, "migrate", "shop")
    helpers.assert_catalog(empty_conn, states[-1], "migrate again rebuilds everything", besides=DJANGO_BOOKKEEPING)
    again = django_admin(*run, "migrate", "shop")
    assert "No migrations to apply" in again, again


def test_django_next_to_a_migration_of_its_own(
    pg_server: Server, empty_database: str, empty_conn: psycopg.Connection, tmp_path: Path
) -> None:
    """--after shop.NEWEST makes 045 depend on the app's newest migration; migrating back
    to that one undoes all of ours and keeps the user's."""
    states = helpers.migration_states(empty_conn)
    migrations = django_project(tmp_path, pg_server)
    user_name = f"{helpers.USER_VERSION}_create_shop_orders"
    (migrations / f"{user_name}.py").write_text((DJANGO_PROJECT / "user_migration.py").read_text())
    (migrations / "shop").mkdir()
    for path in (helpers.USER_UP, helpers.USER_DOWN):
        (migrations / "shop" / path.name).write_text(path.read_text())
    run = (tmp_path, pg_server, empty_database)
    django_admin(*run, "migrate", "shop")

    export.export("django", migrations, after=f"shop.{user_name}")
    django_admin(*run, "migrate", "shop")
    bookkeeping = (*DJANGO_BOOKKEEPING, helpers.USER_TABLE)
    helpers.assert_catalog(empty_conn, states[-1], "migrate must build every migration", besides=bookkeeping)
    django_admin(*run, "migrate", "shop", helpers.STEMS[-2])
    newest = helpers.NUMBERS[-1]
    helpers.assert_catalog(empty_conn, states[-2], f"migrate to the one before must undo {newest}", besides=bookkeeping)
    django_admin(*run, "migrate", "shop", user_name)
    helpers.assert_catalog(empty_conn, states[0], "migrate to the user's: all of ours", besides=bookkeeping)
    assert helpers.has_table(empty_conn, helpers.USER_TABLE), "the user's own migration must stay applied"
