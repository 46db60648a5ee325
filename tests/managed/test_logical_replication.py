"""Logical replication of the table (the guide's "Logical replication"), publisher and subscriber
as two databases of the managed profile's server (wal_level = logical): 045 and 046 are DDL, which
it does not copy; the publisher's cleanup sends its DELETEs, so the subscriber loses the expired
records too, unless the publication leaves delete out, when they stay there until a cleanup of its
own deletes them. The admin publishes (it owns the table); the superuser subscribes (PostgreSQL 15
lets no other role create a subscription)."""

from __future__ import annotations

import time

import psycopg
import pytest

from tests import helpers
from tests.managed_service import CRON_DATABASE, Managed
from tooling import records

REPLICA = "jive_money_replica"


def wait_until(conn: psycopg.Connection, rows: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while helpers.count(conn) != rows:
        if time.monotonic() > deadline:
            raise AssertionError(f"the subscriber holds {helpers.count(conn)} records, expected {rows}")
        time.sleep(0.1)


@pytest.mark.parametrize("publish", ["insert, update, delete", "insert, update"])
def test_the_publishers_cleanup_empties_the_subscriber_of_expired_records_unless_deletes_are_not_published(
    managed: Managed, publish: str
) -> None:
    managed.install()
    with managed.connect() as publisher:
        records.insert_many(publisher, 30, records.expired())
        records.insert_many(publisher, 5, records.live(lifetime=records.DAY))
        publisher.execute(f"CREATE PUBLICATION jive_records FOR TABLE idempotency_records WITH (publish = '{publish}')")
    with managed.connect(dbname=CRON_DATABASE) as conn:
        conn.execute(f"CREATE DATABASE {REPLICA}")
    with managed.connect(dbname=REPLICA) as subscriber:
        # DDL is not replicated: the table first, with 047's columns, which the publisher sends
        helpers.apply_all(subscriber, (helpers.UP_045, helpers.UP_047))
    with managed.as_superuser() as su:
        su.execute("SELECT pg_create_logical_replication_slot('jive_records', 'pgoutput')")
        socket = su.execute("SELECT current_setting('unix_socket_directories')").fetchone()
        port = su.execute("SELECT current_setting('port')").fetchone()
    assert socket is not None and port is not None
    with managed.as_superuser(REPLICA) as su:
        su.execute(
            "CREATE SUBSCRIPTION jive_records "
            f"CONNECTION 'host={socket[0]} port={port[0]} dbname=jive_money user=postgres' "
            "PUBLICATION jive_records WITH (create_slot = false, slot_name = 'jive_records')"
        )
    with managed.connect(dbname=REPLICA) as subscriber:
        wait_until(subscriber, 35)  # the initial copy
        function = subscriber.execute("SELECT to_regprocedure('cleanup_expired_idempotency_records()')").fetchone()
        assert function == (None,), "046's function is not replicated: the subscriber has only what was applied there"
    with managed.connect() as publisher:
        assert publisher.execute("SELECT deleted_count FROM cleanup_expired_idempotency_records()").fetchone() == (30,)
        records.insert_many(publisher, 1, records.live(lifetime=records.DAY))  # a marker after the deletes
    with managed.connect(dbname=REPLICA) as subscriber:
        if "delete" in publish:
            wait_until(subscriber, 6)
            assert helpers.count(subscriber, "expires_at <= now()") == 0, "the cleanup's deletes arrived"
        else:
            wait_until(subscriber, 36)
            assert helpers.count(subscriber, "expires_at <= now()") == 30, "without delete, they stay there"
            helpers.apply(subscriber, helpers.UP_046)  # then the subscriber cleans up itself
            assert subscriber.execute("SELECT deleted_count FROM cleanup_expired_idempotency_records()").fetchone() == (
                30,
            )
