"""The managed-service profile of tests/managed/: a server shaped like Amazon RDS, Cloud SQL or
Azure's, where nobody the application's team logs in as is a superuser.

A PostgreSQL 15 server with pg_cron preloaded and installed in database postgres
(cron.database_name = 'postgres', as those services set it), its jobs connecting over libpq
(pg_cron's default). The superuser only builds it and the admin role; everything else runs as:

    jive_admin      the service's admin role: LOGIN, CREATEDB, CREATEROLE, member of pg_monitor,
                    USAGE on schema cron and EXECUTE on cron.schedule_in_database (revoked from
                    PUBLIC by pg_cron); it creates and owns the application's database
    jive_api_user   the guide's application role, created by the admin as the guide says

Every login has its own random password, set as a SCRAM verifier computed here (the password
itself never reaches the server), and handed to clients through their environment.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from tests import helpers
from tests.docblocks import MANAGED, Block, Result, block_with, drop_roles, run_block, server_roles
from tooling.servers import Server

ADMIN = "jive_admin"
APP_ROLE = "jive_api_user"  # the guide's application role
APP_DATABASE = "jive_money"  # the guide's database
CRON_DATABASE = "postgres"
# The docs' blocks the managed tests run, by a line of theirs: the managed page's cleanup job and
# its unschedule, the guide's failed-runs alert and its application role with its grants.
SCHEDULE = "SELECT cron.schedule_in_database(\n    'cleanup-idempotency'"
UNSCHEDULE = "SELECT cron.unschedule(jobid)\nFROM cron.job\nWHERE database = 'jive_money'"
FAILED_RUNS = "count(*) FILTER (WHERE r.status = 'failed') AS failed_runs"
GRANTS = ("CREATE ROLE jive_api_user LOGIN", "GRANT UPDATE (operation, result_payload")
SETTINGS = {
    # Logical replication on, as a service's parameter switches it (rds.logical_replication ...).
    "wal_level": "logical",
    "max_prepared_transactions": "10",
}


def set_password(conn: psycopg.Connection, role: str) -> str:
    """Give `role` a new random password; the server gets only its SCRAM verifier."""
    password = secrets.token_urlsafe(24)
    verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()
    conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(verifier)))
    return password


def build(superuser: Server) -> Server:
    """As the superuser: the admin role and its rights on pg_cron. Returns the admin's login."""
    with superuser.connect(CRON_DATABASE, autocommit=True) as conn:
        admin = sql.Identifier(ADMIN)
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB CREATEROLE IN ROLE pg_monitor").format(admin))
        password = set_password(conn, ADMIN)
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA cron TO {}").format(admin))
        conn.execute(
            sql.SQL(
                "GRANT EXECUTE ON FUNCTION cron.schedule_in_database(TEXT, TEXT, TEXT, TEXT, TEXT, BOOLEAN) TO {}"
            ).format(admin)
        )
    return dataclasses.replace(superuser, user=ADMIN, password=password)


@dataclasses.dataclass
class Managed:
    """One test's view of the profile: the superuser (for set-ups no admin could make, and
    cleaning up), the admin's login, the application database, and other logins."""

    superuser: Server
    admin: Server
    database: str = APP_DATABASE
    logins: dict[str, Server] = dataclasses.field(default_factory=dict)

    def connect(self, role: str = ADMIN, dbname: str | None = None) -> psycopg.Connection:
        """An autocommit connection as `role` (the admin, or a login made with `login`)."""
        server = self.admin if role == ADMIN else self.logins[role]
        return server.connect(dbname or self.database, autocommit=True)

    def login(self, role: str) -> Server:
        """`role` (made by the admin, LOGIN) gets a password, set by the admin; its login."""
        with self.connect() as conn:
            password = set_password(conn, role)
        self.logins[role] = dataclasses.replace(self.admin, user=role, password=password)
        return self.logins[role]

    def install(self) -> None:
        """The migrations (045, 046) applied by the admin in the application database."""
        with self.connect() as conn:
            helpers.apply_all(conn, helpers.UP_FILES)

    def schedule_cleanup(self) -> int:
        """As the admin in postgres: the managed page's cleanup job, for the application database;
        its jobid."""
        with self.connect(dbname=CRON_DATABASE) as conn:
            run_as_login(conn, block_with(SCHEDULE, MANAGED))
            row = conn.execute(
                "SELECT jobid FROM cron.job WHERE jobname = 'cleanup-idempotency' AND database = %s", (self.database,)
            ).fetchone()
        assert row is not None, f"the admin's cleanup job for {self.database}"
        return int(row[0])

    def as_superuser(self, dbname: str | None = None) -> psycopg.Connection:
        return self.superuser.connect(dbname or self.database, autocommit=True)


def run_as_login(conn: psycopg.Connection, block: Block, text: str | None = None) -> Result | None:
    """A block of the docs on a connection that logged in as the role to run it as: a role
    directive (SET ROLE) is not applied, since no role here may SET ROLE to another. `text`
    replaces the block's (a schedule made every minute instead of hourly)."""
    return run_block(conn, dataclasses.replace(block, role=None, text=block.text if text is None else text))


@contextmanager
def application_database(superuser: Server, admin: Server) -> Iterator[Managed]:
    """The admin creates (and so owns) the application database; afterwards every job, run,
    slot, subscription and role a test made is removed, and the database dropped."""
    with admin.connect(CRON_DATABASE, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(APP_DATABASE)))
    managed = Managed(superuser, admin)
    with superuser.connect(CRON_DATABASE, autocommit=True) as conn:
        roles = server_roles(conn)
    try:
        yield managed
    finally:
        clean(superuser, roles)


def clean(superuser: Server, roles: set[str]) -> None:
    """Undo what a test of the profile made: jobs and their runs, subscriptions, prepared
    transactions and replication slots (each in its own database), databases, roles."""
    with superuser.connect(CRON_DATABASE, autocommit=True) as conn:
        conn.execute("SELECT cron.unschedule(jobid) FROM cron.job")
        conn.execute("DELETE FROM cron.job_run_details")
        subscriptions = conn.execute(
            "SELECT d.datname, s.subname FROM pg_subscription AS s JOIN pg_database AS d ON d.oid = s.subdbid"
        ).fetchall()
        prepared = conn.execute("SELECT database, gid FROM pg_prepared_xacts").fetchall()
    for dbname, name in subscriptions:
        with superuser.connect(dbname, autocommit=True) as conn:
            subscription = sql.Identifier(name)
            conn.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(subscription))
            conn.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(subscription))
            conn.execute(sql.SQL("DROP SUBSCRIPTION {}").format(subscription))
    for dbname, gid in prepared:
        with superuser.connect(dbname, autocommit=True) as conn:
            conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
    with superuser.connect(CRON_DATABASE, autocommit=True) as conn:
        for _ in range(100):
            conn.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE active")
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active")
            if conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,):
                break
            time.sleep(0.1)
        databases = conn.execute(
            "SELECT datname FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1')"
        ).fetchall()
        for (name,) in databases:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        drop_roles(conn, server_roles(conn) - roles)
