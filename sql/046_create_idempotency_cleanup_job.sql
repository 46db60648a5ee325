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
    DELETE FROM idempotency_records
    WHERE expires_at <= now();

    GET DIAGNOSTICS rows_deleted = ROW_COUNT;
    RETURN QUERY SELECT rows_deleted;
END;
$function$;

COMMENT ON FUNCTION cleanup_expired_idempotency_records() IS
'Deletes every idempotency record with expires_at <= now() and returns how many it deleted (deleted_count). Schedule it hourly, from the application or with pg_cron.';

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
