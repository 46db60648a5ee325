"""The Liquibase export run by the real Liquibase (the npm package `liquibase` bundles
Liquibase OSS; it needs a Java runtime). Liquibase starts a JVM for every command, so
this module keeps to two tests.

The connection goes through LIQUIBASE_COMMAND_* environment variables, never argv.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import psycopg
import pytest

from tests import helpers
from tooling import export
from tooling.servers import Server

# A JVM per command makes this module take half a minute: it runs with the slow tests.
pytestmark = pytest.mark.slow

BOOKKEEPING = ("databasechangelog",)  # databasechangelog and databasechangeloglock


def liquibase() -> str:
    """The Liquibase launcher the npm package ships (its node-liquibase wrapper only joins argv)."""
    wrapper = Path(os.path.realpath(helpers.require("node-liquibase")))
    return str(wrapper.parent / "liquibase" / "liquibase")


def liquibase_env(server: Server, db: str) -> dict[str, str]:
    host = f"[{server.host}]" if ":" in server.host else server.host
    return helpers.tool_env(
        LIQUIBASE_COMMAND_URL=f"jdbc:postgresql://{host}:{server.port}/{db}",
        LIQUIBASE_COMMAND_USERNAME=server.user,
        LIQUIBASE_COMMAND_PASSWORD=server.password or "",
        LIQUIBASE_SHOW_BANNER="false",
        LIQUIBASE_ANALYTICS_ENABLED="false",
        # A JVM per command: the C1 compiler alone and the serial collector start it faster.
        JAVA_OPTS="-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
    )


def applied(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute("SELECT id FROM databasechangelog ORDER BY orderexecuted").fetchall()
    return [row[0] for row in rows]


def test_liquibase_update_rollback_update(
    pg_server: Server, empty_database: str, empty_conn: psycopg.Connection, tmp_path: Path
) -> None:
    launcher = liquibase()
    states = helpers.migration_states(empty_conn)
    export.export("liquibase", tmp_path)
    env = liquibase_env(pg_server, empty_database)
    command = [launcher, "--changelog-file=changelog.xml"]
    ours = list(helpers.STEMS)

    helpers.run_tool([*command, "update"], cwd=tmp_path, env=env)
    helpers.assert_catalog(empty_conn, states[-1], "update must build every migration", besides=BOOKKEEPING)
    assert applied(empty_conn) == ours
    helpers.run_tool([*command, "rollback-count", f"--count={len(ours)}"], cwd=tmp_path, env=env)
    helpers.assert_catalog(empty_conn, states[0], "rollback-count of all must remove all", besides=BOOKKEEPING)
    assert applied(empty_conn) == []
    helpers.run_tool([*command, "update"], cwd=tmp_path, env=env)
    helpers.assert_catalog(empty_conn, states[-1], "update again must rebuild everything", besides=BOOKKEEPING)
    helpers.run_tool([*command, "update"], cwd=tmp_path, env=env)
    assert applied(empty_conn) == ours, "a second update must run nothing"
    helpers.assert_catalog(empty_conn, states[-1], "a second update must change nothing", besides=BOOKKEEPING)


USER_CHANGELOG = """\
<?xml version="1.0" encoding="UTF-8"?>
<databaseChangeLog
    xmlns="http://www.liquibase.org/xml/ns/dbchangelog"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xsi:schemaLocation="http://www.liquibase.org/xml/ns/dbchangelog
        http://www.liquibase.org/xml/ns/dbchangelog/dbchangelog-latest.xsd">
    <changeSet id="20250101120000-create-shop-orders" author="shop">
        <sqlFile path="shop/create_shop_orders.sql" relativeToChangelogFile="true"/>
        <rollback>
            <sqlFile path="shop/create_shop_orders.down.sql" relativeToChangelogFile="true"/>
        </rollback>
    </changeSet>
{include}</databaseChangeLog>
"""
INCLUDE = '    <include file="idempotency/changelog.xml" relativeToChangelogFile="true"/>\n'


def test_liquibase_next_to_a_changelog_of_its_own(
    pg_server: Server, empty_database: str, empty_conn: psycopg.Connection, tmp_path: Path
) -> None:
    """The guide's recipe: the user's master changelog includes ours after its own
    changesets; rollback-count 1 undoes the newest changeset, ours one at a time."""
    launcher = liquibase()
    states = helpers.migration_states(empty_conn)
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "create_shop_orders.sql").write_text(helpers.USER_UP.read_text())
    (tmp_path / "shop" / "create_shop_orders.down.sql").write_text(helpers.USER_DOWN.read_text())
    master = tmp_path / "changelog.xml"
    master.write_text(USER_CHANGELOG.format(include=""))
    env = liquibase_env(pg_server, empty_database)
    command = [launcher, "--changelog-file=changelog.xml"]
    helpers.run_tool([*command, "update"], cwd=tmp_path, env=env)

    export.export("liquibase", tmp_path / "idempotency")
    master.write_text(USER_CHANGELOG.format(include=INCLUDE))
    helpers.run_tool([*command, "update"], cwd=tmp_path, env=env)
    bookkeeping = (*BOOKKEEPING, helpers.USER_TABLE)
    helpers.assert_catalog(empty_conn, states[-1], "update must build every migration", besides=bookkeeping)
    rollback_one = functools.partial(helpers.run_tool, [*command, "rollback-count", "--count=1"], cwd=tmp_path, env=env)
    helpers.assert_undone_newest_first(
        empty_conn, states, rollback_one, "rollback-count 1 must undo {number}", besides=bookkeeping
    )
    assert helpers.has_table(empty_conn, helpers.USER_TABLE), "the user's own changeset must stay applied"
