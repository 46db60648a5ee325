-- Save of an existing key: the repository's upsert, taking the UPDATE branch.
\set k random(1, :size)
INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, expires_at)
VALUES (md5(:k::text)::uuid, 'payment', :payload, 201, now() + INTERVAL '24 hours')
ON CONFLICT (request_id) DO UPDATE SET
    operation = excluded.operation,
    result_payload = excluded.result_payload,
    status_code = excluded.status_code,
    expires_at = excluded.expires_at;
