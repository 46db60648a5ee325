"""Backups and restores with pg_cron (the guide's "Backups and restores"), with the real pg_dump and
pg_restore of PostgreSQL 15:

- a pg_dump of the database that holds pg_cron (postgres) carries the cron.job rows, with the job's
  nodename, nodeport and database: restored on a staging server, the job is back, active;
- the guide's pg_dump command (--exclude-table-data='cron.*') leaves them out;
- a dump of the application's database carries the table, the function, the grants and the
  records with their expires_at, and no job.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import helpers
from tests.docblocks import GUIDE, block_with
from tests.managed_service import ADMIN, CRON_DATABASE, GRANTS, Managed, run_as_login
from tooling import records, servers


@pytest.fixture(scope="module")
def staging() -> Iterator[servers.Server]:
    """Another server with pg_cron loaded for postgres, not yet installed: the restore installs it."""
    missing = servers.pg_cron_missing()
    if missing is not None:
        pytest.skip(missing)
    with servers.pg_cron_server(
        "idempotency-staging-", "postgres", background_workers=False, create_extension=False
    ) as server:
        yield server


def documented_dump() -> str:
    """The guide's pg_dump command (a bash block that calls no psql, which the docs runner leaves)."""
    found = re.findall(r"```bash\n(pg_dump [^`]*?)\n```", GUIDE.read_text())
    assert len(found) == 1, f"the guide has one pg_dump command: {found}"
    return found[0]


def client_env(server: servers.Server) -> dict[str, str]:
    """The environment a client program reaches `server` through."""
    return {**server.client_env(), "PGHOST": server.host, "PGPORT": str(server.port), "PGUSER": server.user}


def tool(server: servers.Server, name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """pg_dump or pg_restore of the server's own build, connecting through the environment."""
    return subprocess.run(
        [server.tool(name), *args], cwd=cwd, env=client_env(server), capture_output=True, text=True, timeout=120
    )


def scheduled(managed: Managed) -> None:
    managed.install()
    with managed.connect() as conn:
        for snippet in GRANTS:
            run_as_login(conn, block_with(snippet, GUIDE))
    managed.schedule_cleanup()


def staging_jobs(staging: servers.Server) -> list[tuple[object, ...]]:
    with staging.connect(autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('cron.job')").fetchone() == (None,):
            return []
        jobs = conn.execute("SELECT jobname, nodename, nodeport, database, username, active FROM cron.job").fetchall()
        conn.execute("SELECT cron.unschedule(jobid) FROM cron.job")  # before the launcher's next minute
        return jobs


def test_a_dump_of_pg_crons_database_brings_the_job_back_on_staging_unless_left_out(
    managed: Managed, staging: servers.Server, tmp_path: Path
) -> None:
    scheduled(managed)
    with managed.as_superuser(CRON_DATABASE) as conn:
        (host, port) = conn.execute("SELECT nodename, nodeport FROM cron.job").fetchone()
    dumped = tool(managed.superuser, "pg_dump", "--format=custom", "-d", CRON_DATABASE, "-f", "all.dump", cwd=tmp_path)
    assert dumped.returncode == 0, dumped.stderr
    restored = tool(staging, "pg_restore", "--no-owner", "--no-privileges", "-d", "postgres", "all.dump", cwd=tmp_path)
    assert restored.returncode == 0, restored.stderr
    jobs = staging_jobs(staging)
    assert jobs == [("cleanup-idempotency", host, port, "jive_money", ADMIN, True)], (
        f"the job is back on staging, active, naming production's host, port and database: {jobs}"
    )
    command = documented_dump()
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=tmp_path,
        env={**client_env(managed.superuser), "PATH": f"{managed.superuser.bindir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{command}\n{done.stderr}"
    with staging.connect(autocommit=True) as conn:
        conn.execute("DROP EXTENSION pg_cron")
    restored = tool(
        staging, "pg_restore", "--no-owner", "--no-privileges", "-d", "postgres", "postgres.dump", cwd=tmp_path
    )
    assert restored.returncode == 0, restored.stderr
    assert staging_jobs(staging) == [], "dumped as the guide says, no job comes back"


def test_a_dump_of_the_application_database_carries_the_install_and_no_job(managed: Managed, tmp_path: Path) -> None:
    scheduled(managed)
    with managed.connect() as conn:
        records.insert(conn, records.expired(), records.expired(), records.live(lifetime=records.DAY))
    dumped = tool(managed.admin, "pg_dump", "--format=custom", "-d", managed.database, "-f", "app.dump", cwd=tmp_path)
    assert dumped.returncode == 0, dumped.stderr
    with managed.connect(dbname=CRON_DATABASE) as conn:
        conn.execute("CREATE DATABASE jive_money_restored")
    restored = tool(managed.admin, "pg_restore", "-d", "jive_money_restored", "app.dump", cwd=tmp_path)
    assert restored.returncode == 0, restored.stderr
    with managed.connect(dbname="jive_money_restored") as conn:
        grants = conn.execute(
            "SELECT has_table_privilege('jive_api_user', 'idempotency_records', 'INSERT'), "
            "has_function_privilege('jive_api_user', 'cleanup_expired_idempotency_records()', 'EXECUTE')"
        ).fetchone()
        assert grants == (True, True), "the grants came back with the dump"
        assert helpers.count(conn, "expires_at <= now()") == 2, "the records keep their expires_at"
        assert conn.execute("SELECT deleted_count FROM cleanup_expired_idempotency_records()").fetchone() == (2,)
    with managed.as_superuser(CRON_DATABASE) as conn:
        jobs = conn.execute("SELECT database FROM cron.job ORDER BY jobid").fetchall()
    assert jobs == [("jive_money",)], f"no job for the restored database: {jobs}"
