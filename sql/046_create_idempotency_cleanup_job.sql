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
    locked_rows TID[];
    rows_deleted BIGINT;
BEGIN
    -- 1. Lock the expired rows that no other transaction holds, and skip those
    --    it does (a request taking its key over, another cleanup): this never
    --    waits on a row lock, so whatever plan it runs with, it cannot be one
    --    side of a deadlock, and a skipped row is left for the next run. FOR
    --    UPDATE checks expires_at again on the latest version of each row.
    SELECT array_agg(expired.ctid)
    INTO locked_rows
    FROM (
        SELECT ctid
        FROM idempotency_records
        WHERE expires_at <= now()
        FOR UPDATE SKIP LOCKED
    ) AS expired;

    -- 2. Delete exactly those rows, by their physical address: a row this
    --    transaction has locked cannot move. EXECUTE plans the DELETE anew with
    --    the array's real length, so it is a TID scan whatever plan step 1 had
    --    cached; a cached plan made on a small table could otherwise search the
    --    whole array once per row.
    EXECUTE 'DELETE FROM idempotency_records WHERE ctid = ANY($1)'
    USING locked_rows;

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
