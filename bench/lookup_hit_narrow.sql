-- The hit lookup returning only what a duplicate is answered with (the guide's
-- form): the same index path as lookup_hit.sql, a narrower row to send back.
-- tests/test_bench.py fails if it and the guide's duplicate check differ.
\set i random(:expired + 1, :size)
SELECT result_payload, status_code
FROM idempotency_records
WHERE request_id = md5(:i::text)::uuid
  AND expires_at > now();
