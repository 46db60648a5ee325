"""Properties over generated records: stored means read back equal, and cleanup
deletes exactly the rows with expires_at <= now().

A fresh database per example would cost a clone each; instead each test has one
database (the function-scoped `conn` fixture, hence the suppressed health check:
sharing it between examples is intended) and each example uses its own keys and
removes what it wrote (a DELETE, or a rolled-back transaction).
"""

from __future__ import annotations

import uuid
import zoneinfo
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests import figures
from tooling.records import Record, insert

EXAMPLES = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None
)

# Text PostgreSQL can store: no NUL (refused by psycopg) and no lone surrogates
# (not encodable as UTF-8).
TEXT = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
ZONES = st.sampled_from(
    [
        UTC,
        timezone(timedelta(hours=5, minutes=45)),
        timezone(timedelta(hours=-12)),
        zoneinfo.ZoneInfo("Europe/Berlin"),
        zoneinfo.ZoneInfo("America/New_York"),
    ]
)
INSTANTS = st.datetimes(min_value=datetime(1901, 1, 1), max_value=datetime(2200, 1, 1), timezones=ZONES)
LIFETIMES = st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=3650))

RECORDS = st.fixed_dictionaries(
    {
        "request_id": st.uuids(),
        "operation": st.text(TEXT, max_size=100),
        "result_payload": st.text(TEXT, max_size=2000),
        "status_code": st.none() | st.integers(min_value=-(2**31), max_value=2**31 - 1),
        "created_at": INSTANTS,
        "lifetime": LIFETIMES,
    }
)

# The values go in as bound parameters, each adapted by psycopg (a datetime with its zone, the
# DST fold): that round trip is what the first test proves, so it keeps its own INSERT.
INSERT = """
    INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, created_at, expires_at)
    VALUES (%(request_id)s, %(operation)s, %(result_payload)s, %(status_code)s, %(created_at)s, %(expires_at)s)
"""


# Found by hypothesis: an ambiguous local time (the DST fold of 1999-10-31 in Berlin).
FOLD = {
    "request_id": uuid.UUID("e3e70682-c209-4cac-629f-6fbed82c07cd"),
    "operation": "",
    "result_payload": "",
    "status_code": None,
    "created_at": datetime(1999, 10, 31, 2, 0, tzinfo=zoneinfo.ZoneInfo("Europe/Berlin")),
    "lifetime": timedelta(microseconds=1),
}


@EXAMPLES
@given(record=RECORDS)
@example(record=FOLD)
def test_a_stored_record_reads_back_equal(conn: psycopg.Connection, record: dict[str, Any]) -> None:
    values = {**record, "expires_at": record["created_at"] + record["lifetime"]}
    conn.execute(INSERT, values)
    try:
        row = conn.execute(
            "SELECT operation, result_payload, status_code, created_at, expires_at "
            "FROM idempotency_records WHERE request_id = %s",
            (record["request_id"],),
        ).fetchone()
    finally:
        conn.execute("DELETE FROM idempotency_records WHERE request_id = %s", (record["request_id"],))
    figures.add("operations", 3)
    # Instants compare in UTC: Python never finds an ambiguous local time (a DST
    # fold, e.g. 02:00 Europe/Berlin on 1999-10-31) equal to one in another zone,
    # even when both name the same instant.
    expected = (
        *(values[name] for name in ("operation", "result_payload", "status_code")),
        *(values[name].astimezone(UTC) for name in ("created_at", "expires_at")),
    )
    assert row is not None, "the stored record must be found"
    read_back = (*row[:3], *(instant.astimezone(UTC) for instant in row[3:]))
    assert read_back == expected, f"read back {read_back!r:.200}, stored {expected!r:.200}"


# Offsets of expires_at from the cleanup's now(): zero and one microsecond either
# side are the edges that matter.
OFFSETS = st.lists(
    st.sampled_from([timedelta(0), timedelta(microseconds=1), -timedelta(microseconds=1)])
    | st.timedeltas(min_value=-timedelta(days=400), max_value=timedelta(days=400)),
    min_size=1,
    max_size=40,
)


@EXAMPLES
@given(offsets=OFFSETS, keys=st.lists(st.uuids(), min_size=40, max_size=40, unique=True))
def test_cleanup_deletes_exactly_the_rows_expired_at_its_now(
    conn: psycopg.Connection, offsets: list[timedelta], keys: list[uuid.UUID]
) -> None:
    # One transaction, rolled back: now() is frozen at its start, so it is the
    # cleanup's now() too, and the example leaves nothing behind.
    with conn.transaction(force_rollback=True):
        generated = (
            Record(key, operation="generated", created_at=offset - timedelta(days=1), expires_at=offset)
            for key, offset in zip(keys, offsets, strict=False)
        )
        insert(conn, *generated)
        deleted = conn.execute("SELECT deleted_count FROM cleanup_expired_idempotency_records()").fetchone()
        left = {row[0] for row in conn.execute("SELECT request_id FROM idempotency_records")}
    figures.add("operations", len(offsets) + 2)
    live = {key for key, offset in zip(keys, offsets, strict=False) if offset > timedelta(0)}
    assert left == live, f"cleanup left {len(left)} rows, expected exactly the {len(live)} with expires_at > now()"
    assert deleted == (len(offsets) - len(live),), (
        f"deleted_count {deleted} for {len(offsets) - len(live)} expired rows"
    )
