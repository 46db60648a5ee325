-- Save of a new key: the repository's upsert, taking the INSERT branch.
-- Keys from 10^12 up never collide with the loaded rows (1..:size).
\set k random(1000000000000, 9000000000000000000)
INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, expires_at)
VALUES (md5(:k::text)::uuid, 'payment', :payload, 201, now() + INTERVAL '24 hours')
ON CONFLICT (request_id) DO UPDATE SET
    operation = excluded.operation,
    result_payload = excluded.result_payload,
    status_code = excluded.status_code,
    expires_at = excluded.expires_at;
