-- Save of a new, time-ordered key (as UUIDv7 keys are): the repository's upsert, taking
-- the INSERT branch, each client's keys increasing from one save to the next and all of
-- them above every loaded key, so that every insert lands at the right edge of the
-- primary key, where a v7 key made now lands. Against save_new.sql, whose random keys
-- (as UUIDv4 keys are) land anywhere in the index. The key is bound by the client.
\set n :n + 1
\set k :key_base + :n * 1000 + :client_id
INSERT INTO idempotency_records (request_id, operation, result_payload, status_code, expires_at)
VALUES ((:v7_prefix || :k)::uuid, 'payment', :payload, 201, now() + INTERVAL '1 hour' * 24)
ON CONFLICT (request_id) DO UPDATE SET
    operation = EXCLUDED.operation,
    result_payload = EXCLUDED.result_payload,
    status_code = EXCLUDED.status_code,
    expires_at = EXCLUDED.expires_at;
