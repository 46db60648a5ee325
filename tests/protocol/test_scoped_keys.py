"""idempotency_key(scope, client_key): one deterministic name-based UUID per (scope, key), distinct
per scope, the same on every server and in every database encoding, and the one the test vectors
published in docs/protocol.md give (compared here on whichever major the suite runs: 15, 16, 18).

An independent implementation in Python (tests/protocol_calls.py, reference_key) gives the
same UUID for every pair hypothesis generates."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from tests.helpers import UP_FILES, apply
from tests.protocol_calls import KEY, PAGE, apply_protocol, reference_key
from tooling.servers import Server

VECTOR = re.compile(r"^\| `(?P<scope>[^`]*)` \| `(?P<client_key>[^`]*)` \| `(?P<key>[0-9a-f-]{36})` \|$")
# Text PostgreSQL can store: no NUL and no lone surrogate.
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=40)


def published_vectors() -> list[tuple[str, str, uuid.UUID]]:
    """The rows of the test-vector table of docs/protocol.md."""
    found = [
        (match["scope"], match["client_key"], uuid.UUID(match["key"]))
        for line in PAGE.read_text().splitlines()
        if (match := VECTOR.match(line))
    ]
    assert len(found) >= 6, f"{PAGE.name} publishes {len(found)} test vectors"
    return found


def key_of(conn: psycopg.Connection, scope: str, client_key: str) -> uuid.UUID:
    row = conn.execute(KEY, (scope, client_key)).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def test_the_published_vectors_hold_on_this_server(pconn: psycopg.Connection) -> None:
    version = pconn.execute("SHOW server_version").fetchone()
    for scope, client_key, expected in published_vectors():
        found = key_of(pconn, scope, client_key)
        assert found == expected, (
            f"idempotency_key({scope!r}, {client_key!r}) on {version}: {found}, published {expected}"
        )
        assert reference_key(scope, client_key) == expected, f"the reference disagrees with the page for {scope!r}"


def test_the_same_key_in_different_scopes_gets_different_records(pconn: psycopg.Connection) -> None:
    keys = {key_of(pconn, f"tenant-{n}", "order-1") for n in range(200)}
    assert len(keys) == 200, "every scope gets its own UUID for the same client key"


def test_the_encoding_is_unambiguous(pconn: psycopg.Connection) -> None:
    pairs = [("a", "bc"), ("ab", "c"), ("abc", "d"), ("a", "bcd"), ("tenant", "1:2"), ("tenant:1", "2")]
    keys = {key_of(pconn, scope, client_key) for scope, client_key in pairs}
    assert len(keys) == len(pairs), "splitting the same characters differently gives another UUID"


def test_the_key_is_a_version_8_uuid_of_the_rfc_variant(pconn: psycopg.Connection) -> None:
    for n in range(50):
        key = key_of(pconn, "tenant-a", f"order-{n}")
        assert key.version == 8 and key.variant == uuid.RFC_4122, f"{key}: version {key.version}, {key.variant}"


def test_the_key_is_the_same_call_after_call_and_in_another_database(
    pg_server: Server, pconn: psycopg.Connection, fresh_database: Callable[[], str]
) -> None:
    first = key_of(pconn, "tenant-a", "order-1")
    assert key_of(pconn, "tenant-a", "order-1") == first
    with pg_server.connect(fresh_database(), autocommit=True) as other:
        apply_protocol(other)
        assert key_of(other, "tenant-a", "order-1") == first


def test_the_key_does_not_depend_on_the_database_encoding(pg_server: Server, pconn: psycopg.Connection) -> None:
    """The strings are hashed as UTF-8 whatever the database's encoding: in a LATIN1 database the
    same characters give the same UUID."""
    name = f"{pconn.info.dbname}_latin1"
    with pg_server.connect(autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0").format(
                sql.Identifier(name)
            )
        )
    try:
        with pg_server.connect(name, autocommit=True) as latin1:
            for path in UP_FILES[:1]:
                apply(latin1, path)
            apply_protocol(latin1)
            for scope, client_key in (("tenant-é", "clé-1"), ("Zürich", "order-ß"), ("a", "bc")):
                assert key_of(latin1, scope, client_key) == key_of(pconn, scope, client_key), (scope, client_key)
    finally:
        with pg_server.connect(autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None)
@given(scope=TEXT, client_key=TEXT)
def test_the_server_and_the_reference_agree(pconn: psycopg.Connection, scope: str, client_key: str) -> None:
    assert key_of(pconn, scope, client_key) == reference_key(scope, client_key)


def test_the_function_is_immutable_and_parallel_safe(pconn: psycopg.Connection) -> None:
    row = pconn.execute(
        "SELECT provolatile::TEXT, proparallel::TEXT FROM pg_proc WHERE oid = 'idempotency_key(text, text)'::regprocedure"
    ).fetchone()
    assert row == ("i", "s"), f"idempotency_key: IMMUTABLE and PARALLEL SAFE, got {row}"
