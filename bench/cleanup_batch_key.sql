-- One bounded batch of the cleanup written the other way, the measured alternative to the
-- guide's batch: the same oldest-first selection locked with SKIP LOCKED, deleted by
-- request_id (one descent of the primary key per row) instead of by ctid. The driver
-- runs it with its own batch size in place of LIMIT 1000.
DELETE FROM idempotency_records
WHERE request_id = ANY (ARRAY(
    SELECT request_id
    FROM idempotency_records
    WHERE expires_at <= now()
    ORDER BY expires_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
))
