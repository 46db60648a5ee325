-- Loads rows first..last as completed records of the protocol (migration 047): operation
-- payment, the request digest :hash, no lease, live for 24 hours from `now`; keys as the
-- pgbench scripts bind them (bench/config.py, KEY_PREFIX), results of `payload` bytes.
-- Run by bench/protocol.py with psycopg named parameters (a percent sign is doubled).
INSERT INTO idempotency_records (
    request_id, operation, result_payload, status_code, created_at, expires_at, request_hash, lease_token
)
SELECT (%(prefix)s || (%(key_base)s::bigint + (i * %(key_step)s::bigint) %% %(key_modulus)s::bigint)::text)::uuid,
       'payment',
       '{"d":"' || left(repeat(md5(i::text), (%(payload)s + 31) / 32), %(payload)s - 8) || '"}',
       201,
       %(now)s::timestamptz - INTERVAL '1 hour',
       %(now)s::timestamptz + INTERVAL '23 hours',
       %(hash)s::bytea,
       NULL
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i
