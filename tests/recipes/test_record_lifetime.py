"""Recipe 3: a record is replayed only while valid, and a save over an expired record
starts a fresh lifetime.

The report's upsert leaves created_at out of its SET list, so a record written over
an expired one keeps the old created_at. The claim resets it, and replaces only a
record that has expired: a valid record is the answer earlier duplicates already got.
"""

from __future__ import annotations

import datetime
import time
import uuid

import psycopg
import pytest

from tests.docblocks import QUERIES
from tests.statements import CLAIM, LOOKUP, REPORT_SAVE
from tooling import records, servers
from tooling.records import Record, save_params


def lifetime_of(conn: psycopg.Connection, key: uuid.UUID) -> tuple[datetime.datetime, datetime.datetime, str]:
    row = conn.execute(
        "SELECT created_at, expires_at, result_payload FROM idempotency_records WHERE request_id = %s", (key,)
    ).fetchone()
    assert row is not None, f"record {key} is stored"
    return row[0], row[1], row[2]


def aged(conn: psycopg.Connection, age: datetime.timedelta, lifetime: datetime.timedelta) -> uuid.UUID:
    (key,) = records.insert(
        conn, Record(result_payload="old", status_code=201, created_at=-age, expires_at=lifetime - age)
    )
    return key


def test_lookup_ignores_an_expired_record_that_cleanup_has_not_removed(conn: psycopg.Connection) -> None:
    key = aged(conn, datetime.timedelta(days=4), datetime.timedelta(days=3))
    by_key_only = conn.execute("SELECT result_payload FROM idempotency_records WHERE request_id = %s", (key,))
    assert by_key_only.fetchall() == [("old",)], "a lookup by key alone would replay the expired record"
    assert conn.execute(LOOKUP, {"request_id": key}).fetchall() == [], "the lookup does not replay it"


def test_naive_report_save_over_an_expired_record_keeps_its_old_created_at(conn: psycopg.Connection) -> None:
    key = aged(conn, datetime.timedelta(days=4), datetime.timedelta(days=3))
    created_before, _, _ = lifetime_of(conn, key)
    conn.execute(REPORT_SAVE, save_params(key, "payment", "new", 201, 72))
    created_at, expires_at, payload = lifetime_of(conn, key)
    assert payload == "new"
    assert created_at == created_before, "created_at still says the record was stored four days ago"
    assert expires_at - created_at >= datetime.timedelta(days=7), "so the record seems to live 7 days, not 72 hours"


def test_claim_over_an_expired_record_starts_a_fresh_lifetime(conn: psycopg.Connection) -> None:
    key = aged(conn, datetime.timedelta(days=4), datetime.timedelta(days=3))
    with conn.transaction():
        claimed = conn.execute(CLAIM, {"request_id": key, "operation": "payment"}).fetchall()
        now = conn.execute("SELECT now()").fetchone()
    assert claimed == [(key,)], "the request owns the expired key"
    assert now is not None
    created_at, expires_at, payload = lifetime_of(conn, key)
    assert created_at == now[0], "created_at is reset to the claim's transaction time"
    assert expires_at - created_at == datetime.timedelta(hours=72), "a full payment lifetime from now"
    assert payload == "{}", "the old result is no longer there to replay"


def test_claim_does_not_overwrite_a_valid_record(conn: psycopg.Connection) -> None:
    key = aged(conn, datetime.timedelta(hours=1), datetime.timedelta(hours=72))
    before = lifetime_of(conn, key)
    with conn.transaction():
        claimed = conn.execute(CLAIM, {"request_id": key, "operation": "payment"}).fetchall()
        found = conn.execute(LOOKUP, {"request_id": key}).fetchall()
    assert claimed == [], "the valid record keeps its key"
    assert found == [("payment", "old", 201)], "the request replays the stored result"
    assert lifetime_of(conn, key) == before, "nothing about the record changed"


def test_report_save_with_a_ttl_of_zero_is_refused_even_over_an_older_record(conn: psycopg.Connection) -> None:
    """chk_expires_at is checked on the proposed row (created_at = expires_at = now())
    before the conflict is looked for, so a zero TTL fails whether or not a record
    exists; the kept created_at never gets a chance to make it pass."""
    key = aged(conn, datetime.timedelta(hours=2), datetime.timedelta(hours=24))
    before = lifetime_of(conn, key)
    for target in (uuid.uuid4(), key):
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(REPORT_SAVE, save_params(target, "payment", "new", 201, 0))
    assert lifetime_of(conn, key) == before, "the older record is untouched"


def test_naive_report_save_in_a_transaction_older_than_the_record_violates_chk_expires_at(
    pg_server: servers.Server, database: str, conn: psycopg.Connection
) -> None:
    """A save whose transaction started before another session stored the record, with a
    TTL shorter than that gap: expires_at = (its now()) + TTL is earlier than the kept
    created_at. TTLs here are seconds so the gap can be short; with hour TTLs the same
    happens to a transaction open longer than the TTL."""
    key = uuid.uuid4()
    ttl_hours = 0.00001  # 36 ms
    with pg_server.connect(database) as old:
        old.execute("SELECT now()")  # the old transaction's clock starts here
        time.sleep(0.1)
        conn.execute(
            REPORT_SAVE, save_params(key, "payment", "new", 201, 24)
        )  # another session stores the record meanwhile
        with pytest.raises(psycopg.errors.CheckViolation) as raised:
            old.execute(REPORT_SAVE, save_params(key, "payment", "new", 201, ttl_hours))
        assert raised.value.diag.constraint_name == "chk_expires_at"


def test_claim_in_a_transaction_older_than_the_record_leaves_it_alone(
    pg_server: servers.Server, database: str, conn: psycopg.Connection
) -> None:
    key = uuid.uuid4()
    with pg_server.connect(database) as old:
        old.execute("SELECT now()")
        time.sleep(0.1)
        conn.execute(REPORT_SAVE, save_params(key, "payment", "new", 201, 24))
        claimed = old.execute(CLAIM, {"request_id": key, "operation": "payment"}).fetchall()
        found = old.execute(LOOKUP, {"request_id": key}).fetchall()
        old.commit()
    assert claimed == [], "the newer, valid record is not replaced"
    assert found == [("payment", "new", 201)], "and it is what the old transaction replays"


def test_a_claim_that_returns_no_row_still_locks_the_record_until_its_lookup_is_done(
    pg_server: servers.Server, database: str, conn: psycopg.Connection
) -> None:
    """ON CONFLICT DO UPDATE locks the conflicting row even when its WHERE changes
    nothing, so nothing can delete the record between the claim and the lookup."""
    key = aged(conn, datetime.timedelta(hours=1), datetime.timedelta(hours=72))
    with pg_server.connect(database) as duplicate:
        assert duplicate.execute(CLAIM, {"request_id": key, "operation": "payment"}).fetchall() == []
        conn.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            conn.execute("DELETE FROM idempotency_records WHERE request_id = %s", (key,))
        assert duplicate.execute(LOOKUP, {"request_id": key}).fetchall() == [("payment", "old", 201)]
        duplicate.commit()


# Usage and Data retention: a record that never expires. The guide's value, as printed there.
NEVER_EXPIRES = "9999-01-01 00:00:00+00"


def forever(key: uuid.UUID, expires_at: str) -> Record:
    """The guide's record that never expires: an audit record with a far-future expires_at."""
    return Record(key, operation="audit", status_code=200, expires_at=expires_at)


def test_the_guide_gives_the_far_future_value_for_records_that_never_expire() -> None:
    guide = QUERIES.read_text()
    assert f"'audit', '{{}}', 200, '{NEVER_EXPIRES}')" in guide, "the guide's never-expiring record uses it"


@pytest.mark.parametrize("zone", ["UTC", "Pacific/Kiritimati", "Etc/GMT+12"])
def test_a_record_that_never_expires_reads_back_with_psycopg_and_outlives_cleanup(
    conn: psycopg.Connection, zone: str
) -> None:
    key = uuid.uuid4()
    records.insert(conn, forever(key, NEVER_EXPIRES))
    conn.execute(psycopg.sql.SQL("SET TIME ZONE {}").format(psycopg.sql.Literal(zone)))
    conn.execute("SELECT deleted_count FROM cleanup_expired_idempotency_records()")
    row = conn.execute("SELECT expires_at FROM idempotency_records WHERE request_id = %s", (key,)).fetchone()
    assert row is not None, "the cleanup left the record"
    expected = datetime.datetime(9999, 1, 1, tzinfo=datetime.UTC)
    assert row[0] == expected, f"in time zone {zone} psycopg reads back {row[0]!r}"
    assert conn.execute(LOOKUP, {"request_id": key}).fetchone() is not None, "the lookup replays it"


def test_naive_infinity_cannot_be_read_back_with_psycopg(conn: psycopg.Connection) -> None:
    key = uuid.uuid4()
    records.insert(conn, forever(key, "infinity"))
    with pytest.raises(psycopg.DataError):
        conn.execute("SELECT expires_at FROM idempotency_records WHERE request_id = %s", (key,)).fetchone()
