"""`make export TOOL=... DEST=...` writes copies named for each migration tool, copies the
SQL unchanged, never overwrites a different file, and says what it wrote."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import helpers
from tests.helpers import DOWN_FILES, ROOT, UP_FILES
from tooling import export, migrations

UP_045, UP_046, DOWN_045, DOWN_046 = (
    path.read_text() for path in (helpers.UP_045, helpers.UP_046, helpers.DOWN_045, helpers.DOWN_046)
)


def expected_files(tool: str, sql_dir: Path = helpers.SQL_DIR) -> dict[str, str | None]:
    """Every file the tool must receive for the migrations of sql_dir, with the SQL it must hold
    (None: checked elsewhere); the n-th migration is graphile-migrate's n-th committed file."""
    files: dict[str, str | None] = {"liquibase": {"changelog.xml": None}, "sqitch": {"sqitch.plan": None}}.get(tool, {})
    for position, m in enumerate(migrations.migrations(sql_dir), start=1):
        up, down, stem, number = m.up.read_text(), m.down.read_text(), m.stem, str(int(m.number))
        files |= {
            "sqlx": {f"{stem}.sql": up, f"{stem}.down.sql": down},
            "golang-migrate": {f"{stem}.up.sql": up, f"{stem}.down.sql": down},
            "flyway": {f"V{number}__{m.name}.sql": up, f"U{number}__{m.name}.sql": down},
            "dbmate": {f"{stem}.sql": None},
            "liquibase": {f"{stem}.sql": up, f"{stem}.down.sql": down},
            "yoyo": {f"{stem}.sql": up, f"{stem}.rollback.sql": down},
            "node-pg-migrate": {f"{stem}.sql": None},
            "graphile-migrate": {
                f"committed/{position:06d}-{m.name.replace('_', '-')}.sql": None,
                f"down/{stem}.down.sql": down,
            },
            "alembic": {f"{stem}.py": None, f"sql/{stem}.sql": up, f"sql/{stem}.down.sql": down},
            "sqitch": {
                f"deploy/{stem}.sql": None,
                f"revert/{stem}.sql": None,
                **({f"verify/{stem}.sql": None} if m.name in export.SQITCH_VERIFY else {}),
            },
        }[tool]
    return files


EXPECTED = {tool: expected_files(tool) for tool in sorted(set(export.TOOLS) - {"django"})}

# How each tool recognises its files (from each tool's documented naming rules).
NAME_RULES = {
    "sqlx": r"\d+_[a-z_]+(\.down)?\.sql",
    "golang-migrate": r"\d+_[a-z_]+\.(up|down)\.sql",
    "flyway": r"[VU][1-9]\d*__[a-z_]+\.sql",
    "dbmate": r"\d+_[a-z_]+\.sql",
    "sqitch": r"sqitch\.plan|(deploy|revert|verify)/\d+_[a-z_]+\.sql",
    "liquibase": r"changelog\.xml|\d+_[a-z_]+(\.down)?\.sql",
    "yoyo": r"\d+_[a-z_]+(\.rollback)?\.sql",
    "node-pg-migrate": r"\d+_[a-z_]+\.sql",
    "graphile-migrate": r"committed/\d{6}-[-a-z]+\.sql|down/\d+_[a-z_]+\.down\.sql",
    "alembic": r"\d+_[a-z_]+\.py|sql/\d+_[a-z_]+(\.down)?\.sql",
}


def files_under(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): p.read_text() for p in sorted(directory.rglob("*")) if p.is_file()}


def run_export(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tooling.export", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("tool", sorted(EXPECTED))
def test_export_writes_the_names_each_tool_expects(tool: str, tmp_path: Path) -> None:
    result = run_export(tool, str(tmp_path))
    assert result.returncode == 0, result.stderr
    written = files_under(tmp_path)
    assert sorted(written) == sorted(EXPECTED[tool]), f"{tool}: unexpected set of files"
    for name, content in written.items():
        assert re.fullmatch(NAME_RULES[tool], name), f"{tool}: {name} does not follow the tool's naming rule"
        assert f"wrote: {tmp_path / name}" in result.stdout, f"{tool}: {name} not reported as written"
        if EXPECTED[tool][name] is not None:
            assert content == EXPECTED[tool][name], f"{tool}: {name} must be a byte-for-byte copy"


def test_dbmate_files_hold_the_up_and_down_under_its_markers(tmp_path: Path) -> None:
    export.export("dbmate", tmp_path)
    for up, down, name in (
        (UP_045, DOWN_045, "045_create_idempotency_records.sql"),
        (UP_046, DOWN_046, "046_create_idempotency_cleanup_job.sql"),
    ):
        text = (tmp_path / name).read_text()
        assert text.startswith("-- migrate:up\n"), f"{name}: dbmate allows nothing before -- migrate:up"
        up_part, marker, down_part = text.removeprefix("-- migrate:up\n").partition("\n-- migrate:down\n")
        assert marker, f"{name}: no -- migrate:down marker"
        assert up_part.strip() == up.strip(), f"{name}: the up section must be the up file unchanged"
        assert down_part.strip() == down.strip(), f"{name}: the down section must be the down file unchanged"


def test_sqitch_scripts_wrap_the_files_and_the_plan_orders_the_changes(tmp_path: Path) -> None:
    export.export("sqitch", tmp_path)
    for kind, texts in (("deploy", (UP_045, UP_046)), ("revert", (DOWN_045, DOWN_046))):
        for text, change in zip(
            texts, ("045_create_idempotency_records", "046_create_idempotency_cleanup_job"), strict=True
        ):
            script = (tmp_path / kind / f"{change}.sql").read_text()
            assert script == f"BEGIN;\n\n{text.rstrip()}\n\nCOMMIT;\n", f"{kind}/{change}: the file inside BEGIN/COMMIT"
    plan = (tmp_path / "sqitch.plan").read_text().splitlines()
    changes = [line for line in plan if line and not line.startswith("%")]
    assert changes[0].startswith("045_create_idempotency_records 2"), changes
    assert changes[1].startswith("046_create_idempotency_cleanup_job [045_create_idempotency_records] "), (
        "046 must require 045 in the plan"
    )


def test_export_refuses_to_overwrite_a_different_file_and_writes_nothing(tmp_path: Path) -> None:
    existing = tmp_path / "046_create_idempotency_cleanup_job.up.sql"
    existing.write_text("-- the project's own migration 046\n")
    result = run_export("golang-migrate", str(tmp_path))
    assert result.returncode == 1, "a conflicting file must make the export fail"
    assert str(existing) in result.stderr, f"the message must name the file: {result.stderr}"
    assert files_under(tmp_path) == {existing.name: "-- the project's own migration 046\n"}, "nothing may be written"


def test_export_again_is_a_no_op(tmp_path: Path) -> None:
    assert run_export("sqitch", str(tmp_path)).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    again = run_export("sqitch", str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert "wrote:" not in again.stdout, f"identical files must not be written again: {again.stdout}"
    assert again.stdout.count("unchanged (same content):") == len(before)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before


def test_export_rejects_an_unknown_tool(tmp_path: Path) -> None:
    result = run_export("flywheel", str(tmp_path))
    assert result.returncode == 2 and "usage:" in result.stderr
    assert not any(tmp_path.iterdir()), "nothing may be written for an unknown tool"


def test_make_export_runs_the_exporter(tmp_path: Path) -> None:
    dest = tmp_path / "app" / "db" / "migrations"
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "export", "TOOL=flyway", f"DEST={dest}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(files_under(dest)) == sorted(EXPECTED["flyway"])
    assert f"wrote: {dest / 'V45__create_idempotency_records.sql'}" in result.stdout


def test_after_gives_the_next_versions_of_the_users_history(tmp_path: Path) -> None:
    result = run_export("golang-migrate", str(tmp_path), "--after", "20250101120000")
    assert result.returncode == 0, result.stderr
    assert sorted(files_under(tmp_path)) == sorted(
        f"{20250101120000 + position}_{m.name}.{half}.sql"
        for position, m in enumerate(migrations.migrations(), start=1)
        for half in ("up", "down")
    )
    assert (tmp_path / "20250101120001_create_idempotency_records.up.sql").read_text() == UP_045


@pytest.mark.parametrize(
    ("tool", "after", "message"),
    [
        ("sqitch", "20250101120000", "sqitch.plan"),
        ("liquibase", "20250101120000", "changelog order"),
        ("graphile-migrate", "1", "DEST/committed"),
        ("dbmate", "create_orders", "expected the version number"),
        ("django", None, "APP_LABEL"),
    ],
)
def test_after_that_does_not_fit_the_tool_is_a_usage_error(
    tool: str, after: str | None, message: str, tmp_path: Path
) -> None:
    result = run_export(tool, str(tmp_path), *(["--after", after] if after else []))
    assert result.returncode == 2, f"{tool} --after {after}: expected a usage error, got {result.returncode}"
    assert message in result.stderr, result.stderr
    assert not any(tmp_path.iterdir()), "nothing may be written on a usage error"


def test_node_pg_migrate_refuses_sql_with_a_line_it_would_take_for_a_marker(tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    sql_dir.mkdir()
    for path in (*UP_FILES, *DOWN_FILES):
        (sql_dir / path.name).write_text(path.read_text())
    down = sql_dir / helpers.DOWN_046.name
    down.write_text("-- Down migration of 046, run before 045's\n" + down.read_text())
    with pytest.raises(export.ExportRefused, match=r"046_create_idempotency_cleanup_job \(down\).*marker"):
        export.export("node-pg-migrate", tmp_path / "out", sql_dir)
    assert not (tmp_path / "out").exists(), "nothing may be written"


def test_graphile_migrate_chains_after_the_committed_history(tmp_path: Path) -> None:
    committed = tmp_path / "committed"
    committed.mkdir()
    body = "CREATE TABLE shop_orders (order_id BIGINT);\n"
    user_hash = export.graphile_hash(body, None)
    (committed / "000001-create-shop-orders.sql").write_text(f"--! Previous: -\n--! Hash: {user_hash}\n\n{body}")
    export.export("graphile-migrate", tmp_path)
    first = (committed / "000002-create-idempotency-records.sql").read_text()
    headers, first_body = export.graphile_parts(first)
    assert headers["Previous"] == user_hash, "045 must name the user's newest migration as its previous"
    assert headers["Hash"] == export.graphile_hash(UP_045, user_hash)
    assert first_body == UP_045.strip() + "\n", "the body must be 045 unchanged"
    second_headers, _ = export.graphile_parts((committed / "000003-create-idempotency-cleanup-job.sql").read_text())
    assert second_headers["Previous"] == headers["Hash"], "046 must chain after 045"
    again = run_export("graphile-migrate", str(tmp_path))
    assert again.returncode == 0 and "wrote:" not in again.stdout, "exporting again must change nothing"


def test_django_migrations_depend_on_the_apps_newest(tmp_path: Path) -> None:
    export.export("django", tmp_path, after="shop.20250101120000_create_shop_orders")
    first = (tmp_path / "045_create_idempotency_records.py").read_text()
    second = (tmp_path / "046_create_idempotency_cleanup_job.py").read_text()
    assert "dependencies = [('shop', '20250101120000_create_shop_orders')]" in first, first
    assert "dependencies = [('shop', '045_create_idempotency_records')]" in second, second
    assert (tmp_path / "sql" / "045_create_idempotency_records.sql").read_text() == UP_045
