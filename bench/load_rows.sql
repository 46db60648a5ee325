-- Loads rows first..last of a table of `total` rows, in time order: rows 1..expired
-- expired within the last 48 hours, the others live for up to 22 more hours. Row i's
-- key is the UUID the pgbench scripts bind for it (bench/config.py, KEY_PREFIX): keys
-- are scattered, as random UUIDs are, while rows arrive in time order. result_payload
-- is a JSON text of `payload` bytes: md5 digits (incompressible) or, with `kind` json,
-- repeated words as an application's JSON compresses. Stamps are relative to `now`, so
-- that a reload of the expired rows matches the rest.
-- Run by bench/database.py with psycopg named parameters (a percent sign is doubled).
INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, created_at, expires_at)
SELECT (%(prefix)s || (%(key_base)s::bigint + (i * %(key_step)s::bigint) %% %(key_modulus)s::bigint)::text)::uuid,
       (ARRAY['payment', 'transfer', 'refund', 'login'])[1 + i %% 4],
       payload.body,
       200,
       stamp.created_at,
       stamp.created_at + INTERVAL '24 hours'
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i
CROSS JOIN LATERAL (
    SELECT CASE
        WHEN i <= %(expired)s
            THEN %(now)s::timestamptz - INTERVAL '48 hours' + INTERVAL '23 hours' * i / greatest(%(expired)s, 1)
        ELSE %(now)s::timestamptz - INTERVAL '23 hours'
            + INTERVAL '22 hours' * (i - %(expired)s) / greatest(%(total)s - %(expired)s, 1)
    END AS created_at
) AS stamp
CROSS JOIN LATERAL (
    SELECT '{"d":"' || left(
        CASE %(kind)s
            WHEN 'json' THEN repeat('status=captured;currency=EUR;amount=' || i %% 1000 || ';', %(payload)s / 16 + 1)
            ELSE string_agg(md5(i::text || ':' || k::text), '' ORDER BY k)
        END,
        %(payload)s - 8
    ) || '"}' AS body
    FROM generate_series(1, (%(payload)s + 31) / 32) AS k
) AS payload
