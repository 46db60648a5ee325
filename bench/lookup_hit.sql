-- Duplicate-detection lookup that finds a live record: the repository's get().
-- Keys are md5(i::text)::uuid; rows 1..:expired have expired, the rest are live.
-- The guide's get (The repository's queries); tests/test_bench.py fails if they differ.
\set i random(:expired + 1, :size)
SELECT request_id, operation, result_payload, status_code, created_at, expires_at
FROM idempotency_records
WHERE request_id = md5(:i::text)::uuid AND expires_at > now();
