-- One bounded batch of the cleanup: the DELETE of the guide's Patterns, recipe 4, as
-- printed there. The driver runs it with its own batch size in place of LIMIT 1000.
-- tests/performance/test_bench.py fails if this copy and the guide's recipe differ.
DELETE FROM idempotency_records
WHERE
    ctid = ANY (ARRAY(
        SELECT ctid
        FROM idempotency_records
        WHERE expires_at <= now()
        ORDER BY expires_at
        LIMIT 1000
        FOR UPDATE SKIP LOCKED
    ))
    AND expires_at <= now()
