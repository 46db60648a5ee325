-- The protocol's path for a retry of a completed request (migration 047): a claim that finds
-- the key's result and replays it. Measured against the plain lookup (lookup_hit_narrow.sql)
-- on the same table, every row of which is a completed record of this operation and :hash.
\set i random(1, :size)
\set k :key_base + (:i * :key_step) % :key_modulus
SELECT outcome, result_payload, status_code
FROM idempotency_claim((:prefix || :k)::uuid, 'payment'::VARCHAR, :hash::BYTEA, INTERVAL '30 seconds');
