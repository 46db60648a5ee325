-- Save of an existing key: the repository's upsert, taking the UPDATE branch.
-- The guide's save (The repository's queries) with a 24-hour TTL; tests/performance/test_bench.py
-- fails if the two differ.
\set i random(1, :size)
\set k :key_base + (:i * :key_step) % :key_modulus
INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, expires_at)
VALUES ((:prefix || :k)::uuid, 'payment', :payload, 201, now() + INTERVAL '1 hour' * 24)
ON CONFLICT (request_id) DO UPDATE SET
    operation = EXCLUDED.operation,
    result_payload = EXCLUDED.result_payload,
    status_code = EXCLUDED.status_code,
    expires_at = EXCLUDED.expires_at;
