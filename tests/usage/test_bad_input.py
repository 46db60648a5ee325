"""Bad input gets PostgreSQL's clear error, names the constraint, and writes nothing.

Each case is inserted with parameters into a table that already holds one record;
the test asserts the SQLSTATE, the constraint name where there is one, and that
the table still holds exactly that record. Inputs that look odd but are valid
(an empty operation, multibyte text, a 10 MB payload, odd time zones, 'infinity')
are a second table: stored, and read back as the instant or text that was meant.

Values reach the server as psycopg sends them: a Python str as text of unknown
type (the server infers the column's type), int as int2/int4/int8/numeric by
size, float as float8. `Raw` sends bytes unchanged as a binary-format text
parameter, so the server itself sees invalid UTF-8 or a NUL byte."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.adapt import Dumper
from psycopg.pq import Format

from tests import figures
from tests.helpers import count

EXISTING = "11111111-1111-1111-1111-111111111111"

INSERT = (
    "INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, created_at, expires_at) "
    "VALUES (%(request_id)s, %(operation)s, %(result_payload)s, %(status_code)s, "
    "coalesce(%(created_at)s, now()), %(expires_at)s)"
)

GOOD: dict[str, Any] = {
    "request_id": "22222222-2222-2222-2222-222222222222",
    "operation": "payment",
    "result_payload": "{}",
    "status_code": 200,
    "created_at": None,
    "expires_at": "2999-01-01T00:00:00Z",
}


class Raw(bytes):
    """Bytes the server must receive as a text value, unchecked by the client."""


class RawTextDumper(Dumper):
    """Sends Raw as a binary-format `text` parameter: the bytes go through as they are."""

    format = Format.BINARY
    oid = psycopg.adapters.types["text"].oid

    def dump(self, obj: Any) -> bytes:
        return bytes(obj)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


INJECTIONS = (
    "'); DROP TABLE idempotency_records; --",
    "x' OR '1'='1",
    "$$; DELETE FROM idempotency_records; $$",
    "\\'; TRUNCATE idempotency_records; --",
)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    changes: dict[str, Any]
    sqlstate: str
    constraint: str | None = None
    sql: str = INSERT


CASES = [
    Case("null request_id", {"request_id": None}, "23502"),
    Case("null operation", {"operation": None}, "23502"),
    Case("null result_payload", {"result_payload": None}, "23502"),
    Case("null expires_at", {"expires_at": None}, "23502"),
    Case("operation of 101 characters", {"operation": "x" * 101}, "22001"),
    Case("malformed uuid", {"request_id": "not-a-uuid"}, "22P02"),
    Case("plain insert of an existing key", {"request_id": EXISTING}, "23505", "idempotency_records_pkey"),
    Case(
        "expires_at equal to created_at",
        {"created_at": "2030-01-01T00:00:00Z", "expires_at": "2030-01-01T00:00:00Z"},
        "23514",
        "chk_expires_at",
    ),
    Case(
        "expires_at before created_at",
        {"created_at": "2030-01-01T00:00:00Z", "expires_at": "2029-12-31T23:59:59Z"},
        "23514",
        "chk_expires_at",
    ),
    # Added classes: text length in characters, encodings, ranges, types, times.
    Case("operation of 101 two-byte characters", {"operation": "é" * 101}, "22001"),
    Case("operation of 101 four-byte characters", {"operation": "😀" * 101}, "22001"),
    Case("NUL byte sent as text", {"result_payload": Raw(b"a\x00b")}, "22021"),
    Case("invalid UTF-8 byte 0xff", {"result_payload": Raw(b"\xff")}, "22021"),
    Case("truncated UTF-8 sequence", {"operation": Raw(b"\xc3\x28")}, "22021"),
    Case("overlong UTF-8 encoding", {"result_payload": Raw(b"\xc0\xaf")}, "22021"),
    Case("UTF-16 surrogate encoded in UTF-8", {"result_payload": Raw(b"\xed\xa0\x80")}, "22021"),
    Case("status_code of 2^31", {"status_code": 2**31}, "22003"),
    Case("status_code of -2^31 - 1", {"status_code": -(2**31) - 1}, "22003"),
    Case("status_code of 2^70", {"status_code": 2**70}, "22003"),
    Case("status_code 'abc'", {"status_code": "abc"}, "22P02"),
    Case("empty uuid", {"request_id": ""}, "22P02"),
    Case("uuid of 31 hex digits", {"request_id": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1"}, "22P02"),
    Case("uuid of 33 hex digits", {"request_id": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111"}, "22P02"),
    Case("uuid with a non-hex digit", {"request_id": "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}, "22P02"),
    Case("uuid with a urn:uuid: prefix", {"request_id": "urn:uuid:a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}, "22P02"),
    Case("uuid with a leading space", {"request_id": " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}, "22P02"),
    Case("uuid with an unclosed brace", {"request_id": "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}, "22P02"),
    Case("SQL injection as request_id", {"request_id": INJECTIONS[0]}, "22P02"),
    Case("integer as request_id", {"request_id": 5}, "42804"),
    Case("boolean as expires_at", {"expires_at": True}, "42804"),
    Case("unparsable timestamp", {"expires_at": "next tuesday-ish"}, "22007"),
    Case("February 30th", {"expires_at": "2030-02-30T00:00:00Z"}, "22008"),
    Case("unknown time zone", {"expires_at": "2030-01-01 00:00 Mars/Olympus"}, "22023"),
    Case("timestamp beyond the type's range", {"expires_at": "294277-01-01T00:00:00Z"}, "22008"),
    Case("-infinity expiry", {"expires_at": "-infinity"}, "23514", "chk_expires_at"),
    Case("infinity created_at", {"created_at": "infinity", "expires_at": "infinity"}, "23514", "chk_expires_at"),
    Case(
        "created_at in the future, expires_at before it",
        {"created_at": "2100-01-01T00:00:00Z", "expires_at": "2099-01-01T00:00:00Z"},
        "23514",
        "chk_expires_at",
    ),
    Case(
        "cleanup called with an argument",
        {"status_code": 1},
        "42883",
        sql="SELECT deleted_count FROM cleanup_expired_idempotency_records(%(status_code)s)",
    ),
]


@pytest.fixture
def one_record(conn: psycopg.Connection) -> psycopg.Connection:
    conn.adapters.register_dumper(Raw, RawTextDumper)
    conn.execute(INSERT, {**GOOD, "request_id": EXISTING})
    return conn


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_rejected_and_writes_nothing(one_record: psycopg.Connection, case: Case) -> None:
    figures.add("bad_input_classes")
    figures.add("operations")
    with pytest.raises(psycopg.Error) as raised:
        one_record.execute(case.sql, {**GOOD, **case.changes})
    error = raised.value
    assert error.sqlstate == case.sqlstate, (
        f"{case.name}: expected SQLSTATE {case.sqlstate}, got {error.sqlstate} ({error})"
    )
    if case.constraint is not None:
        assert error.diag.constraint_name == case.constraint, f"{case.name}: constraint {error.diag.constraint_name}"
    if case.sqlstate == "23502":
        assert error.diag.column_name == next(iter(case.changes)), f"{case.name}: column {error.diag.column_name}"
    assert count(one_record) == 1, f"{case.name}: the table must still hold only the existing record"
    assert one_record.execute(
        "SELECT operation, result_payload FROM idempotency_records WHERE request_id = %s", (EXISTING,)
    ).fetchone() == ("payment", "{}"), f"{case.name}: the existing record must be unchanged"


def test_operation_of_exactly_100_characters_is_accepted(conn: psycopg.Connection) -> None:
    conn.execute(INSERT, {**GOOD, "operation": "x" * 100})
    assert count(conn, "length(operation) = 100") == 1


# --- odd but valid input: stored, and read back as meant ------------------------------

TEN_MB = "0123456789abcdef" * (10 * 1024 * 1024 // 16)


@dataclasses.dataclass(frozen=True)
class Accepted:
    """A valid input and what reading it back must give: {SQL expression: value}."""

    name: str
    changes: dict[str, Any]
    expected: dict[str, Any]


ACCEPTED = [
    # The report's schema allows it (VARCHAR(100) NOT NULL has no minimum length),
    # and the contract keeps it: an application that wants a name must check it.
    Accepted("empty operation", {"operation": ""}, {"operation": ""}),
    Accepted(
        "operation of 100 two-byte characters",
        {"operation": "é" * 100},
        {"operation": "é" * 100, "octet_length(operation)": 200},
    ),
    Accepted(
        "operation of 100 four-byte characters",
        {"operation": "😀" * 100},
        {"operation": "😀" * 100, "octet_length(operation)": 400},
    ),
    Accepted(
        "10 MB payload",
        {"result_payload": TEN_MB},
        {"length(result_payload)": len(TEN_MB), "md5(result_payload)": hashlib.md5(TEN_MB.encode()).hexdigest()},
    ),
    Accepted("status_code of 2^31 - 1", {"status_code": 2**31 - 1}, {"status_code": 2**31 - 1}),
    Accepted("status_code of -2^31", {"status_code": -(2**31)}, {"status_code": -(2**31)}),
    Accepted("NULL status_code", {"status_code": None}, {"status_code": None}),
    # A float is sent as float8 and the assignment cast to integer rounds it.
    Accepted("float status_code is rounded", {"status_code": 200.5}, {"status_code": 200}),
    # bytes are sent as bytea, and the assignment cast to text stores its hex form.
    Accepted("bytes payload is stored as bytea text", {"result_payload": b"\x01\x02"}, {"result_payload": "\\x0102"}),
    Accepted("expiry at +05:45", {"expires_at": "2030-06-15 12:00+05:45"}, {"expires_at": utc(2030, 6, 15, 6, 15)}),
    Accepted("expiry at -12:00", {"expires_at": "2030-06-15 12:00-12:00"}, {"expires_at": utc(2030, 6, 16, 0, 0)}),
    # Local times that do not exist (spring forward) or exist twice (fall back) are
    # read as standard time, as the PostgreSQL manual (B.2) says.
    Accepted(
        "expiry in the spring-forward gap",
        {"expires_at": "2030-03-31 02:30 Europe/Berlin"},
        {"expires_at": utc(2030, 3, 31, 1, 30)},
    ),
    Accepted(
        "expiry in the fall-back overlap",
        {"expires_at": "2030-10-27 02:30 Europe/Berlin"},
        {"expires_at": utc(2030, 10, 27, 1, 30)},
    ),
    Accepted(
        "expiry just before a DST change",
        {"expires_at": "2030-03-10 01:59:59.999999 America/New_York"},
        {"expires_at": utc(2030, 3, 10, 6, 59, 59, 999999)},
    ),
    Accepted("expiry at 24:00", {"expires_at": "2030-01-01 24:00:00+00"}, {"expires_at": utc(2030, 1, 2)}),
    # 'infinity' never expires: neither the get query nor cleanup ever drops it.
    # psycopg cannot load it into a datetime, so it is read back as a comparison.
    Accepted("infinity expiry", {"expires_at": "infinity"}, {"expires_at = 'infinity'": True}),
    # created_at is the caller's to set; a future one is stored as given while
    # expires_at is later (the get query only looks at expires_at).
    Accepted(
        "created_at in the future",
        {"created_at": "2100-01-01T00:00:00Z", "expires_at": "2100-01-02T00:00:00Z"},
        {"created_at": utc(2100, 1, 1), "expires_at > now()": True},
    ),
    Accepted(
        "SQL injection in every text column",
        {"operation": INJECTIONS[0], "result_payload": " ".join(INJECTIONS)},
        {"operation": INJECTIONS[0], "result_payload": " ".join(INJECTIONS)},
    ),
    Accepted(
        "uuid in braces",
        {"request_id": "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"},
        {"request_id::text": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
    ),
    Accepted(
        "uuid in upper case without hyphens",
        {"request_id": "A0EEBC999C0B4EF8BB6D6BB9BD380A11"},
        {"request_id::text": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
    ),
    Accepted(
        "nil uuid",
        {"request_id": "00000000-0000-0000-0000-000000000000"},
        {"request_id::text": "00000000-0000-0000-0000-000000000000"},
    ),
]


@pytest.mark.parametrize("case", ACCEPTED, ids=[c.name for c in ACCEPTED])
def test_odd_but_valid_input_is_stored_as_meant(one_record: psycopg.Connection, case: Accepted) -> None:
    figures.add("bad_input_classes")
    figures.add("operations", 2)
    values = {**GOOD, **case.changes}
    returned = one_record.execute(INSERT + " RETURNING request_id", values).fetchone()
    assert returned is not None
    assert count(one_record) == 2, f"{case.name}: the record is stored beside the existing one"
    expressions = sql.SQL(", ").join(sql.SQL(expression) for expression in case.expected)  # fixed expressions
    row = one_record.execute(
        sql.SQL("SELECT {} FROM idempotency_records WHERE request_id = %s").format(expressions), returned
    ).fetchone()
    assert row is not None
    for (expression, expected), got in zip(case.expected.items(), row, strict=True):
        assert got == expected, f"{case.name}: {expression} read back as {got!r:.80}, expected {expected!r:.80}"


def test_the_injection_attempts_left_the_table_intact(one_record: psycopg.Connection) -> None:
    for text in INJECTIONS:
        one_record.execute(INSERT, {**GOOD, "request_id": uuid.uuid5(uuid.NAMESPACE_OID, text), "operation": text})
    stored = one_record.execute("SELECT operation FROM idempotency_records WHERE operation <> 'payment'").fetchall()
    assert sorted(row[0] for row in stored) == sorted(INJECTIONS), "each attempt is stored verbatim as data"
    assert count(one_record) == 1 + len(INJECTIONS), "nothing was dropped, deleted or truncated"


def test_a_nul_byte_in_a_python_string_is_refused_before_it_is_sent(one_record: psycopg.Connection) -> None:
    """psycopg refuses it client side (DataError, no SQLSTATE): the server never sees it."""
    with pytest.raises(psycopg.DataError) as raised:
        one_record.execute(INSERT, {**GOOD, "result_payload": "a\x00b"})
    assert raised.value.sqlstate is None, f"the refusal comes from psycopg, not the server: {raised.value}"
    assert "NUL" in str(raised.value)
    assert count(one_record) == 1, "nothing was written"


def test_a_nul_byte_in_a_text_format_parameter_is_cut_off_by_libpq(one_record: psycopg.Connection) -> None:
    """A client that sends text-format parameters itself loses everything after a NUL:
    libpq passes them as C strings. Why the binary Raw dumper is used for the 22021 cases."""

    class RawTextFormat(Raw):
        pass

    class RawTextFormatDumper(RawTextDumper):
        format = Format.TEXT

    one_record.adapters.register_dumper(RawTextFormat, RawTextFormatDumper)
    one_record.execute(INSERT, {**GOOD, "result_payload": RawTextFormat(b"before\x00after")})
    stored = one_record.execute(
        "SELECT result_payload FROM idempotency_records WHERE request_id = %s", (GOOD["request_id"],)
    )
    assert stored.fetchone() == ("before",), "the server stored only the text before the NUL byte"
