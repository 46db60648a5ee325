"""047 and its down file: what they create and remove, applied again, after 045 and 046 and
before them, with records in every state, and cut off part way.

Catalog snapshots are compared as tests/helpers.py takes them, each column numbered by its
position (tests/protocol_calls.py: a dropped column keeps its attribute number for good)."""

from __future__ import annotations

import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from tests import verification
from tests.helpers import DOWN_FILES, UP_FILES, apply, apply_all, catalog_snapshot, split_statements
from tests.protocol_calls import (
    HASH,
    IN_PROGRESS_PAYLOAD,
    PROTOCOL_DOWN,
    PROTOCOL_UP,
    apply_protocol,
    claim,
    complete,
)
from tests.sessions import wait_for_waiters
from tests.statements import REPORT_GET
from tooling.servers import Server

FUNCTIONS = {
    "idempotency_claim(uuid,character varying,bytea,interval)": (
        "record",  # its OUT parameters: one row (outcome, token, result_payload, status_code)
        "v",
    ),
    "idempotency_complete(uuid,uuid,text,integer,interval)": ("boolean", "v"),
    "idempotency_release(uuid,uuid)": ("boolean", "v"),
    "idempotency_key(text,text)": ("uuid", "i"),
}


@pytest.mark.parametrize("path", [PROTOCOL_UP, PROTOCOL_DOWN], ids=lambda p: p.name)
def test_the_file_has_the_house_header_and_no_transaction_control(path: Path) -> None:
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0] == f"-- {path.name}", f"{path.name}: the header opens with the file's name"
    other = PROTOCOL_DOWN if path == PROTOCOL_UP else PROTOCOL_UP
    assert re.search(rf"^-- (Reverse|Reverse of): +{re.escape(other.name)}$", text, re.M), "it names its reverse"
    apply = (
        r"^-- Apply:   PGOPTIONS='-c lock_timeout=2s' psql -v ON_ERROR_STOP=1 \\\n"
        rf"--          --no-psqlrc -1 -f sql/{re.escape(path.name)}$"
    )
    assert re.search(apply, text, re.M), f"{path.name}: the Apply line sets the files' lock_timeout, as 045's"
    code = "\n".join(line.split("--", 1)[0] for line in lines)
    assert not re.search(r"^\s*\\", code, re.M), "no psql meta-command"
    assert not re.search(r"\b(BEGIN|COMMIT|ROLLBACK|START\s+TRANSACTION)\s*;", code, re.I), "no transaction control"
    assert "CASCADE" not in code.upper(), "no CASCADE"


def test_047_adds_two_nullable_columns_without_default_and_no_constraint_trigger_or_index(
    contract_conn: psycopg.Connection,
) -> None:
    conn = contract_conn
    before = catalog_snapshot(conn)
    apply_protocol(conn)
    after = catalog_snapshot(conn)
    added = [row for row in after["columns"] if row not in before["columns"]]
    assert [(row[2], row[3], row[4], row[5]) for row in added] == [
        ("request_hash", "bytea", False, None),
        ("lease_token", "uuid", False, None),
    ], f"added columns: {added}"
    for row in added:
        assert row[6], f"column {row[2]} has a comment"
    for kind in ("relations", "constraints", "indexes", "types"):
        assert after[kind] == before[kind], f"047 changed the table's {kind}"
    triggers = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'idempotency_records'::regclass")
    assert triggers.fetchone() == (0,), "no trigger"


def test_the_functions_are_security_invoker_pinned_and_commented(pconn: psycopg.Connection) -> None:
    schema = pconn.execute("SELECT current_schema()").fetchone()
    assert schema is not None
    for signature, (result, volatility) in FUNCTIONS.items():
        row = pconn.execute(
            "SELECT pg_get_function_result(p.oid), p.provolatile::TEXT, p.prosecdef, p.proconfig, "
            "obj_description(p.oid, 'pg_proc'), pg_get_userbyid(p.proowner) = current_user "
            "FROM pg_proc AS p WHERE p.oid = %s::regprocedure",
            (signature,),
        ).fetchone()
        assert row is not None, f"{signature} exists"
        assert (row[0], row[1], row[2]) == (result, volatility, False), f"{signature}: result, volatility, invoker"
        assert f"search_path=pg_catalog, {schema[0]}, pg_temp" in row[3], f"{signature}: pinned path {row[3]}"
        if volatility == "v":
            assert "lock_timeout=100ms" in row[3], f"{signature}: its own bound on waits {row[3]}"
        assert row[4], f"{signature} has a comment"
        assert row[5], f"{signature} is owned by the role that applied 047"


def test_applying_047_again_changes_nothing(pconn: psycopg.Connection) -> None:
    before = catalog_snapshot(pconn)
    apply_protocol(pconn)
    assert catalog_snapshot(pconn) == before


@pytest.mark.parametrize("path", UP_FILES, ids=lambda p: p.name)
def test_045_and_046_applied_again_after_047_change_nothing(pconn: psycopg.Connection, path: object) -> None:
    key = uuid.uuid4()
    token = claim(pconn, key).token
    before = catalog_snapshot(pconn)
    apply(pconn, path)  # type: ignore[arg-type]
    assert catalog_snapshot(pconn) == before, f"{path} changed a catalog with 047 applied"
    assert complete(pconn, key, token), "and the protocol's records are untouched"


def test_047_down_removes_exactly_what_047_added(contract_conn: psycopg.Connection) -> None:
    conn = contract_conn
    before = catalog_snapshot(conn)
    apply_protocol(conn)
    apply(conn, PROTOCOL_DOWN)
    assert catalog_snapshot(conn) == before


def test_047_down_then_047_gives_the_same_catalog(pconn: psycopg.Connection) -> None:
    installed = catalog_snapshot(pconn)
    apply(pconn, PROTOCOL_DOWN)
    apply_protocol(pconn)
    assert catalog_snapshot(pconn) == installed


def test_047_down_twice_and_without_047_or_045_succeeds_and_changes_nothing(
    contract_conn: psycopg.Connection, empty_conn: psycopg.Connection
) -> None:
    for target in (contract_conn, empty_conn):
        before = catalog_snapshot(target)
        apply(target, PROTOCOL_DOWN)
        apply(target, PROTOCOL_DOWN)
        assert catalog_snapshot(target) == before


def test_047_down_keeps_every_record_and_a_record_in_progress_answers_409_until_its_lease_ends(
    pconn: psycopg.Connection,
) -> None:
    running, done = uuid.uuid4(), uuid.uuid4()
    claim(pconn, running)
    assert complete(pconn, done, claim(pconn, done).token, '{"payment_id": 1}', 201)
    apply(pconn, PROTOCOL_DOWN)
    rows = pconn.execute("SELECT request_id, result_payload, status_code FROM idempotency_records").fetchall()
    assert sorted(rows) == sorted([(running, IN_PROGRESS_PAYLOAD, 409), (done, '{"payment_id": 1}', 201)])
    got = pconn.execute(REPORT_GET, {"request_id": running}).fetchone()
    assert got is not None and (got[2], got[3]) == (IN_PROGRESS_PAYLOAD, 409), "the get answers 409 for it"
    apply_protocol(pconn)
    assert claim(pconn, done).outcome == "replay", "after 047 again, a completed record replays"
    assert claim(pconn, running).outcome == "replay", "a former lease, without its token, replays its 409"


def test_the_full_rollback_in_order_leaves_nothing(pconn: psycopg.Connection) -> None:
    claim(pconn, uuid.uuid4())
    apply_all(pconn, (PROTOCOL_DOWN, *DOWN_FILES))
    assert catalog_snapshot(pconn) == {kind: [] for kind in catalog_snapshot(pconn)}


def test_047_cut_off_after_its_first_statement_completes_when_applied_again(contract_conn: psycopg.Connection) -> None:
    """Without a wrapping transaction each statement commits on its own (psql -f without -1): a
    run cut after the first of the file's two statements, then the whole file, gives the catalog
    of one run."""
    conn = contract_conn
    first, *rest = split_statements(PROTOCOL_UP.read_text())
    assert rest, "047 has a statement after its first"
    conn.execute(first)
    apply_protocol(conn)
    cut_then_whole = catalog_snapshot(conn)
    apply(conn, PROTOCOL_DOWN)
    apply_protocol(conn)
    assert catalog_snapshot(conn) == cut_then_whole, "cut after its first statement, then the whole file: one clean run"
    assert claim(conn, uuid.uuid4(), request_hash=HASH).outcome == "claimed"


def test_two_deployers_applying_047_first_at_once_both_succeed(pg_server: Server, database: str) -> None:
    """The second waits for the first's deploy lock, then finds the columns and functions it
    added and changes nothing. (Races of more deployers, re-applies and the down file:
    tests/deploy/test_concurrent_deploys.py.)"""
    with (
        pg_server.connect(database, autocommit=True) as watcher,
        pg_server.connect(database) as first,
        pg_server.connect(database) as second,
    ):
        apply(watcher, PROTOCOL_DOWN)
        first.execute(PROTOCOL_UP.read_text())  # its transaction stays open
        second.execute("SET lock_timeout = '30s'")
        with ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(second.execute, PROTOCOL_UP.read_text())
            wait_for_waiters(watcher, "advisory", 1)
            first.commit()
            waiting.result(timeout=60)
        second.commit()
        assert claim(first, uuid.uuid4()).outcome == "claimed"
        first.commit()
        installed = catalog_snapshot(first)
    with pg_server.connect(database, autocommit=True) as conn:
        apply(conn, PROTOCOL_DOWN)
        apply_protocol(conn)
        assert catalog_snapshot(conn) == installed, "the same catalog as one deployer's"


def test_the_verification_script_still_passes_with_047_applied_and_a_key_in_progress(
    pg_server: Server, protocol_database: str, pconn: psycopg.Connection
) -> None:
    claim(pconn, uuid.uuid4())
    for variables in ((), ("catalog_only=1",)):
        run = verification.run_script(pg_server, protocol_database, *variables)
        assert run.returncode == 0 and run.not_ok == [], run.describe()
