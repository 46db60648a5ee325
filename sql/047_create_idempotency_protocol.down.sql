-- 047_create_idempotency_protocol.down.sql
--
-- Removes what 047_create_idempotency_protocol.sql created, in reverse order:
-- the functions idempotency_key(), idempotency_release(), idempotency_complete()
-- and idempotency_claim(), then the columns lease_token and request_hash of
-- idempotency_records. Every record stays. A record still in progress keeps
-- status_code 409 and the in-progress problem document until its expires_at (the
-- end of its lease): the repository's get answers 409 for it until then, and
-- the cleanup deletes it after. The stored request hashes and lease tokens are
-- discarded with their columns.
-- Reverse of: 047_create_idempotency_protocol.sql
-- Apply:      psql -v ON_ERROR_STOP=1 --no-psqlrc -1 -f sql/047_create_idempotency_protocol.down.sql
-- Apply it before 046_create_idempotency_cleanup_job.down.sql and
-- 045_create_idempotency_records.down.sql.
--
-- Re-runnable by design (DROP ... IF EXISTS, a column dropped only where it
-- exists): running it twice, or where 047 or 045 never ran, succeeds, changes
-- nothing and takes no lock on the table. No CASCADE: if another object depends
-- on a column (a view, an index), the drop stops with an error naming it.
--
-- Dropping a column takes an ACCESS EXCLUSIVE lock on the table until the commit,
-- and changes the catalog only: PostgreSQL marks the column dropped (no rewrite);
-- the bytes stay in the rows until they are next written, and the column's
-- number is not reused (a table has at most 1600, dropped ones included).

-- The lock the drops take waits a bounded time. The deployer's own lock_timeout
-- wins; this sets one, for this file's transaction only, where none is set.
DO $timeout$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    IF current_setting('lock_timeout') IN ('0', '0ms') THEN
        PERFORM set_config('lock_timeout', '2s', TRUE);
    END IF;
    PERFORM set_config('search_path', saved_path, TRUE);
END
$timeout$;

DROP FUNCTION IF EXISTS idempotency_key(TEXT, TEXT);

DROP FUNCTION IF EXISTS idempotency_release(UUID, UUID);

DROP FUNCTION IF EXISTS idempotency_complete(UUID, UUID, TEXT, INTEGER, INTERVAL);

DROP FUNCTION IF EXISTS idempotency_claim(UUID, VARCHAR, BYTEA, INTERVAL);

-- The columns of the table in this schema (the first of the search_path, where
-- 045 and 047 created and changed it), each dropped only where it exists: ALTER
-- TABLE ... DROP COLUMN IF EXISTS would take the ACCESS EXCLUSIVE lock first.
DO $columns$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    target CONSTANT TEXT := pg_catalog.current_schema();
    tbl REGCLASS;
    dropped RECORD;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    tbl := to_regclass(format('%I.idempotency_records', target));
    FOR dropped IN
        SELECT v.col
        FROM (VALUES (1, 'lease_token'), (2, 'request_hash')) AS v (position, col)
        WHERE EXISTS (
            SELECT
            FROM pg_catalog.pg_attribute AS a
            WHERE a.attrelid = tbl AND a.attname = v.col AND NOT a.attisdropped
        )
        ORDER BY v.position
    LOOP
        EXECUTE format('ALTER TABLE %I.idempotency_records DROP COLUMN %I', target, dropped.col);
    END LOOP;
    PERFORM set_config('search_path', saved_path, TRUE);
END
$columns$;
