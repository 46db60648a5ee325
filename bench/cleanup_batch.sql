-- One bounded batch of the cleanup: the DELETE of the guide's Patterns, recipe 4, as
-- printed there. The driver runs it with its own batch size in place of LIMIT 1000.
-- The tests build the recipe from this file (tests/statements.py), and
-- tests/recipes/test_patterns_in_docs.py fails if the guide prints another.
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
