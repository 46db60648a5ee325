-- Duplicate-detection lookup of a key that was never stored (a first request).
\set i random(:size + 1, 2 * :size)
\set k :key_base + (:i * :key_step) % :key_modulus
SELECT request_id, operation, result_payload, status_code, created_at, expires_at
FROM idempotency_records
WHERE request_id = (:prefix || :k)::uuid AND expires_at > now();
