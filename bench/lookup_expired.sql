-- Duplicate-detection lookup of a key whose record has expired but is not yet
-- cleaned up: found through the primary key, then rejected by the expiry filter.
\set i random(1, :expired)
\set k :key_base + (:i * :key_step) % :key_modulus
SELECT request_id, operation, result_payload, status_code, created_at, expires_at
FROM idempotency_records
WHERE request_id = (:prefix || :k)::uuid AND expires_at > now();
