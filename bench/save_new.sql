-- Save of a new key: the repository's upsert, taking the INSERT branch.
-- The guide's save (The repository's queries) with a 24-hour TTL; tests/performance/test_bench.py
-- fails if the two differ.
-- New keys as random (v4) UUIDs are: scattered over the whole key space among the loaded
-- keys, so that each insert lands on any leaf page of the primary key. Rows above 2 * :size
-- are neither loaded nor looked up as misses, so a new key never meets a loaded one.
-- The key is bound by the client.
\set i random(2 * :size + 1, :max_row)
\set k :key_base + (:i * :key_step) % :key_modulus
INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, expires_at)
VALUES ((:prefix || :k)::uuid, 'payment', :payload, 201, now() + INTERVAL '1 hour' * 24)
ON CONFLICT (request_id) DO UPDATE SET
    operation = EXCLUDED.operation,
    result_payload = EXCLUDED.result_payload,
    status_code = EXCLUDED.status_code,
    expires_at = EXCLUDED.expires_at;
