-- The repository's save: the guide's upsert (The repository's queries) with a 24-hour TTL;
-- tests/performance/test_bench.py fails if the two differ. :keys picks the key each save
-- binds (the client binds it, as the application does):
--   1  an existing key, so the upsert takes its UPDATE branch;
--   2  a new key, random as UUIDv4 keys are: scattered over the whole key space among the
--      loaded keys, so each insert lands on any leaf page of the primary key; rows above
--      2 * :size are neither loaded nor looked up as misses, so it never meets a loaded key;
--   3  a new key, time-ordered as UUIDv7 keys are: each client's keys increase from one
--      save to the next, all above every loaded key (the run's :prefix is above them), so
--      every insert lands at the right edge of the primary key, where a v7 key made now does.
\if :keys = 1
\set i random(1, :size)
\set k :key_base + (:i * :key_step) % :key_modulus
\elif :keys = 2
\set i random(2 * :size + 1, :max_row)
\set k :key_base + (:i * :key_step) % :key_modulus
\else
\set n :n + 1
\set k :key_base + :n * 1000 + :client_id
\endif
INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, expires_at)
VALUES ((:prefix || :k)::uuid, 'payment', :payload, 201, now() + INTERVAL '1 hour' * 24)
ON CONFLICT (request_id) DO UPDATE SET
    operation = EXCLUDED.operation,
    result_payload = EXCLUDED.result_payload,
    status_code = EXCLUDED.status_code,
    expires_at = EXCLUDED.expires_at;
