"""Reliability, insert-or-read: a request stores its result or reads the valid record that
holds its key, and never gets an expired record, alone or with duplicates at the same time.

The guide prints the SQL of tests/statements.py (checked here character for character, and
run by tests/docs/test_docs.py). The form the guide printed before is run too, to show how it
fails: it returned the result of a record that had expired two days earlier.
"""

from __future__ import annotations

import datetime
import threading
import uuid

import psycopg
import pytest

from tests import figures
from tests.docblocks import RELIABILITY
from tests.sessions import results, together, wait_for_waiters
from tests.statements import (
    INSERT_OR_READ_NO_OP_UPDATE,
    INSERT_OR_READ_ONE_STATEMENT,
    INSERT_OR_READ_READ,
    INSERT_OR_READ_STORE,
    render,
)
from tooling import records, servers
from tooling.records import DAY, HOUR, Record, save_params

DUPLICATES = 8


def expired_two_days_ago(key: uuid.UUID) -> Record:
    return records.expired(key, result_payload="expired result", status_code=201, ago=2 * DAY, lifetime=DAY)


def valid(key: uuid.UUID) -> Record:
    return records.live(key, result_payload="valid result", status_code=201, lifetime=HOUR)


Answer = tuple[str, int]


def request(key: uuid.UUID, payload: str) -> dict[str, object]:
    return save_params(key, "payment", payload, 200)


def two_statements(conn: psycopg.Connection, key: uuid.UUID, payload: str) -> tuple[bool, Answer]:
    """The guide's two statements in one transaction: (stored this request's result, answer)."""
    with conn.transaction():
        stored = conn.execute(INSERT_OR_READ_STORE, request(key, payload)).fetchone()
        if stored is not None:
            return True, (stored[0], stored[1])
        found = conn.execute(INSERT_OR_READ_READ, {"request_id": key}).fetchone()
    assert found is not None, f"key {key}: step 2 finds the record step 1 locked"
    return False, (found[0], found[1])


def one_statement(conn: psycopg.Connection, key: uuid.UUID, payload: str) -> tuple[bool, Answer]:
    row = conn.execute(INSERT_OR_READ_ONE_STATEMENT, request(key, payload)).fetchone()
    assert row is not None, "the one statement always returns a row"
    return bool(row[2]), (row[0], row[1])


FORMS = {"two statements": two_statements, "one statement": one_statement}


def test_the_guide_prints_the_sql_the_tests_run() -> None:
    guide = RELIABILITY.read_text()
    section = guide[guide.index("### Insert-or-read\n") : guide.index("### Figures\n")]
    first, second = "'92a7c0e4-a515-4b31-aa16-64622ca9d64b'", "'457078ae-acb3-46cc-ba36-5ebee81f18af'"
    payment = {"operation": "'payment'", "status_code": "201"}
    printed = {
        "step 1": render(
            INSERT_OR_READ_STORE, request_id=first, result_payload="""'{"transaction_id": "t-7"}'""", **payment
        ),
        "step 2": render(INSERT_OR_READ_READ, request_id=first),
        "one statement": render(
            INSERT_OR_READ_ONE_STATEMENT, request_id=second, result_payload="""'{"transaction_id": "t-8"}'""", **payment
        ),
    }
    for name, text in printed.items():
        assert text + ";\n" in section, f"the guide's insert-or-read {name} differs from the SQL tested here"


def test_naive_no_op_update_returns_a_record_that_expired_two_days_ago(conn: psycopg.Connection) -> None:
    key = uuid.uuid4()
    records.insert(conn, expired_two_days_ago(key))
    row = conn.execute(INSERT_OR_READ_NO_OP_UPDATE, request(key, "new result")).fetchone()
    assert row is not None and row[0] == "expired result", f"the previous form replays the expired result: {row}"


@pytest.mark.parametrize("form", FORMS)
def test_an_expired_record_is_taken_over_never_returned(conn: psycopg.Connection, form: str) -> None:
    key = uuid.uuid4()
    records.insert(conn, expired_two_days_ago(key))
    stored, answer = FORMS[form](conn, key, "new result")
    assert (stored, answer) == (True, ("new result", 200)), f"{form}: this request's result, got {answer}"
    row = conn.execute("SELECT expires_at - created_at FROM idempotency_records WHERE request_id = %s", (key,))
    assert row.fetchone() == (datetime.timedelta(hours=24),), f"{form}: a whole new lifetime"


@pytest.mark.parametrize("form", FORMS)
def test_a_valid_record_is_returned_and_kept(conn: psycopg.Connection, form: str) -> None:
    key = uuid.uuid4()
    records.insert(conn, valid(key))
    assert FORMS[form](conn, key, "new result") == (False, ("valid result", 201)), f"{form}: the stored result"
    stored = conn.execute("SELECT result_payload FROM idempotency_records WHERE request_id = %s", (key,)).fetchone()
    assert stored == ("valid result",), f"{form}: the valid record is unchanged"


@pytest.mark.parametrize("form", FORMS)
def test_a_new_key_stores_this_requests_result(conn: psycopg.Connection, form: str) -> None:
    assert FORMS[form](conn, uuid.uuid4(), "new result") == (True, ("new result", 200)), form


@pytest.mark.parametrize("form", FORMS)
def test_duplicates_racing_on_an_expired_key_all_get_one_new_result(
    pg_server: servers.Server, database: str, conn: psycopg.Connection, form: str
) -> None:
    """A holder locks the expired record until every duplicate waits on it; then they all go.
    One stores its result, every other one gets that result, none the expired one."""
    key = uuid.uuid4()
    records.insert(conn, expired_two_days_ago(key))
    holder = pg_server.connect(database)
    figures.add("sessions", DUPLICATES + 1)
    holder.execute("SELECT 1 FROM idempotency_records WHERE request_id = %s FOR UPDATE", (key,))

    def duplicate(barrier: threading.Barrier) -> tuple[bool, Answer]:
        with pg_server.connect(database, autocommit=True) as session:
            barrier.wait()
            return FORMS[form](session, key, f"result of session {session.info.backend_pid}")

    try:
        with together(DUPLICATES, duplicate, release=holder.rollback) as futures:
            # The first waits on the holder's transaction, the others queue on the row.
            wait_for_waiters(conn, "transactionid", 1)
            wait_for_waiters(conn, "tuple", DUPLICATES - 1)
            holder.rollback()
            outcomes = results(futures)
    finally:
        holder.close()
    figures.add("operations", DUPLICATES)
    winners = [answer for stored, answer in outcomes if stored]
    assert len(winners) == 1, f"{form}: exactly one duplicate stores its result, got {outcomes}"
    assert {answer for _, answer in outcomes} == {winners[0]}, f"{form}: every duplicate gets it: {outcomes}"
    assert "expired result" not in {answer[0] for _, answer in outcomes}, f"{form}: nobody gets the expired one"
    figures.add("rows_checked")
