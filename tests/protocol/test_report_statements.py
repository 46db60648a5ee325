"""The report's statements on a database with 047 applied: the repository's get, save, delete and
cleanup (as the queries page prepares them, and as tests/helpers.py runs them) and the cleanup
function keep working; what each of them sees of, or does to, a record of the protocol is the
one docs/protocol.md states:

- the get reads a record in progress as status 409 with a problem document, an expired lease as
  nothing, a completed one as its result;
- the cleanup never deletes a live lease, and deletes an expired one like any expired record;
- a save, or recipe 1's claim, that writes a result over a record in progress ends that lease:
  the holder's completion is refused and the key replays the stored result (the first stored
  result wins);
- a record the save stored (no request hash) is matched on its operation alone."""

from __future__ import annotations

import json
import re
import uuid

import psycopg
import pytest
from psycopg import sql

from tests.docblocks import QUERIES
from tests.protocol_calls import (
    HASH,
    IN_PROGRESS_PAYLOAD,
    OTHER_HASH,
    Claim,
    claim,
    complete,
    expire,
    release,
    stored,
)
from tests.statements import CLAIM as RECIPE_CLAIM
from tests.statements import RECORD_RESULT, REPORT_GET, REPORT_SAVE
from tooling.records import save_params

CLEANUP = "SELECT deleted_count FROM cleanup_expired_idempotency_records()"


def prepared(name: str) -> str:
    """`PREPARE name (...) AS ...;` of the queries page (the repository's statements)."""
    match = re.search(rf"^PREPARE {name}\b.*?;$", QUERIES.read_text(), re.MULTILINE | re.DOTALL)
    assert match is not None, f"no PREPARE {name} on {QUERIES.name}"
    return match.group(0)


def execute(name: str, *values: object) -> sql.Composed:
    """EXECUTE name(values...): the values as literals (EXECUTE takes no bound parameters)."""
    return sql.SQL("EXECUTE {}({})").format(sql.Identifier(name), sql.SQL(", ").join(map(sql.Literal, values)))


@pytest.fixture
def repository(pconn: psycopg.Connection) -> psycopg.Connection:
    """pconn with the repository's four statements prepared as the queries page prints them."""
    pconn.prepare_threshold = None  # psycopg's own DEALLOCATE ALL would drop them
    for name in ("idempotency_get", "idempotency_save", "idempotency_delete", "idempotency_cleanup"):
        pconn.execute(prepared(name))
    return pconn


def test_the_repositorys_statements_work_with_047_applied(repository: psycopg.Connection) -> None:
    conn = repository
    key, gone = uuid.uuid4(), uuid.uuid4()
    conn.execute(execute("idempotency_save", key, "payment", '{"id": 1}', 201, 24))
    conn.execute(execute("idempotency_save", key, "payment", '{"id": 2}', 200, 24))
    got = conn.execute(execute("idempotency_get", key)).fetchone()
    assert got is not None and (got[1], got[2], got[3]) == ("payment", '{"id": 2}', 200), "save replaces, get reads"
    conn.execute(execute("idempotency_save", gone, "payment", "{}", 201, 24))
    assert conn.execute(execute("idempotency_delete", gone)).rowcount == 1, "delete forgets one request"
    expire(conn, key)
    assert conn.execute("EXECUTE idempotency_cleanup").rowcount == 1, "cleanup deletes the expired record"
    record_of_save = uuid.uuid4()
    conn.execute(REPORT_SAVE, save_params(record_of_save, "payment", "{}", 201, 24))
    row = stored(conn, record_of_save)
    assert row is not None and (row.request_hash, row.lease_token) == (None, None), "the save leaves 047's NULL"


def test_the_get_reads_a_record_in_progress_as_409_with_a_problem_document(pconn: psycopg.Connection) -> None:
    key = uuid.uuid4()
    claim(pconn, key)
    got = pconn.execute(REPORT_GET, {"request_id": key}).fetchone()
    assert got is not None and (got[2], got[3]) == (IN_PROGRESS_PAYLOAD, 409)
    problem = json.loads(got[2])
    assert (problem["status"], problem["title"]) == (409, "Conflict"), problem
    assert problem.get("type", "about:blank") == "about:blank", f"RFC 9457: no type member means about:blank: {problem}"


def test_the_get_reads_an_expired_lease_as_nothing_and_a_completed_key_as_its_result(pconn: psycopg.Connection) -> None:
    running, done = uuid.uuid4(), uuid.uuid4()
    claim(pconn, running)
    expire(pconn, running)
    assert pconn.execute(REPORT_GET, {"request_id": running}).fetchone() is None, (
        "an expired lease is an expired record"
    )
    assert complete(pconn, done, claim(pconn, done).token, '{"payment_id": 4}', 201)
    got = pconn.execute(REPORT_GET, {"request_id": done}).fetchone()
    assert got is not None and (got[2], got[3]) == ('{"payment_id": 4}', 201)


def test_the_cleanup_never_deletes_a_live_lease_and_deletes_expired_ones(pconn: psycopg.Connection) -> None:
    live, lapsed, done, finished = (uuid.uuid4() for _ in range(4))
    claim(pconn, live)
    claim(pconn, lapsed)
    expire(pconn, lapsed)
    assert complete(pconn, done, claim(pconn, done).token)
    assert complete(pconn, finished, claim(pconn, finished).token)
    expire(pconn, finished)
    assert pconn.execute(CLEANUP).fetchone() == (2,), "the expired lease and the expired result"
    left = {row[0] for row in pconn.execute("SELECT request_id FROM idempotency_records")}
    assert left == {live, done}, "the live lease and the live result stay"
    assert claim(pconn, lapsed).outcome == "claimed", "a key whose lease was cleaned up is claimable"


def test_a_save_over_a_record_in_progress_ends_its_lease_and_its_result_is_replayed(pconn: psycopg.Connection) -> None:
    key = uuid.uuid4()
    token = claim(pconn, key, operation="payment").token
    pconn.execute(REPORT_SAVE, save_params(key, "payment", '{"payment_id": "saved"}', 201, 24))
    assert claim(pconn, key) == Claim("replay", None, '{"payment_id": "saved"}', 201), "the stored result is final"
    assert complete(pconn, key, token, '{"payment_id": "holder"}', 201) is False, "the holder's result is refused"
    assert release(pconn, key, token) is False, "and it cannot delete the saved result"
    assert pconn.execute(REPORT_GET, {"request_id": key}).fetchone()[2] == '{"payment_id": "saved"}'  # type: ignore[index]


def test_recipe_1s_claim_of_an_expired_lease_fences_the_stale_holder(pconn: psycopg.Connection) -> None:
    key = uuid.uuid4()
    stale = claim(pconn, key).token
    expire(pconn, key)
    with pconn.transaction():
        assert pconn.execute(RECIPE_CLAIM, {"request_id": key, "operation": "payment"}).fetchone() is not None
        pconn.execute(RECORD_RESULT, {"request_id": key, "result_payload": '{"payment_id": 9}', "status_code": 201})
    assert complete(pconn, key, stale) is False, "the stale holder gets false"
    assert claim(pconn, key).result_payload == '{"payment_id": 9}', "recipe 1's result is replayed"


@pytest.mark.parametrize("request_hash", [HASH, OTHER_HASH], ids=["one hash", "another hash"])
def test_a_record_of_the_save_is_matched_on_its_operation_alone(pconn: psycopg.Connection, request_hash: bytes) -> None:
    key = uuid.uuid4()
    pconn.execute(REPORT_SAVE, save_params(key, "payment", '{"payment_id": 2}', 201, 24))
    assert claim(pconn, key, "payment", request_hash) == Claim("replay", None, '{"payment_id": 2}', 201)
    assert claim(pconn, key, "refund", request_hash) == Claim("mismatch", None, None, None)
