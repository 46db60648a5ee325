"""One list of migrations, read from sql/ (tooling/migrations.py): a new NNN_name.sql with its
NNN_name.down.sql reaches make migrate and make rollback, every export layout, the file-name rules
and the tests' lists with no list edited. Shown on a copy of the checkout whose sql/ holds one
more pair, 999_probe: a view on the table, so that it applies only after 045, and 045.down (which
never drops with CASCADE) succeeds only after 999's down file has removed it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests import helpers
from tests.helpers import DOWN_FILES, ROOT, UP_FILES
from tooling import export, migrations
from tooling.servers import Server

PROBE_UP = "-- A migration after 046, for the tests only.\nCREATE VIEW probe_999 AS SELECT request_id FROM idempotency_records;\n"
PROBE_DOWN = "-- Reverses 999_probe.sql.\nDROP VIEW IF EXISTS probe_999;\n"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The Makefile, tooling/ and sql/ of this checkout, with sql/999_probe.sql and its down file."""
    root = tmp_path / "checkout"
    root.mkdir()
    shutil.copy(ROOT / "Makefile", root)
    for folder in ("sql", "tooling"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "sql" / "999_probe.sql").write_text(PROBE_UP)
    (root / "sql" / "999_probe.down.sql").write_text(PROBE_DOWN)
    return root


def test_the_lists_of_the_tests_are_the_ones_read_from_sql() -> None:
    assert (migrations.up_files(), migrations.down_files()) == (helpers.UP_FILES, helpers.DOWN_FILES)


def test_a_new_pair_is_read_up_last_and_down_first(checkout: Path) -> None:
    sql_dir = checkout / "sql"
    assert [path.name for path in migrations.up_files(sql_dir)] == [*(p.name for p in UP_FILES), "999_probe.sql"]
    assert [path.name for path in migrations.down_files(sql_dir)] == [
        "999_probe.down.sql",
        *(p.name for p in DOWN_FILES),
    ]
    for path in sql_dir.iterdir():  # the file-name test's rule
        assert re.fullmatch(r"\d{3}_[a-z_]+(\.down)?\.sql", path.name), path.name


@pytest.mark.parametrize(
    ("stray", "message"),
    [
        ("999_probe.sql", r"999_probe\.down\.sql is missing"),
        ("999_probe.down.sql", r"999_probe\.sql is missing"),
        ("README.md", r"README\.md: not a migration file"),
        ("47_probe.sql", r"47_probe\.sql: not a migration file"),
    ],
)
def test_a_half_pair_or_another_file_in_sql_is_refused_by_name(tmp_path: Path, stray: str, message: str) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(ROOT / "sql", sql_dir)
    (sql_dir / stray).write_text("-- stray\n")
    with pytest.raises(migrations.MigrationFilesError, match=message):
        migrations.migrations(sql_dir)


def make(checkout: Path, target: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(checkout), target, f"VENV={ROOT / '.venv'}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_make_migrate_and_rollback_apply_a_new_pair_in_order(
    checkout: Path, pg_server: Server, empty_database: str, empty_conn: psycopg.Connection
) -> None:
    env = {**os.environ, "DATABASE_URL": pg_server.url(empty_database)}  # the password stays out of argv
    up = make(checkout, "migrate", env)
    assert up.returncode == 0, up.stdout + up.stderr
    applied = re.findall(r"^applying (\S+)$", up.stdout, re.MULTILINE)
    assert applied == [f"sql/{p.name}" for p in UP_FILES] + ["sql/999_probe.sql"], up.stdout
    assert empty_conn.execute("SELECT to_regclass('probe_999') IS NOT NULL").fetchone() == (True,)
    down = make(checkout, "rollback", env)
    assert down.returncode == 0, down.stdout + down.stderr
    reverted = re.findall(r"^applying (\S+)$", down.stdout, re.MULTILINE)
    assert reverted == ["sql/999_probe.down.sql"] + [f"sql/{p.name}" for p in DOWN_FILES], down.stdout
    left = empty_conn.execute("SELECT to_regclass('probe_999'), to_regclass('idempotency_records')").fetchone()
    assert left == (None, None), "rollback removed the probe, then the table"


def test_make_migrate_stops_with_the_name_of_a_half_pair(checkout: Path) -> None:
    (checkout / "sql" / "999_probe.down.sql").unlink()
    result = make(checkout, "migrate", dict(os.environ))
    assert result.returncode != 0, "make migrate must not apply a list it could not read"
    assert "999_probe.down.sql is missing" in result.stderr, result.stderr
    assert "applying" not in result.stdout, result.stdout


@pytest.mark.parametrize("tool", sorted(export.TOOLS))
def test_every_export_carries_a_new_pair_last(checkout: Path, tmp_path: Path, tool: str) -> None:
    dest = tmp_path / "out"
    written = export.export(tool, dest, checkout / "sql", after="shop" if tool == "django" else None)
    names = [str(path.relative_to(dest)) for path, _ in written]
    texts = [path.read_text() for path, _ in written if "probe" in path.name]
    assert texts, f"{tool}: no file for 999_probe among {names}"
    for sql_text in (PROBE_UP, PROBE_DOWN):
        assert any(sql_text.strip() in text for text in texts), f"{tool}: {sql_text.strip()!r} is not carried"
    order = {
        "sqitch": lambda: (
            (dest / "sqitch.plan").read_text().splitlines()[-1].startswith(f"999_probe [{helpers.STEMS[-1]}] ")
        ),
        "graphile-migrate": lambda: (dest / "committed" / f"{len(helpers.STEMS) + 1:06d}-probe.sql").is_file(),
        "liquibase": lambda: (
            re.findall(r'<changeSet id="([^"]+)"', (dest / "changelog.xml").read_text())[-1] == "999_probe"
        ),
        "alembic": lambda: (
            f"down_revision = 'idempotency_{helpers.NUMBERS[-1]}'" in (dest / "999_probe.py").read_text()
        ),
        "django": lambda: f"[('shop', '{helpers.STEMS[-1]}')]" in (dest / "999_probe.py").read_text(),
    }
    if tool in order:
        assert order[tool](), f"{tool}: 999_probe comes after {helpers.NUMBERS[-1]}, the newest"
