-- 046_create_idempotency_cleanup_job.sql
--
-- Creates the function cleanup_expired_idempotency_records(), which deletes
-- every idempotency record whose expires_at is at or before now() and returns
-- the number of rows it deleted as one row, deleted_count. It schedules
-- nothing: see docs/README_IDEMPOTENCY.md for pg_cron and application-level
-- scheduling.
-- Reverse:  046_create_idempotency_cleanup_job.down.sql
-- Requires: 045_create_idempotency_records.sql, applied with the same search_path.
-- Apply:    psql -v ON_ERROR_STOP=1 --no-psqlrc -1 -f sql/046_create_idempotency_cleanup_job.sql
--
-- Re-runnable by design (CREATE OR REPLACE, COMMENT ON, ALTER ... SET): pipelines
-- re-apply files, and a run cut off part way completes when applied again.
-- No BEGIN/COMMIT and no psql meta-commands, so any migration runner can wrap it.

CREATE OR REPLACE FUNCTION cleanup_expired_idempotency_records()
RETURNS TABLE (deleted_count BIGINT)
LANGUAGE plpgsql
AS $function$
DECLARE
    rows_deleted BIGINT;
BEGIN
    -- Lock the expired rows that no other transaction holds, skipping those it
    -- does (a request taking its key over, another cleanup): this statement
    -- never waits on a row lock, so whatever plan it runs with it cannot be one
    -- side of a deadlock, and a skipped row is left for the next run. Then
    -- delete exactly the rows it locked, by their physical address (a locked
    -- row cannot move), with expires_at checked again.
    DELETE FROM idempotency_records AS expired
    WHERE
        expired.ctid = ANY(ARRAY(
            SELECT locked.ctid
            FROM idempotency_records AS locked
            WHERE locked.expires_at <= now()
            FOR UPDATE SKIP LOCKED
        ))
        AND expired.expires_at <= now();

    GET DIAGNOSTICS rows_deleted = ROW_COUNT;
    RETURN QUERY SELECT rows_deleted;
END;
$function$;

COMMENT ON FUNCTION cleanup_expired_idempotency_records() IS
'Deletes the idempotency records with expires_at <= now() that no other transaction holds, and returns how many it deleted (deleted_count). It never waits on a row lock: a record another transaction has locked (a request taking its key over, a concurrent cleanup) is skipped and left for the next run, so the function cannot deadlock with other cleanups or with the application, and the application never waits for it except on a record it has already locked. Every other record expired and committed before the call is deleted; a valid record never is. Runs with its caller''s privileges (SECURITY INVOKER). Schedule it hourly, from the application or with pg_cron.';

-- Pin the function's search_path to the schema it was created in (the first
-- schema of the current search_path, where 045 created the table), with
-- pg_catalog first and pg_temp last: it then deletes from this schema's table
-- whatever search_path its caller has, and a temporary table of the same name
-- cannot stand in for it. The schema name is only known when the file runs,
-- hence EXECUTE.
DO $pin$
BEGIN
    EXECUTE format(
        'ALTER FUNCTION %1$I.cleanup_expired_idempotency_records() '
        'SET search_path = pg_catalog, %1$I, pg_temp',
        current_schema()
    );
END
$pin$;
