-- The cleanup anchor: the design report's original body of
-- cleanup_expired_idempotency_records(), one DELETE of every expired row, kept here
-- unchanged under a name of the benchmark's own, so that every run measures the
-- installed function against it. Created only in the benchmark's scratch database,
-- in the schema of the table it cleans (the first schema of search_path), and pinned
-- to that schema as the installed function is.
CREATE OR REPLACE FUNCTION bench_cleanup_anchor()
RETURNS TABLE (deleted_count BIGINT)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $function$
DECLARE
    rows_deleted BIGINT;
BEGIN
    DELETE FROM idempotency_records
    WHERE expires_at <= now();

    GET DIAGNOSTICS rows_deleted = ROW_COUNT;
    RETURN QUERY SELECT rows_deleted;
END;
$function$
