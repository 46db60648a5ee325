-- The protocol's path for a new key (migration 047): a claim, then the completion with the
-- claim's token and the result, each statement its own transaction (pgbench runs them in
-- autocommit), as docs/protocol.md says to call them. Measured against the report's single
-- save of a new key (save.sql with :keys 2) on the same table. Keys are drawn as save.sql
-- draws a new one; the rare key drawn twice in a run is replayed, not claimed, and then not
-- completed.
-- :hash is the request's digest, :payload the result.
\set i random(2 * :size + 1, :max_row)
\set k :key_base + (:i * :key_step) % :key_modulus
SELECT token, (outcome = 'claimed')::INTEGER AS claimed
FROM idempotency_claim((:prefix || :k)::uuid, 'payment'::VARCHAR, :hash::BYTEA, INTERVAL '30 seconds')
\gset
\if :claimed
SELECT idempotency_complete((:prefix || :k)::uuid, :token::UUID, :payload::TEXT, 201, INTERVAL '24 hours');
\endif
