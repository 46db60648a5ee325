"""What the protocol's tests share: the 047 files, calls of the four functions, records built
from explicit timestamps, the reference implementation of idempotency_key(), and the table of
bad arguments."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import uuid

import psycopg

from tests.helpers import DOWN_047, ROOT, UP_047, apply

PROTOCOL_UP, PROTOCOL_DOWN = UP_047, DOWN_047
PAGE = ROOT / "docs" / "protocol.md"

# What a reader of the table sees of a record in progress (the repository's get).
IN_PROGRESS_PAYLOAD = '{"title":"Conflict","status":409,"detail":"A request with this key is in progress."}'
IN_PROGRESS_STATUS = 409
LEASE = dt.timedelta(seconds=30)
TTL = dt.timedelta(hours=24)
# The fixed namespace of idempotency_key() (RFC 9562 version 8, SHA-256).
NAMESPACE = bytes.fromhex("1e71d1276a3c48e297f3dcba64f6255b")

CLAIM = "SELECT outcome, token, result_payload, status_code FROM idempotency_claim(%s, %s, %s, %s)"
COMPLETE = "SELECT idempotency_complete(%s, %s, %s, %s, %s)"
RELEASE = "SELECT idempotency_release(%s, %s)"
KEY = "SELECT idempotency_key(%s, %s)"
RECORD = """
SELECT operation, result_payload, status_code, created_at, expires_at, request_hash, lease_token
FROM idempotency_records
WHERE request_id = %s
"""


@dataclasses.dataclass(frozen=True)
class Claim:
    """One row of idempotency_claim()."""

    outcome: str
    token: uuid.UUID | None
    result_payload: str | None
    status_code: int | None


@dataclasses.dataclass(frozen=True)
class Stored:
    """A row of idempotency_records, as the protocol's columns hold it."""

    operation: str
    result_payload: str
    status_code: int | None
    created_at: dt.datetime
    expires_at: dt.datetime
    request_hash: bytes | None
    lease_token: uuid.UUID | None


def apply_protocol(conn: psycopg.Connection) -> None:
    apply(conn, PROTOCOL_UP)


def digest(request: object) -> bytes:
    """SHA-256 of a request's canonical JSON (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).digest()


HASH = digest({"amount_cents": 1500, "currency": "EUR"})
OTHER_HASH = digest({"amount_cents": 9900, "currency": "EUR"})


def claim(
    conn: psycopg.Connection,
    key: uuid.UUID,
    operation: str = "payment",
    request_hash: bytes | None = HASH,
    lease: dt.timedelta | None = LEASE,
) -> Claim:
    row = conn.execute(CLAIM, (key, operation, request_hash, lease)).fetchone()
    assert row is not None, "idempotency_claim returns one row"
    return Claim(*row)


def complete(
    conn: psycopg.Connection,
    key: uuid.UUID,
    token: uuid.UUID | None,
    result_payload: str | None = '{"payment_id": 1}',
    status_code: int | None = 201,
    ttl: dt.timedelta | None = TTL,
) -> bool:
    row = conn.execute(COMPLETE, (key, token, result_payload, status_code, ttl)).fetchone()
    assert row is not None
    return bool(row[0])


def release(conn: psycopg.Connection, key: uuid.UUID, token: uuid.UUID | None) -> bool:
    row = conn.execute(RELEASE, (key, token)).fetchone()
    assert row is not None
    return bool(row[0])


def stored(conn: psycopg.Connection, key: uuid.UUID) -> Stored | None:
    row = conn.execute(RECORD, (key,)).fetchone()
    return None if row is None else Stored(*row)


def expire(conn: psycopg.Connection, key: uuid.UUID) -> None:
    """Move a record's lifetime (a result's, or a lease's) into the past, as the clock would:
    created two minutes ago, expired one minute ago. Run by the table's owner."""
    done = conn.execute(
        "UPDATE idempotency_records SET created_at = now() - INTERVAL '2 minutes', "
        "expires_at = now() - INTERVAL '1 minute' WHERE request_id = %s",
        (key,),
    )
    assert done.rowcount == 1, f"no record {key} to expire"


def reference_key(scope: str, client_key: str) -> uuid.UUID:
    """idempotency_key() in Python: the first 128 bits of SHA-256 over the namespace and both
    strings as UTF-8, each after its length in bytes (4 bytes, big-endian), with the version (8)
    and variant (binary 10) bits set."""
    parts = [value.encode() for value in (scope, client_key)]
    data = NAMESPACE + b"".join(len(part).to_bytes(4, "big") + part for part in parts)
    head = bytearray(hashlib.sha256(data).digest()[:16])
    head[6] = (head[6] & 0x0F) | 0x80
    head[8] = (head[8] & 0x3F) | 0x80
    return uuid.UUID(bytes=bytes(head))


def sqlstate_and_diagnostics(error: psycopg.Error) -> tuple[str | None, str, str, str]:
    diag = error.diag
    return (error.sqlstate, diag.message_primary or "", diag.message_detail or "", diag.message_hint or "")


# --- bad arguments (tests/protocol/test_bad_arguments.py; the shadowing test runs them too) ---

KNOWN = uuid.UUID("0f6e5d4c-3b2a-4190-8877-665544332211")
TOKEN = uuid.UUID("11111111-2222-4333-8444-555555555555")


@dataclasses.dataclass(frozen=True)
class Bad:
    query: str
    params: tuple[object, ...]
    sqlstate: str
    names: str  # what the message must name

    def __str__(self) -> str:
        return self.names


Call = tuple[str, tuple[object, ...]]


def _claim(
    key: object = KNOWN, operation: object = "payment", request_hash: object = HASH, lease: object = LEASE
) -> Call:
    return CLAIM, (key, operation, request_hash, lease)


def _complete(
    key: object = KNOWN, token: object = TOKEN, payload: object = "{}", status: object = 201, ttl: object = TTL
) -> Call:
    return COMPLETE, (key, token, payload, status, ttl)


CASES = [
    Bad(*_claim(key=None), "22004", "idempotency_claim: request_id is NULL"),
    Bad(*_claim(operation=None), "22004", "idempotency_claim: operation is NULL"),
    Bad(*_claim(operation="x" * 101), "22001", "idempotency_claim: operation is longer than 100 characters"),
    Bad(*_claim(operation="é" * 101), "22001", "idempotency_claim: operation is longer than 100 characters"),
    Bad(*_claim(request_hash=None), "22004", "idempotency_claim: request_hash is NULL"),
    Bad(*_claim(request_hash=b"\x01" * 15), "22023", "idempotency_claim: request_hash is not a digest"),
    Bad(*_claim(request_hash=b"\x01" * 65), "22023", "idempotency_claim: request_hash is not a digest"),
    Bad(*_claim(request_hash=b'{"amount": 1500}' * 8), "22023", "idempotency_claim: request_hash is not a digest"),
    Bad(*_claim(lease=None), "22004", "idempotency_claim: lease is NULL"),
    Bad(*_claim(lease=dt.timedelta(0)), "22023", "idempotency_claim: lease is not a positive, finite interval"),
    Bad(*_claim(lease=dt.timedelta(seconds=-1)), "22023", "idempotency_claim: lease is not a positive"),
    Bad(*_complete(key=None), "22004", "idempotency_complete: request_id is NULL"),
    Bad(*_complete(token=None), "22004", "idempotency_complete: token is NULL"),
    Bad(*_complete(payload=None), "22004", "idempotency_complete: result_payload is NULL"),
    Bad(*_complete(ttl=None), "22004", "idempotency_complete: ttl is NULL"),
    Bad(*_complete(ttl=dt.timedelta(0)), "22023", "idempotency_complete: ttl is not a positive, finite interval"),
    Bad(*_complete(ttl=dt.timedelta(hours=-24)), "22023", "idempotency_complete: ttl is not a positive"),
    Bad(*_complete(payload=IN_PROGRESS_PAYLOAD, status=409), "22023", "idempotency_complete: the result is the in"),
    Bad(RELEASE, (None, TOKEN), "22004", "idempotency_release: request_id is NULL"),
    Bad(RELEASE, (KNOWN, None), "22004", "idempotency_release: token is NULL"),
    Bad(KEY, (None, "order-1"), "22004", "idempotency_key: scope is NULL"),
    Bad(KEY, ("tenant-a", None), "22004", "idempotency_key: client_key is NULL"),
    Bad(KEY, ("", "order-1"), "22023", "idempotency_key: scope is empty"),
    Bad(KEY, ("tenant-a", ""), "22023", "idempotency_key: client_key is empty"),
]
