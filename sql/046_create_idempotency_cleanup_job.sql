-- 046_create_idempotency_cleanup_job.sql
--
-- Creates the function cleanup_expired_idempotency_records(), which deletes
-- the idempotency records whose expires_at is at or before now(), skipping any
-- that another transaction holds (left for the next run: it never waits on a
-- row lock), and returns the number of rows it deleted as one row,
-- deleted_count. It schedules nothing: see docs/README_IDEMPOTENCY.md for
-- pg_cron and application-level scheduling.
-- Reverse:  046_create_idempotency_cleanup_job.down.sql
-- Requires: 045_create_idempotency_records.sql, applied with the same search_path.
-- Apply:    psql -v ON_ERROR_STOP=1 --no-psqlrc -1 -f sql/046_create_idempotency_cleanup_job.sql
--
-- Re-runnable by design (CREATE OR REPLACE, COMMENT ON, ALTER ... SET): pipelines
-- re-apply files, and a run cut off part way completes when applied again.
-- No BEGIN/COMMIT and no psql meta-commands, so any migration runner can wrap it.

-- Guard: the function deletes from the idempotency_records of this schema with
-- the rights of whoever calls it (a superuser, for a pg_cron job). Refuse to
-- create it where that table is absent (every call would fail with 42P01), in a
-- temporary schema, or not the table 045 makes: another persistence, owned by
-- another role, or carrying a trigger or rule that the caller would run. 045
-- names any other difference; it takes no lock here, it only reads the catalog.
DO $guard$
DECLARE
    tbl CONSTANT REGCLASS := to_regclass(format('%I.idempotency_records', current_schema()));
    -- what the unqualified name reaches, schema-qualified
    visible CONSTANT TEXT := (
        SELECT format('%s.%I', c.relnamespace::REGNAMESPACE, c.relname)
        FROM pg_catalog.pg_class AS c
        WHERE c.oid = to_regclass('idempotency_records')
    );
    found_state TEXT;
    wanted_state CONSTANT TEXT := 'permanent table, owner is the migration role, 0 triggers, 0 rules, '
    || 'expires_at timestamp with time zone';
BEGIN
    IF current_schema() ~ '^pg_(toast_)?temp_' OR to_regclass('idempotency_records') IS DISTINCT FROM tbl THEN
        RAISE EXCEPTION 'idempotency_records does not resolve to a table in a permanent schema'
        USING
            ERRCODE = 'invalid_schema_name',
            DETAIL = format('found: current schema %s, idempotency_records resolves to %s; expected: %s',
                current_schema(), coalesce(visible, 'nothing'),
                'the table 045 created in the first schema of the search_path'),
            HINT = 'Apply 046 with the same search_path as 045, without pg_temp first and without a temporary '
            || 'table of that name.';
    END IF;
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table %.idempotency_records does not exist', current_schema()
        USING
            ERRCODE = 'undefined_table',
            DETAIL = format('found: no relation %I.idempotency_records; expected: the table 045 creates',
                current_schema()),
            HINT = 'Apply 045_create_idempotency_records.sql first, with the same search_path.';
    END IF;

    SELECT
        format(
            '%s, %s, %s triggers, %s rules, expires_at %s',
            CASE
                WHEN c.relkind = 'r' AND c.relpersistence = 'p' THEN 'permanent table'
                ELSE format('relkind %s relpersistence %s', c.relkind, c.relpersistence)
            END,
            CASE
                WHEN c.relowner = current_user::REGROLE THEN 'owner is the migration role'
                ELSE format('owner %s, not %s', pg_get_userbyid(c.relowner), current_user)
            END,
            (SELECT count(*) FROM pg_catalog.pg_trigger AS t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal),
            (SELECT count(*) FROM pg_catalog.pg_rewrite AS r WHERE r.ev_class = c.oid),
            coalesce(
                (
                    SELECT format_type(a.atttypid, a.atttypmod)
                    FROM pg_catalog.pg_attribute AS a
                    WHERE a.attrelid = c.oid AND a.attname = 'expires_at' AND NOT a.attisdropped
                ),
                'missing'
            )
        )
    INTO found_state
    FROM pg_catalog.pg_class AS c
    WHERE c.oid = tbl;
    IF found_state IS DISTINCT FROM wanted_state THEN
        RAISE EXCEPTION 'table %.idempotency_records is not the table 045 creates', current_schema()
        USING
            ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('found: %s; expected: %s', found_state, wanted_state),
            HINT = 'Apply 045 again as the role that owns the table: it names every difference and repairs what '
            || 'it safely can.';
    END IF;
END
$guard$;

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
