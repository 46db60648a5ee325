"""No function or operator another role plants on the search_path runs in 047, its down file or its
four functions (CVE-2018-1058), proven two ways:

- with traps planted by a role that can CREATE in public (tests/fixtures/hostile_shadowing_traps.sql,
  the migrations' traps, and tests/fixtures/protocol_shadowing_traps.sql, for the calls the
  functions would make without their casts, each proven armed by a probe of that naive form),
  047 is applied, applied again and rolled back, and every function is called: no trap runs;
- the server's own analysis of every statement and expression the functions run
  (debug_print_parse, read by tests/shadowable.py as tests/security/test_docs_under_traps.py does for the
  docs) finds no call whose argument types differ from the built-in's it resolved to, and each
  of the functions' SQL statements, conditions, assignments and RAISEs was read (the one that
  needs a race to run is named)."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections import defaultdict

import psycopg
import pytest

from tests import shadowable
from tests.helpers import FIXTURES, UP_FILES, apply
from tests.protocol_calls import (
    CASES,
    HASH,
    OTHER_HASH,
    PROTOCOL_DOWN,
    apply_protocol,
    claim,
    complete,
    expire,
    release,
)
from tests.shadowing_traps import HOSTILE_TRAPS, plant, trap_calls
from tooling.servers import Server

TRAPS = (HOSTILE_TRAPS, FIXTURES / "protocol_shadowing_traps.sql")
PROBES = {
    "char_length(character varying)": "SELECT char_length('payment'::VARCHAR)",
    "<> (character varying, character varying)": "SELECT 'a'::VARCHAR <> 'b'::VARCHAR",
    "convert_to(text, text)": "SELECT convert_to('tenant-a', 'UTF8')",
}
FUNCTION_LINE = re.compile(r"PL/pgSQL function (?P<name>idempotency_\w+)\([^)]*\) line (?P<line>\d+)")
# What a statement of a function body starts with that the server analyzes when it runs (RETURN
# NEXT and RETURN FOUND return variables: plpgsql analyzes nothing for them).
ANALYZED = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|IF|RAISE|RETURN (?!NEXT;|FOUND;)\S|[a-z_]+ :=)")
# The block only a race reaches (another caller writes the key between the claim's read and its
# write, three times over): an integer comparison and a constant, whose types match exactly.
UNREACHED = "IF attempts >= 3 THEN"


@pytest.mark.parametrize("trap", sorted(PROBES))
def test_each_trap_is_armed(empty_conn: psycopg.Connection, trap: str) -> None:
    ran = plant(empty_conn, TRAPS)
    empty_conn.execute(PROBES[trap]).fetchall()
    assert trap in ran and trap_calls(empty_conn) >= 1, f"the trap {trap} did not run: {ran}"


def exercise(pg_server: Server, database: str, conn: psycopg.Connection) -> None:
    """Every path of the four functions: each outcome of the claim, the takeover, a claim whose
    wait times out, completion, release, a scoped key, and every bad argument."""
    new, lapsed, held = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    token = claim(conn, new).token
    claim(conn, new)  # in_progress
    claim(conn, new, request_hash=OTHER_HASH)  # mismatch
    assert complete(conn, new, token, '{"ok": true}', 201, dt.timedelta(hours=1))
    claim(conn, new)  # replay
    assert release(conn, lapsed, claim(conn, lapsed).token)
    claim(conn, lapsed)
    expire(conn, lapsed)
    claim(conn, lapsed, operation="transfer", request_hash=HASH)  # takeover
    conn.execute("SELECT idempotency_key('tenant-a', 'order-1')").fetchone()
    with pg_server.connect(database) as holder:  # a claim left uncommitted: the next one times out
        claim(holder, held)
        assert claim(conn, held).outcome == "in_progress"
        holder.rollback()
    for bad in CASES:
        with pytest.raises(psycopg.Error):
            conn.execute(bad.query, bad.params)


def test_applying_using_and_rolling_back_047_runs_no_trap(
    pg_server: Server, protocol_database: str, pconn: psycopg.Connection
) -> None:
    apply(pconn, PROTOCOL_DOWN)
    ran = plant(pconn, TRAPS)
    apply_protocol(pconn)
    apply_protocol(pconn)
    assert ran == [], f"applying 047 ran another role's code: {ran}"
    exercise(pg_server, protocol_database, pconn)
    assert ran == [], f"the functions ran another role's code: {ran}"
    for path in (PROTOCOL_DOWN, PROTOCOL_DOWN, *UP_FILES):
        apply(pconn, path)
    assert (ran, trap_calls(pconn)) == ([], 0), f"another role's code ran: {ran}"


def body_statements(conn: psycopg.Connection, name: str) -> dict[int, str]:
    """The lines of a function's body that start a statement the server analyzes when it runs."""
    row = conn.execute("SELECT prosrc FROM pg_proc WHERE proname = %s", (name,)).fetchone()
    assert row is not None
    lines = str(row[0]).split("\n")
    found, skipping = {}, False
    for number, line in enumerate(lines, 1):
        skipping = skipping or line.strip() == UNREACHED
        if skipping:
            skipping = line.strip() != "END IF;"
        elif ANALYZED.match(line):
            found[number] = line.strip()
    return found


def test_no_call_in_the_functions_can_be_captured_and_every_statement_was_read(
    pg_server: Server, protocol_database: str, pconn: psycopg.Connection
) -> None:
    recording = shadowable.Recording(pconn)
    tracer = shadowable.Tracer(recording)
    exercise(pg_server, protocol_database, recording)  # type: ignore[arg-type]
    pconn.execute("RESET client_min_messages")
    catalog = shadowable.Catalog(pconn)
    read: dict[str, set[int]] = defaultdict(set)
    captured, calls = [], 0
    for analyzed in tracer.take():
        where = FUNCTION_LINE.search(analyzed.context)
        query = shadowable.SPI_QUERY.match(analyzed.context)
        if where is None or query is None:
            continue
        read[where["name"]].add(int(where["line"]))
        tree = shadowable.read_tree(analyzed.tree)
        for query_tree in tree if isinstance(tree, list) else [tree]:
            for call in shadowable.calls(query_tree, query["query"].encode(), catalog):
                calls += 1
                if call.shadowable:
                    captured.append(f"{where['name']} line {where['line']}: {call.resolved.name}{call.args}")
    assert not captured, "calls another role's function would capture:\n" + "\n".join(captured)
    assert calls >= 60, f"only {calls} calls read: the trace is not working"
    for name in ("idempotency_claim", "idempotency_complete", "idempotency_release", "idempotency_key"):
        statements = body_statements(pconn, name)
        missing = {number: text for number, text in statements.items() if number not in read[name]}
        assert not missing, f"{name}: statements the test never ran, so never read: {missing}"
