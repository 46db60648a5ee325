-- The hit lookup returning only what a duplicate is answered with (the guide's
-- form): the same index path as lookup_hit.sql, a narrower row to send back.
-- tests/performance/test_bench.py fails if it and the guide's duplicate check differ.
\set i random(:expired + 1, :size)
\set k :key_base + (:i * :key_step) % :key_modulus
SELECT result_payload, status_code
FROM idempotency_records
WHERE request_id = (:prefix || :k)::uuid
  AND expires_at > now();
