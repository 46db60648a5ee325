"""The statements an application runs against the table, as the tests run them: the report's
repository queries (the naive versions), the guide's check for a duplicate, the recipes of the
guide's "Patterns" section, insert-or-read (Reliability) and the partitioning example.

Each is written here once, with psycopg named placeholders (tooling.records.save_params fills a
save's). The docs show the same text with literal values: tests/recipes/test_patterns_in_docs.py
renders every recipe with the literals the page uses and checks the page contains it character for
character, so the SQL the tests prove and the SQL users copy cannot drift apart.
"""

from __future__ import annotations

import re
import textwrap

# The report's repository queries (IdempotencyRepository::get and ::save), the naive versions the
# recipes improve on, with named placeholders for its $1..$5 (tooling.records.save_params fills
# them); in REPORT_SAVE the fifth is the TTL in hours.
REPORT_GET = """\
SELECT request_id, operation, result_payload, status_code, created_at, expires_at
FROM idempotency_records
WHERE request_id = %(request_id)s AND expires_at > now()"""

REPORT_SAVE = """\
INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, expires_at)
VALUES (%(request_id)s, %(operation)s, %(result_payload)s, %(status_code)s, now() + INTERVAL '1 hour' * %(ttl_hours)s)
ON CONFLICT (request_id) DO UPDATE SET
    operation = EXCLUDED.operation,
    result_payload = EXCLUDED.result_payload,
    status_code = EXCLUDED.status_code,
    expires_at = EXCLUDED.expires_at"""

# The guide's check for a duplicate (Usage), the narrow form: only a valid record counts.
DUPLICATE_CHECK = """\
SELECT result_payload, status_code
FROM idempotency_records
WHERE request_id = %(request_id)s
  AND expires_at > now()"""

# The claim's conflict clause: take an expired record over with a whole new lifetime
# (created_at too); leave a valid one as it is (ON CONFLICT DO UPDATE still locks it).
TAKE_OVER_EXPIRED = """\
ON CONFLICT (request_id) DO UPDATE SET
    operation = EXCLUDED.operation,
    result_payload = EXCLUDED.result_payload,
    status_code = EXCLUDED.status_code,
    created_at = EXCLUDED.created_at,
    expires_at = EXCLUDED.expires_at
WHERE idempotency_records.expires_at <= now()
"""

# Recipes 1, 3 and 5: claim the key first, in the business transaction. Inserts a
# placeholder record, or takes over an expired one with a fresh lifetime (created_at
# too); returns a row only to the request that now owns the key. The lifetime
# depends on the operation. The operation is TEXT until it is stored: an explicit
# ::VARCHAR(100) cast would cut a longer one silently, where storing refuses it (22001).
CLAIM = (
    """\
INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, expires_at)
SELECT
    request.request_id,
    request.operation,
    '{}',
    NULL,
    now() + CASE
        WHEN request.operation IN ('payment', 'transfer') THEN INTERVAL '72 hours'
        WHEN request.operation IN ('login', 'auth') THEN INTERVAL '1 hour'
        ELSE INTERVAL '24 hours'
    END
FROM (VALUES (%(request_id)s::UUID, %(operation)s::TEXT)) AS request (request_id, operation)
"""
    + TAKE_OVER_EXPIRED
    + "RETURNING request_id"
)

# Recipe 1, owner's side: store the real result before the transaction commits.
RECORD_RESULT = """\
UPDATE idempotency_records
SET result_payload = %(result_payload)s, status_code = %(status_code)s
WHERE request_id = %(request_id)s"""

# Recipe 1, duplicate's side (and recipe 3: only records still valid are replayed).
LOOKUP = """\
SELECT operation, result_payload, status_code
FROM idempotency_records
WHERE request_id = %(request_id)s
  AND expires_at > now()"""

# Recipe 1, "409 while in progress": the first statement of the transaction.
TRY_LOCK = """\
SELECT pg_try_advisory_xact_lock(hashtextextended(%(request_id)s::UUID::TEXT, 0::BIGINT)) AS acquired"""

# Recipe 2: the report's save, refused when the key belongs to another operation.
GUARDED_SAVE = (
    REPORT_SAVE
    + """
WHERE idempotency_records.operation::TEXT = EXCLUDED.operation::TEXT
RETURNING request_id"""
)

# Recipe 4: batches committed one by one inside a DO block, on the server alone.
BATCH_SIZE = 1000
CLEANUP_LOOP = """\
DO $cleanup$
DECLARE
    batch_deleted BIGINT;
BEGIN
    LOOP
        DELETE FROM idempotency_records
        WHERE
            ctid = ANY (ARRAY(
                SELECT ctid
                FROM idempotency_records
                WHERE expires_at <= now()
                ORDER BY expires_at
                LIMIT 1000
                FOR UPDATE SKIP LOCKED
            ))
            AND expires_at <= now();
        GET DIAGNOSTICS batch_deleted = ROW_COUNT;
        COMMIT;
        EXIT WHEN batch_deleted < 1000;
    END LOOP;
END
$cleanup$"""

# Recipe 4, one batch: the loop's DELETE run alone, its own transaction in autocommit.
CLEANUP_BATCH = textwrap.dedent(
    CLEANUP_LOOP[CLEANUP_LOOP.index("        DELETE") : CLEANUP_LOOP.index(";\n        GET DIAGNOSTICS")]
)

# Reliability, insert-or-read: store this request's result unless a valid record holds the
# key; an expired record is taken over (a fresh lifetime, created_at too). Step 1 returns a
# row only when it stored this request's result; step 2, in the same transaction, reads the
# valid record that holds the key (step 1 locked it). Neither ever returns an expired record.
INSERT_OR_READ_STORE = (
    """\
INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, expires_at)
VALUES (%(request_id)s, %(operation)s, %(result_payload)s, %(status_code)s, now() + INTERVAL '24 hours')
"""
    + TAKE_OVER_EXPIRED
    + "RETURNING result_payload, status_code"
)

INSERT_OR_READ_READ = DUPLICATE_CHECK  # only a valid record

# The same in one statement: DO UPDATE acts on the latest committed row, keeps a valid one
# as it is and replaces an expired one; stored_now says which.
INSERT_OR_READ_ONE_STATEMENT = """\
INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, expires_at)
VALUES (%(request_id)s, %(operation)s, %(result_payload)s, %(status_code)s, now() + INTERVAL '24 hours')
ON CONFLICT (request_id) DO UPDATE SET
    operation = CASE WHEN idempotency_records.expires_at <= now()
        THEN EXCLUDED.operation ELSE idempotency_records.operation END,
    result_payload = CASE WHEN idempotency_records.expires_at <= now()
        THEN EXCLUDED.result_payload ELSE idempotency_records.result_payload END,
    status_code = CASE WHEN idempotency_records.expires_at <= now()
        THEN EXCLUDED.status_code ELSE idempotency_records.status_code END,
    created_at = CASE WHEN idempotency_records.expires_at <= now()
        THEN EXCLUDED.created_at ELSE idempotency_records.created_at END,
    expires_at = CASE WHEN idempotency_records.expires_at <= now()
        THEN EXCLUDED.expires_at ELSE idempotency_records.expires_at END
RETURNING result_payload, status_code, created_at = now() AS stored_now"""

# What the guide printed before, for the tests that show how it fails: a no-op update that
# returns whatever is stored, an expired record included.
INSERT_OR_READ_NO_OP_UPDATE = """\
INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, expires_at)
VALUES (%(request_id)s, %(operation)s, %(result_payload)s, %(status_code)s, now() + INTERVAL '24 hours')
ON CONFLICT (request_id) DO UPDATE SET request_id = idempotency_records.request_id
RETURNING result_payload, status_code, (xmax = 0) AS inserted_now"""


# Scaling past one server: the docs' example, verbatim, of time-based partitions with the store's
# primary key (PostgreSQL refuses it: tests/recipes/test_partitioning.py).
RANGE_WITH_KEY_PK = """\
CREATE TABLE idempotency_records_by_expiry (
    request_id UUID PRIMARY KEY,
    operation VARCHAR(100) NOT NULL,
    result_payload TEXT NOT NULL,
    status_code INTEGER,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL
) PARTITION BY RANGE (expires_at)"""


PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def render(query: str, **literals: str) -> str:
    """The recipe as the guide prints it: every placeholder replaced by the SQL
    literal text given for it. Only compared with the guide, never executed."""
    missing = set(PLACEHOLDER.findall(query)) - literals.keys()
    assert not missing, f"no literal given for {sorted(missing)}"
    return PLACEHOLDER.sub(lambda match: literals[match.group(1)], query)
