-- 046_create_idempotency_cleanup_job.sql
--
-- Creates the function cleanup_expired_idempotency_records(), which deletes
-- the idempotency records whose expires_at is at or before now(), skipping any
-- that another transaction holds (left for the next run: it never waits on a
-- row lock), and returns the number of rows it deleted as one row,
-- deleted_count. It runs with its caller's privileges: a caller without UPDATE
-- on any column of the table (one set up for the original function, with
-- SELECT and DELETE) cannot lock rows, and deletes every expired record as the
-- original did, waiting for those others hold, with a NOTICE naming the grant.
-- It runs only under READ COMMITTED and fails at once under another isolation
-- level. It schedules nothing: see docs/README_IDEMPOTENCY.md for pg_cron and
-- application-level scheduling.
-- Reverse:  046_create_idempotency_cleanup_job.down.sql
-- Requires: 045_create_idempotency_records.sql, applied with the same search_path.
-- Apply:    psql -v ON_ERROR_STOP=1 --no-psqlrc -1 -f sql/046_create_idempotency_cleanup_job.sql
--
-- Re-runnable by design (CREATE OR REPLACE, COMMENT ON, ALTER ... SET): pipelines
-- re-apply files, and a run cut off part way completes when applied again.
-- No BEGIN/COMMIT and no psql meta-commands, so any migration runner can wrap it.
--
-- The blocks follow the three rules numbered in 045's header: one deployer at a
-- time (the advisory lock 7594306390479384566, a wait bounded by lock_timeout,
-- SQLSTATE 55P03 naming the pid waited for, then the catalog read afresh; 40001
-- under REPEATABLE READ when it changed during the wait); a refused check stops
-- the rest, also under plain psql -f (the session setting
-- idempotency.pending_guard, which the first statement sets and the check clears
-- when it passes; so the statements run in one session, in order); another
-- role's code never runs here (each block runs under search_path pg_catalog,
-- pg_temp, switching to the caller's only for what must see it). The
-- function's body, run under its pinned search_path, calls only built-ins whose
-- argument types match exactly, or qualified with pg_catalog.

-- The check below has not passed yet in this session (045's rule 2). A refusal
-- that another file left pending in this session stops this file too.
DO $begin$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    pending TEXT;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    pending := coalesce(current_setting('idempotency.pending_guard', TRUE), '');
    IF pending <> '' AND split_part(pending, ' ', 1) <> '046_create_idempotency_cleanup_job.sql' THEN
        RAISE EXCEPTION '046_create_idempotency_cleanup_job.sql stopped: % did not pass its checks earlier in this session',
        split_part(pending, ' ', 1)
        USING
            ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('found: idempotency.pending_guard = %L; expected: %L', pending, ''),
            HINT = 'Nothing of this file was applied. Fix what the first error names, then apply the files again.';
    END IF;
    PERFORM set_config('idempotency.pending_guard', '046_create_idempotency_cleanup_job.sql guard', FALSE);
    PERFORM set_config('search_path', saved_path, TRUE);
END
$begin$;

-- Guard: the function deletes from the idempotency_records of this schema with
-- the rights of whoever calls it (a superuser, for a pg_cron job). Refuse to
-- create it where that table is absent (every call would fail with 42P01), in a
-- temporary schema, beside an install in another schema of the search_path, or
-- where the table is not the one 045 makes: another persistence, owned by
-- another role, or carrying a trigger or rule that the caller would run. 045
-- names any other difference. Refuse to keep, replace or sit beside a function
-- of this name that another role owns: its owner could change its body, and the
-- next call by a superuser would run it. It takes no lock here, it only reads
-- the catalog.
DO $guard$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    target CONSTANT TEXT := pg_catalog.current_schema();
    resolved REGCLASS;
    resolved_function REGPROCEDURE;
    tbl REGCLASS;
    fn REGPROCEDURE;
    -- what the unqualified names reach, schema-qualified
    visible TEXT;
    visible_function TEXT;
    found_state TEXT;
    wanted_state CONSTANT TEXT := 'permanent table, owner is the migration role, 0 triggers, 0 rules, '
    || 'expires_at timestamp with time zone';
    foreign_function RECORD;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    -- Rule 1: take turns with any other deployer, waiting at most lock_timeout.
    IF current_setting('lock_timeout') IN ('0', '0ms') THEN
        PERFORM set_config('lock_timeout', '2s', TRUE);
    END IF;
    BEGIN
        PERFORM pg_advisory_xact_lock(7594306390479384566);
    EXCEPTION WHEN lock_not_available THEN
        RAISE EXCEPTION 'timed out waiting for another deployer of idempotency_records'
        USING
            ERRCODE = 'lock_not_available',
            DETAIL = format('found: advisory lock 7594306390479384566 held by pid %s past lock_timeout %s; '
                || 'expected: free', (
                    SELECT string_agg(l.pid::TEXT, ', ') FROM pg_locks AS l
                    WHERE l.locktype = 'advisory' AND l.classid = 1768187245 AND l.objid = 45046 AND l.granted
                ), current_setting('lock_timeout')),
            HINT = 'Nothing more was applied. Apply the file again once that deploy has ended, or with a '
            || 'longer lock_timeout.';
    END;
    PERFORM FROM pg_seclabel WHERE FALSE;
    -- Rule 2: only in its turn among the checks.
    IF current_setting('idempotency.pending_guard', TRUE)
        IS DISTINCT FROM '046_create_idempotency_cleanup_job.sql guard' THEN
        RAISE EXCEPTION '046_create_idempotency_cleanup_job.sql stopped: a check before this statement did not pass'
        USING
            ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('found: idempotency.pending_guard = %L; expected: %L',
                current_setting('idempotency.pending_guard', TRUE), '046_create_idempotency_cleanup_job.sql guard'),
            HINT = 'Nothing more was applied. Fix what the first error names, then apply the files again.';
    END IF;

    -- What the unqualified names reach now that no other deployer runs, under the
    -- caller's path.
    PERFORM set_config('search_path', saved_path, TRUE);
    resolved := pg_catalog.to_regclass('idempotency_records');
    resolved_function := pg_catalog.to_regprocedure('cleanup_expired_idempotency_records()');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    tbl := to_regclass(format('%I.idempotency_records', target));
    fn := to_regprocedure(format('%I.cleanup_expired_idempotency_records()', target));
    SELECT format('%s.%I', c.relnamespace::REGNAMESPACE, c.relname)
    INTO visible
    FROM pg_class AS c
    WHERE c.oid = resolved;
    SELECT format('%s.%I()', p.pronamespace::REGNAMESPACE, p.proname)
    INTO visible_function
    FROM pg_proc AS p
    WHERE p.oid = resolved_function;
    -- 045's rule 1, under REPEATABLE READ or SERIALIZABLE: the snapshot shows them.
    IF (resolved IS NOT NULL AND visible IS NULL) OR (resolved_function IS NOT NULL AND visible_function IS NULL)
        OR (fn IS NOT NULL AND NOT EXISTS (SELECT FROM pg_proc AS p WHERE p.oid = fn::OID)) THEN
        RAISE EXCEPTION 'idempotency_records or its cleanup function changed after this transaction''s snapshot'
        USING
            ERRCODE = 'serialization_failure',
            DETAIL = format(
                'found: transaction_isolation %s, and the table or the function changed by another session after '
                || 'the snapshot; expected: a snapshot that shows them', current_setting('transaction_isolation')
            ),
            HINT = 'Nothing was applied: apply the file again, or under READ COMMITTED '
            || '(PGOPTIONS=''-c default_transaction_isolation=read\ committed'').';
    END IF;

    IF target ~ '^pg_(toast_)?temp_' OR visible ~ '^pg_(toast_)?temp_' THEN
        RAISE EXCEPTION 'idempotency_records does not resolve to a table in a permanent schema'
        USING
            ERRCODE = 'invalid_schema_name',
            DETAIL = format('found: current schema %s, idempotency_records resolves to %s; expected: %s',
                target, coalesce(visible, 'nothing'),
                'the table 045 created in the first schema of the search_path'),
            HINT = 'Apply 046 with the same search_path as 045, without pg_temp first and without a temporary '
            || 'table of that name.';
    END IF;
    IF tbl IS NULL AND visible IS NOT NULL THEN
        RAISE EXCEPTION 'idempotency_records is installed in another schema than %', target
        USING
            ERRCODE = 'invalid_schema_name',
            DETAIL = format(
                'found: %s, while the function would be created in schema %s, the first of the search_path; '
                || 'expected: idempotency_records in schema %s', visible, target, target
            ),
            HINT = format(
                'Apply 046 with the search_path of the install (PGOPTIONS=''-c search_path=%s''), '
                || 'or drop or rename schema %I if it was created by mistake.',
                (SELECT c.relnamespace::REGNAMESPACE::TEXT FROM pg_class AS c WHERE c.oid = resolved), target
            );
    END IF;
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table %.idempotency_records does not exist', target
        USING
            ERRCODE = 'undefined_table',
            DETAIL = format('found: no relation %I.idempotency_records; expected: the table 045 creates',
                target),
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
        RAISE EXCEPTION 'table %.idempotency_records is not the table 045 creates', target
        USING
            ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('found: %s; expected: %s', found_state, wanted_state),
            HINT = 'Apply 045 again as the role that owns the table: it names every difference and repairs what '
            || 'it safely can.';
    END IF;

    IF fn IS NULL AND resolved_function IS NOT NULL THEN
        RAISE EXCEPTION 'cleanup_expired_idempotency_records() is installed in another schema than %', target
        USING
            ERRCODE = 'duplicate_function',
            DETAIL = format(
                'found: %s, while the search_path would create a second one in schema %s; expected: the function '
                || 'in schema %s, or in no schema of the search_path', visible_function, target, target
            ),
            HINT = 'Apply 046 with the search_path of the install, or drop the function of the other schema '
            || '(its 046.down) if it is left over.';
    END IF;
    -- Every function of this name in the schema (an overload with defaults would
    -- also answer a call without arguments) belongs to the migration role.
    FOR foreign_function IN
        SELECT
            p.oid::REGPROCEDURE AS signature,
            pg_get_userbyid(p.proowner) AS owner
        FROM pg_proc AS p
        WHERE
            p.proname = 'cleanup_expired_idempotency_records'
            AND p.pronamespace = to_regnamespace(quote_ident(target))::OID
            AND p.proowner IS DISTINCT FROM (SELECT r.oid FROM pg_roles AS r WHERE r.rolname = current_user)
        ORDER BY 1
    LOOP
        RAISE EXCEPTION 'function % is owned by another role', foreign_function.signature
        USING
            ERRCODE = 'insufficient_privilege',
            DETAIL = format('found: owner %s; expected: owner %s (the role applying 046)',
                foreign_function.owner, current_user),
            HINT = format('Its owner can change its body, which runs with the rights of every caller. Check it '
                || '(body, SECURITY DEFINER, settings), then drop it (DROP FUNCTION %s) or run ALTER FUNCTION '
                || '... OWNER TO the migration role, and apply 046 again.', foreign_function.signature);
    END LOOP;
    PERFORM set_config('idempotency.pending_guard', '', FALSE);
    PERFORM set_config('search_path', saved_path, TRUE);
END
$guard$;

-- The function, its comment and its pinned search_path, in one statement: the
-- three are there together or not at all, with or without -1.
DO $create$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    target CONSTANT TEXT := pg_catalog.current_schema();
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    -- Rule 1: take turns with any other deployer, waiting at most lock_timeout.
    IF current_setting('lock_timeout') IN ('0', '0ms') THEN
        PERFORM set_config('lock_timeout', '2s', TRUE);
    END IF;
    BEGIN
        PERFORM pg_advisory_xact_lock(7594306390479384566);
    EXCEPTION WHEN lock_not_available THEN
        RAISE EXCEPTION 'timed out waiting for another deployer of idempotency_records'
        USING
            ERRCODE = 'lock_not_available',
            DETAIL = format('found: advisory lock 7594306390479384566 held by pid %s past lock_timeout %s; '
                || 'expected: free', (
                    SELECT string_agg(l.pid::TEXT, ', ') FROM pg_locks AS l
                    WHERE l.locktype = 'advisory' AND l.classid = 1768187245 AND l.objid = 45046 AND l.granted
                ), current_setting('lock_timeout')),
            HINT = 'Nothing more was applied. Apply the file again once that deploy has ended, or with a '
            || 'longer lock_timeout.';
    END;
    PERFORM FROM pg_seclabel WHERE FALSE;
    -- Rule 2: only once every check before this statement has passed.
    IF current_setting('idempotency.pending_guard', TRUE) IS DISTINCT FROM '' THEN
        RAISE EXCEPTION '046_create_idempotency_cleanup_job.sql stopped: a check before this statement did not pass'
        USING
            ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('found: idempotency.pending_guard = %L; expected: %L',
                current_setting('idempotency.pending_guard', TRUE), ''),
            HINT = 'Nothing more was applied. Fix what the first error names, then apply the files again.';
    END IF;

    -- Under the caller's search_path, which decides the schema (as for 045's table).
    -- The body is written from the first column: it is stored as written.
    PERFORM set_config('search_path', saved_path, TRUE);
    CREATE OR REPLACE FUNCTION cleanup_expired_idempotency_records()
    RETURNS TABLE (deleted_count BIGINT)
    LANGUAGE plpgsql
    AS $body$
DECLARE
    locked_rows TID[];
    rows_deleted BIGINT;
BEGIN
    -- 1. Only under READ COMMITTED, where each statement reads the rows
    --    committed before it. Under REPEATABLE READ or SERIALIZABLE the whole
    --    transaction reads one snapshot, and an expired row that another
    --    transaction changed or deleted after it cannot be locked or deleted
    --    (SQLSTATE 40001): with saves going on, nearly every call would fail
    --    that way while expired records pile up. Fail at once instead, saying
    --    how to call it. A caller that wants exactly the snapshot's expired
    --    records, and a 40001 if one of them changed since (the verification
    --    script, so that it never locks a record written during its run), says
    --    so with SET LOCAL idempotency.cleanup_in_snapshot = on.
    IF pg_catalog.current_setting('transaction_isolation') <> 'read committed'
        AND pg_catalog.current_setting('idempotency.cleanup_in_snapshot', TRUE) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'cleanup_expired_idempotency_records() runs only under READ COMMITTED'
        USING
            ERRCODE = 'invalid_transaction_state',
            DETAIL = 'found: transaction_isolation ' || pg_catalog.current_setting('transaction_isolation')
            || '; expected: read committed. Nothing was deleted.',
            HINT = 'Call it in a READ COMMITTED transaction. For a pg_cron job, or any role whose database '
            || 'defaults to another level: ALTER ROLE the_role SET default_transaction_isolation = '
            || '''read committed''. In an application loop: run the call in its own transaction at READ '
            || 'COMMITTED (BEGIN ISOLATION LEVEL READ COMMITTED, or the driver''s isolation level setting).';
    END IF;

    -- 2. A caller without UPDATE on any column of the table (a role granted
    --    SELECT and DELETE for the original function) cannot lock rows with
    --    FOR UPDATE: it deletes as the original function did, waiting for
    --    the rows other transactions hold, and a NOTICE names the grant that
    --    lets it skip them instead.
    IF NOT pg_catalog.has_any_column_privilege('idempotency_records', 'UPDATE') THEN
        RAISE NOTICE 'role % has no UPDATE privilege on idempotency_records: the cleanup waits for the records '
        'other transactions hold', current_user
        USING
            HINT = 'To skip them instead, so that it never waits on a row lock: GRANT UPDATE (expires_at) ON ' || (
                SELECT pg_catalog.quote_ident(n.nspname)
                FROM pg_catalog.pg_namespace AS n
                INNER JOIN pg_catalog.pg_class AS c ON n.oid = c.relnamespace
                WHERE c.oid = 'idempotency_records'::pg_catalog.regclass::pg_catalog.oid
            ) || '.idempotency_records TO ' || pg_catalog.quote_ident(current_user) || ';';
        DELETE FROM ONLY idempotency_records
        WHERE expires_at <= now();
        GET DIAGNOSTICS rows_deleted = ROW_COUNT;
        RETURN QUERY SELECT rows_deleted;
        RETURN;
    END IF;

    -- 3. Lock the expired rows that no other transaction holds, and skip those
    --    it does (a request taking its key over, another cleanup): this never
    --    waits on a row lock, so whatever plan it runs with, it cannot be one
    --    side of a deadlock, and a skipped row is left for the next run. FOR
    --    UPDATE checks expires_at again on the latest version of each row.
    --    array_agg is qualified: the built-in is polymorphic, so an
    --    array_agg(tid) of another role in this schema would be preferred.
    SELECT pg_catalog.array_agg(expired.ctid)
    INTO locked_rows
    FROM (
        SELECT ctid
        FROM ONLY idempotency_records
        WHERE expires_at <= now()
        FOR UPDATE SKIP LOCKED
    ) AS expired;

    -- 4. Delete exactly those rows, by their physical address: a row this
    --    transaction has locked cannot move. EXECUTE plans the DELETE anew with
    --    the array's real length, so it is a TID scan whatever plan step 3 had
    --    cached; a cached plan made on a small table could otherwise search the
    --    whole array once per row. ONLY, here and above: a ctid names a row
    --    of this table alone, and a child table's rows have ctids of their own.
    EXECUTE 'DELETE FROM ONLY idempotency_records WHERE ctid = ANY($1)'
    USING locked_rows;

    GET DIAGNOSTICS rows_deleted = ROW_COUNT;
    RETURN QUERY SELECT rows_deleted;
END;
$body$;

    COMMENT ON FUNCTION cleanup_expired_idempotency_records() IS
    'Deletes the idempotency records with expires_at <= now() that no other transaction holds, and returns how many it deleted (deleted_count). It never waits on a row lock: a record another transaction has locked (a request taking its key over, a concurrent cleanup) is skipped and left for the next run, so the function cannot deadlock with other cleanups or with the application, and the application never waits for it except on a record it has already locked. Every other record expired and committed before the call is deleted; a valid record never is. Runs with its caller''s privileges (SECURITY INVOKER): SELECT and DELETE on the table, and UPDATE on one of its columns to lock rows. A caller without UPDATE (the original function''s grants) deletes every expired record as the original did, waiting for those other transactions hold, and gets a NOTICE naming the grant. Runs only under READ COMMITTED: under REPEATABLE READ or SERIALIZABLE it fails at once (SQLSTATE 25000) and deletes nothing, unless the transaction sets idempotency.cleanup_in_snapshot = on to delete exactly the expired records of its snapshot. Schedule it hourly, from the application or with pg_cron.';
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);

    -- Pin the function's search_path to the schema it was created in (the first
    -- schema of the current search_path, where 045 created the table), with
    -- pg_catalog first and pg_temp last: it then deletes from this schema's table
    -- whatever search_path its caller has, and a temporary table of the same name
    -- cannot stand in for it. With pg_temp first on the search_path the function
    -- went to the temporary schema instead: the ALTER then fails and undoes it.
    EXECUTE format(
        'ALTER FUNCTION %1$I.cleanup_expired_idempotency_records() '
        'SET search_path = pg_catalog, %1$I, pg_temp',
        target
    );
    PERFORM set_config('search_path', saved_path, TRUE);
END
$create$;
