"""The benchmark's protocol phase (bench/protocol.py) measures what it says: its claim+complete
script claims a new key and completes it, its replay script replays a record the phase loads, and
the anchors it compares them with are the report's save and the plain lookup the other phases
measure. The statements run here with the pgbench variables bound as pgbench binds them."""

from __future__ import annotations

import datetime as dt
import re

import psycopg

from bench import protocol
from bench.config import KEY_BASE, KEY_MODULUS, KEY_PREFIX, KEY_STEP, key_variables
from bench.database import read_sql
from tests.protocol_calls import stored


def bound(name: str, row: int) -> tuple[list[str], dict[str, object]]:
    """The SQL statements of a pgbench script (its meta-commands end a statement and are
    dropped), with psycopg placeholders for its variables, and the values for row `row`."""
    statements: list[str] = []
    current: list[str] = []
    for line in read_sql(name).splitlines():
        if not line.startswith("\\"):
            current.append(line)
        if current and (line.startswith("\\") or line.rstrip().endswith(";")):
            statements.append("\n".join(current).rstrip().removesuffix(";"))
            current = []
    rendered = [
        re.sub(r":(hash|payload|token)\b", r"%(\1)s", statement.replace("(:prefix || :k)::uuid", "%(key)s::uuid"))
        for statement in statements
    ]
    key = f"{KEY_PREFIX}{KEY_BASE + row * KEY_STEP % KEY_MODULUS}"
    return rendered, {"key": key, "hash": "\\x" + protocol.HASH.hex(), "payload": '{"d":"x"}'}


def test_the_claim_complete_script_claims_and_completes_a_new_key(pconn: psycopg.Connection) -> None:
    statements, values = bound("protocol_claim_complete.sql", 5_000_000)
    assert len(statements) == 2, statements
    claimed = pconn.execute(statements[0], values).fetchone()
    assert claimed is not None and claimed[1] == 1, f"the claim of a new key: {claimed}"
    done = pconn.execute(statements[1], {**values, "token": str(claimed[0])}).fetchone()
    assert done == (True,), "its completion stores the result"
    again = pconn.execute(statements[0], values).fetchone()
    assert again == (None, 0), "a key drawn twice is replayed, and the script skips its completion"


def test_the_replay_script_replays_a_loaded_record(pconn: psycopg.Connection) -> None:
    now = pconn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    pconn.execute(
        read_sql("protocol_rows.sql"),
        {"first": 1, "last": 10, "payload": 200, "now": now, "hash": protocol.HASH, **key_variables()},
    )
    statements, values = bound("protocol_replay.sql", 7)
    (statement,) = statements
    row = pconn.execute(statement, values).fetchone()
    assert row is not None and row[0] == "replay" and row[2] == 201, f"a loaded record replays: {row}"
    record = stored(pconn, values["key"])  # type: ignore[arg-type]
    assert record is not None and len(record.result_payload) == 200 and record.lease_token is None
    assert record.expires_at - record.created_at == dt.timedelta(hours=24)
    assert row[1] == record.result_payload, "it replays the stored result"


def test_the_anchors_are_the_report_save_and_the_plain_lookup() -> None:
    assert protocol.CONTENDERS["protocol-save-new"] == "save.sql", "the report's save (bench/save.sql)"
    assert protocol.CONTENDERS["protocol-lookup"] == "lookup_hit_narrow.sql"
    assert protocol.ANCHORS == {"protocol-claim-complete": "protocol-save-new", "protocol-replay": "protocol-lookup"}
