"""The guide's alerts on a managed service, as the admin, against the states that falsified them:

- failed runs: a run pg_cron could not connect for is recorded, before pg_cron 1.6.3, with no
  start_time (the slow test of test_getting_started.py shows pg_cron 1.4.2 writing one; here the
  same row, as pg_cron writes it, is put in by the superuser): the old query, which filtered on
  start_time, counted none;
- what holds back vacuum: the admin (pg_monitor) sees another role's open transaction and since
  when; the application role, without pg_read_all_stats, sees its age but not its state or start,
  so "since more than an hour ago" cannot be alerted on as that role; a logical slot
  nobody reads holds catalog_xmin, not this table's dead rows, which the old query listed as a
  holder; a prepared transaction holds back its own database only.
"""

from __future__ import annotations

import psycopg

from tests.cron_runs import OLD_FAILED_RUNS
from tests.docblocks import GUIDE, QUERIES, block_with, prose
from tests.managed_service import ADMIN, CRON_DATABASE, FAILED_RUNS, GRANTS, Managed, run_as_login
from tests.vacuum import OLD_HOLDERS, dead_rows_after_cleanup, guide_holders, holders
from tooling import records

WAL_KEPT = "AS wal_kept"


def sessions(conn: psycopg.Connection, query: str) -> dict[str, tuple[str | None, object]]:
    """The sessions the holders query lists: pid -> (state, since)."""
    return {row[1]: (row[3], row[4]) for row in conn.execute(query) if row[0] == "session"}


def test_a_run_that_could_not_connect_is_counted_by_the_alert_not_by_the_old_one(managed: Managed) -> None:
    managed.install()
    jobid = managed.schedule_cleanup()
    with managed.as_superuser(CRON_DATABASE) as su:
        # A run that succeeded, then one that could not connect, as pg_cron 1.4.2 records them.
        su.execute(
            "INSERT INTO cron.job_run_details (jobid, runid, job_pid, database, username, command, status, "
            "return_message, start_time, end_time) VALUES "
            "(%(job)s, nextval('cron.runid_seq'), 4242, 'jive_money', %(admin)s, %(command)s, 'succeeded', "
            "'1 row', now() - INTERVAL '61 minutes', now() - INTERVAL '61 minutes'), "
            "(%(job)s, nextval('cron.runid_seq'), NULL, 'jive_money', %(admin)s, %(command)s, 'failed', "
            "'connection failed', NULL, NULL)",
            {"job": jobid, "admin": ADMIN, "command": "SELECT cleanup_expired_idempotency_records()"},
        )
    with managed.connect(dbname=CRON_DATABASE) as conn:  # the admin, who sees its job's runs
        alert = block_with(FAILED_RUNS, GUIDE)
        assert conn.execute(alert.text).fetchone() == (1,), "the documented alert counts the failed run"
        assert conn.execute(OLD_FAILED_RUNS).fetchone() == (0,), "the old one, filtering on start_time, counted none"


def test_the_admin_sees_since_when_a_session_holds_back_vacuum_and_the_application_role_does_not(
    managed: Managed,
) -> None:
    managed.install()
    with managed.connect() as conn:
        for snippet in GRANTS:
            run_as_login(conn, block_with(snippet, GUIDE))
    managed.login("jive_api_user")
    query = guide_holders()
    with managed.connect() as writer:
        writer.execute("BEGIN")
        records.insert(writer, records.live())  # a write, then idle in transaction
        pid = str(writer.info.backend_pid)
        try:
            with managed.connect() as admin:
                seen = sessions(admin, query)
                assert seen[pid][1] is not None, f"the admin (pg_monitor) sees it, and since when: {seen}"
            with managed.connect("jive_api_user") as app:
                seen = sessions(app, query)
                assert pid in seen and seen[pid] == (None, None), (
                    f"the application role sees its age, not its state or start: {seen.get(pid)}"
                )
        finally:
            writer.execute("ROLLBACK")


def test_a_logical_slot_nobody_reads_holds_wal_not_this_tables_dead_rows(managed: Managed) -> None:
    managed.install()
    with managed.as_superuser() as su:
        su.execute("SELECT pg_create_logical_replication_slot('jive_unread', 'pgoutput')")
        slot = su.execute("SELECT xmin, catalog_xmin IS NOT NULL FROM pg_replication_slots").fetchone()
    assert slot == (None, True), f"a logical slot holds catalog_xmin only: {slot}"
    with managed.connect() as conn:
        assert dead_rows_after_cleanup(conn, 100) == 0, "vacuum removed this table's dead rows despite the slot"
        assert ("replication slot", "jive_unread") in holders(conn, OLD_HOLDERS), "the old query named it a holder"
        assert ("replication slot", "jive_unread") not in holders(conn, guide_holders())
        guide = prose()
        assert "or a logical slot nobody reads)" not in guide, "the guide no longer names it a holder"
        kept = {row[0]: row[3] for row in conn.execute(block_with(WAL_KEPT, QUERIES).text)}
        assert kept.get("jive_unread") is not None, f"the WAL query lists it, with the WAL it keeps: {kept}"


def test_a_prepared_transaction_holds_back_its_own_database_only(managed: Managed) -> None:
    managed.install()
    query = guide_holders()
    with managed.connect(dbname=CRON_DATABASE) as elsewhere:
        elsewhere.execute("BEGIN")
        elsewhere.execute("SELECT txid_current()")
        elsewhere.execute("PREPARE TRANSACTION 'jive_elsewhere'")
    with managed.connect() as conn:
        assert dead_rows_after_cleanup(conn, 100) == 0, "a prepared transaction of postgres holds nothing back here"
        assert ("prepared transaction", "jive_elsewhere") in holders(conn, OLD_HOLDERS), "the old query listed it"
        assert ("prepared transaction", "jive_elsewhere") not in holders(conn, query)
    with managed.connect() as here:
        here.execute("BEGIN")
        here.execute("SELECT txid_current()")
        here.execute("PREPARE TRANSACTION 'jive_here'")
    with managed.connect() as conn:
        assert dead_rows_after_cleanup(conn, 100) >= 100, "one of this database holds the dead rows back"
        assert ("prepared transaction", "jive_here") in holders(conn, query)
        conn.execute("ROLLBACK PREPARED 'jive_here'")
