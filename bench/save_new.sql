-- Save of a new key: the repository's upsert, taking the INSERT branch.
-- The guide's save (The repository's queries) with a 24-hour TTL; tests/test_bench.py
-- fails if the two differ.
-- New keys: 16 random digits after a prefix of their own (:new_prefix), bound by the
-- client; they never collide with the loaded rows' keys.
\set k random(1000000000000000, 9999999999999999)
INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, expires_at)
VALUES ((:new_prefix || :k)::uuid, 'payment', :payload, 201, now() + INTERVAL '1 hour' * 24)
ON CONFLICT (request_id) DO UPDATE SET
    operation = EXCLUDED.operation,
    result_payload = EXCLUDED.result_payload,
    status_code = EXCLUDED.status_code,
    expires_at = EXCLUDED.expires_at;
