-- One bounded batch of the cleanup, the measured alternative to the guide's batch:
-- the same oldest-first selection locked with SKIP LOCKED (it never waits on a row an
-- application holds, so it cannot deadlock with it), deleted by physical address (a TID
-- scan instead of a second descent of the primary key per row), with expires_at
-- checked again on the row the DELETE finds. The driver runs it with its own batch
-- size in place of LIMIT 1000.
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
