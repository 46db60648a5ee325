-- Duplicate-detection lookup of a key whose record has expired but is not yet
-- cleaned up: found through the primary key, then rejected by the expiry filter.
\set i random(1, :expired)
SELECT request_id, operation, result_payload, status_code, created_at, expires_at
FROM idempotency_records
WHERE request_id = md5(:i::text)::uuid AND expires_at > now();
