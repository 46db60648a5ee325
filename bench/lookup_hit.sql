-- Duplicate-detection lookup that finds a live record: the repository's get().
-- Row i's key is bound by the client (bench/config.py, KEY_PREFIX); rows 1..:expired
-- have expired, the rest are live.
-- The guide's get (The repository's queries); tests/performance/test_bench.py fails if they differ.
\set i random(:expired + 1, :size)
\set k :key_base + (:i * :key_step) % :key_modulus
SELECT request_id, operation, result_payload, status_code, created_at, expires_at
FROM idempotency_records
WHERE request_id = (:prefix || :k)::uuid AND expires_at > now();
