-- 046_create_idempotency_cleanup_job.sql
--
-- Creates the function cleanup_expired_idempotency_records(): it deletes the
-- idempotency records whose expires_at is at or before now(), skipping those
-- another transaction holds (it never waits on a row lock), and returns how
-- many it deleted, deleted_count. It runs with its caller's privileges, and
-- only under READ COMMITTED. It schedules nothing: docs/README_IDEMPOTENCY.md
-- shows pg_cron and application-level scheduling.
-- Reverse:  046_create_idempotency_cleanup_job.down.sql
-- Requires: 045_create_idempotency_records.sql, with the same search_path.
-- Apply:    psql -v ON_ERROR_STOP=1 --no-psqlrc -1
--           -f sql/046_create_idempotency_cleanup_job.sql
--
-- Re-runnable by design (CREATE OR REPLACE): pipelines apply files again.
-- Two statements, under the three rules of docs/reliability.md, "How the
-- files are built". The body, run under its pinned search_path, calls only
-- built-ins whose argument types match exactly, or qualified with pg_catalog.

-- 1. Marks this file's checks as not passed in this session (rule 2).
DO $mark$
DECLARE
    this_file CONSTANT TEXT := '046_create_idempotency_cleanup_job.sql';
    pending CONSTANT TEXT := pg_catalog.split_part(
        pg_catalog.current_setting('idempotency.pending_guard', TRUE), ' ', 1);
BEGIN
    IF pending OPERATOR(pg_catalog.<>) ALL (ARRAY['', this_file]) THEN
        RAISE EXCEPTION '% stopped: % did not pass its checks earlier in this '
        'session', this_file, pending
        USING ERRCODE = '55000', DETAIL = pg_catalog.format('found: '
            'idempotency.pending_guard = %L; expected: %L', pending, ''),
        HINT = 'Nothing was applied. Fix what the first error names, then '
        'apply the files again.';
    END IF;
    PERFORM pg_catalog.set_config('idempotency.pending_guard', this_file,
        FALSE);
END
$mark$;

-- 2. The lock and the checks, then the function, its comment and its pinned
-- search_path: one statement, so the three are there together or not at all.
DO $migrate$
DECLARE
    this_file CONSTANT TEXT := '046_create_idempotency_cleanup_job.sql';
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    target CONSTANT TEXT := pg_catalog.current_schema();
    resolved REGCLASS;
    resolved_function REGPROCEDURE;
    tbl REGCLASS;
    fn REGPROCEDURE;
    visible TEXT;
    visible_function TEXT;
    state TEXT;
    wanted_state CONSTANT TEXT := 'permanent table, owner is the migration '
    'role, 0 triggers, 0 rules, 0 policies, row security off, 0 foreign keys '
    'to it, no TRIGGER or REFERENCES held by other roles, expires_at '
    'timestamp with time zone';
    foreign_function RECORD;
    refused RECORD;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    -- One deployer at a time, waiting at most lock_timeout (rule 1).
    IF current_setting('lock_timeout') IN ('0', '0ms') THEN
        PERFORM set_config('lock_timeout', '2s', TRUE);
    END IF;
    BEGIN
        PERFORM pg_advisory_xact_lock(7594306390479384566);
    EXCEPTION WHEN lock_not_available THEN
        RAISE EXCEPTION 'timed out waiting for another deployer of '
        'idempotency_records'
        USING ERRCODE = '55P03', DETAIL = format('found: advisory lock '
            '7594306390479384566 held by pid %s past lock_timeout %s; '
            'expected: free', (SELECT string_agg(l.pid::TEXT, ', ')
                FROM pg_locks AS l WHERE l.locktype = 'advisory'
                    AND (l.classid, l.objid) = (1768187245, 45046)
                    AND l.granted), current_setting('lock_timeout')),
        HINT = 'Nothing was applied. Apply the file again once that deploy '
        'has ended, or with a longer lock_timeout.';
    END;
    PERFORM FROM pg_seclabel WHERE FALSE;
    -- Only after statement 1, which nothing refused (rule 2).
    IF current_setting('idempotency.pending_guard', TRUE)
        IS DISTINCT FROM this_file THEN
        RAISE EXCEPTION '% stopped: a check before this statement did not '
        'pass', this_file
        USING ERRCODE = '55000', DETAIL = format('found: '
            'idempotency.pending_guard = %L; expected: %L',
            current_setting('idempotency.pending_guard', TRUE), this_file),
        HINT = 'Nothing was applied. Fix what the first error names, then '
        'apply the files again.';
    END IF;

    -- What the unqualified names reach, under the caller's search_path.
    PERFORM set_config('search_path', saved_path, TRUE);
    resolved := pg_catalog.to_regclass('idempotency_records');
    resolved_function := pg_catalog.to_regprocedure(
        'cleanup_expired_idempotency_records()');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    tbl := to_regclass(format('%I.idempotency_records', target));
    fn := to_regprocedure(format('%I.cleanup_expired_idempotency_records()',
        target));
    SELECT format('%s.%I', c.relnamespace::REGNAMESPACE, c.relname)
    INTO visible FROM pg_class AS c WHERE c.oid = resolved;
    SELECT format('%s.%I()', p.pronamespace::REGNAMESPACE, p.proname)
    INTO visible_function FROM pg_proc AS p WHERE p.oid = resolved_function;

    -- The table 045 makes, as far as the function's callers are concerned:
    -- nothing on it that would run code as the caller (a trigger, a rule, a
    -- policy, a trigger another role may add) or hide, keep or cascade
    -- records (row security, a foreign key to it).
    SELECT format('%s, %s, %s triggers, %s rules, %s policies, row security '
        '%s, %s foreign keys to it, %s held by other roles, expires_at %s',
        CASE WHEN (c.relkind, c.relpersistence) = ('r', 'p')
            THEN 'permanent table' ELSE format('relkind %s relpersistence %s',
                c.relkind, c.relpersistence) END,
        CASE WHEN pg_get_userbyid(c.relowner) = current_user
            THEN 'owner is the migration role' ELSE format('owner %s, not %s',
                pg_get_userbyid(c.relowner), current_user) END,
        (SELECT count(*) FROM pg_trigger AS t WHERE t.tgrelid = tbl
            AND NOT t.tgisinternal),
        (SELECT count(*) FROM pg_rewrite AS r WHERE r.ev_class = tbl),
        (SELECT count(*) FROM pg_policy AS p WHERE p.polrelid = tbl),
        CASE WHEN c.relrowsecurity OR c.relforcerowsecurity THEN 'on'
            ELSE 'off' END,
        (SELECT count(*) FROM pg_constraint AS k
            WHERE k.contype = 'f' AND k.confrelid = tbl),
        coalesce((SELECT string_agg(DISTINCT g.privilege_type, ' and ')
            FROM aclexplode(c.relacl) AS g WHERE g.grantee <> c.relowner
                AND g.privilege_type IN ('TRIGGER', 'REFERENCES')),
            'no TRIGGER or REFERENCES'),
        coalesce((SELECT format_type(a.atttypid, a.atttypmod)
            FROM pg_attribute AS a WHERE a.attrelid = tbl
                AND a.attname = 'expires_at' AND NOT a.attisdropped),
            'missing'))
    INTO state FROM pg_class AS c WHERE c.oid = tbl;
    -- Functions of this name in this schema that another role owns (an
    -- overload with defaults also answers a call without arguments): the
    -- owner could change the body, and the next call by a superuser would
    -- run it.
    SELECT
        p.oid::REGPROCEDURE AS signature,
        pg_get_userbyid(p.proowner) AS owner
    INTO foreign_function FROM pg_proc AS p
    WHERE p.proname = 'cleanup_expired_idempotency_records'
        AND p.pronamespace = to_regnamespace(quote_ident(target))
        AND pg_get_userbyid(p.proowner) <> current_user
    ORDER BY 1 LIMIT 1;

    -- The checks, in order: the first that fails stops the file.
    SELECT v.* INTO refused FROM (VALUES
        -- Under REPEATABLE READ or SERIALIZABLE, a snapshot taken before the
        -- wait for the lock misses what the previous deployer did.
        (1, resolved IS NOT NULL AND visible IS NULL
            OR resolved_function IS NOT NULL AND visible_function IS NULL
            OR fn IS NOT NULL AND NOT EXISTS (SELECT FROM pg_proc AS p
                WHERE p.oid = fn), '40001',
            'idempotency_records or its cleanup function changed after this '
            'transaction''s snapshot', format('transaction_isolation %s, and '
                'the table or the function changed by another session after '
                'the snapshot', current_setting('transaction_isolation')),
            'a snapshot that shows them', 'Nothing was applied: apply the '
            'file again, or under READ COMMITTED (PGOPTIONS=''-c '
            'default_transaction_isolation=read\ committed'').'),
        -- The function deletes from this schema's idempotency_records, with
        -- the rights of whoever calls it (a superuser, for a pg_cron job):
        -- not in a temporary schema, nor beside an install in another schema
        -- of the search_path, nor where the table is absent (every call
        -- would fail with 42P01), nor on a table that is not 045's.
        (2, concat(target, ' ', visible) ~ '(^| )pg_(toast_)?temp_', '3F000',
            'idempotency_records does not resolve to a table in a permanent '
            'schema', format('current schema %s, idempotency_records '
                'resolves to %s', target, coalesce(visible, 'nothing')),
            'the table 045 created in the first schema of the search_path',
            'Apply 046 with the same search_path as 045, without pg_temp '
            'first and without a temporary table of that name.'),
        (3, tbl IS NULL AND visible IS NOT NULL, '3F000',
            format('idempotency_records is installed in another schema than '
                '%s', target),
            format('%s, while the function would be created in schema %s, '
                'the first of the search_path', visible, target),
            format('idempotency_records in schema %s', target),
            format('Apply 046 with the search_path of the install '
                '(PGOPTIONS=''-c search_path=%s''), or drop or rename schema '
                '%I if it was created by mistake.',
                regexp_replace(visible, '\.idempotency_records$', ''), target)),
        (4, tbl IS NULL, '42P01',
            format('table %s.idempotency_records does not exist', target),
            format('no relation %I.idempotency_records', target),
            'the table 045 creates', 'Apply '
            '045_create_idempotency_records.sql first, with the same '
            'search_path.'),
        (5, state IS DISTINCT FROM wanted_state, '55000',
            format('table %s.idempotency_records is not the table 045 '
                'creates', target), state, wanted_state,
            'Apply 045 again as the role that owns the table: it names every '
            'difference and repairs what it safely can.'),
        (6, fn IS NULL AND resolved_function IS NOT NULL, '42723',
            format('cleanup_expired_idempotency_records() is installed in '
                'another schema than %s', target),
            format('%s, while the search_path would create a second one in '
                'schema %s', visible_function, target),
            format('the function in schema %s, or in no schema of the '
                'search_path', target), 'Apply 046 with the search_path of '
            'the install, or drop the function of the other schema (its '
            '046.down) if it is left over.'),
        (7, foreign_function.signature IS NOT NULL, '42501',
            format('function %s is owned by another role',
                foreign_function.signature),
            'owner ' || foreign_function.owner,
            format('owner %s (the role applying 046)', current_user),
            format('Its owner can change its body, which runs with the rights '
                'of every caller. Check it (body, SECURITY DEFINER, settings), '
                'then DROP FUNCTION %s or ALTER FUNCTION ... OWNER TO the '
                'migration role, and apply 046 again.',
                foreign_function.signature))
    ) AS v (n, failed, code, message, found, expected, hint)
    WHERE v.failed ORDER BY v.n LIMIT 1;
    IF FOUND THEN
        RAISE USING MESSAGE = refused.message, ERRCODE = refused.code,
        DETAIL = format('found: %s; expected: %s', refused.found,
            refused.expected), HINT = refused.hint;
    END IF;

    -- Under the caller's search_path, which decides the schema (as for 045's
    -- table). The body is written from the first column: it is stored as
    -- written.
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
        'Deletes the idempotency records with expires_at <= now() that no '
        'other transaction holds, and returns how many it deleted '
        '(deleted_count). It never waits on a row lock: a record another '
        'transaction has locked (a request taking its key over, a concurrent '
        'cleanup) is skipped and left for the next run, so the function cannot '
        'deadlock with other cleanups or with the application, and the '
        'application never waits for it except on a record it has already '
        'locked. Every other record expired and committed before the call is '
        'deleted; a valid record never is. Runs with its caller''s privileges '
        '(SECURITY INVOKER): SELECT and DELETE on the table, and UPDATE on one '
        'of its columns to lock rows. A caller without UPDATE (the original '
        'function''s grants) deletes every expired record as the original did, '
        'waiting for those other transactions hold, and gets a NOTICE naming '
        'the grant. Runs only under READ COMMITTED: under REPEATABLE READ or '
        'SERIALIZABLE it fails at once (SQLSTATE 25000) and deletes nothing, '
        'unless the transaction sets idempotency.cleanup_in_snapshot = on to '
        'delete exactly the expired records of its snapshot. Schedule it '
        'hourly, from the application or with pg_cron.';
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);

    -- Pin the function's search_path to the schema it was created in (where
    -- 045 created the table), pg_catalog first and pg_temp last: it then
    -- deletes from this schema's table whatever search_path its caller has,
    -- and no temporary table can stand in for it. Where pg_temp was first on
    -- the search_path, the function went to the temporary schema: the ALTER
    -- fails and undoes it.
    EXECUTE format('ALTER FUNCTION %1$I.cleanup_expired_idempotency_records() '
        'SET search_path = pg_catalog, %1$I, pg_temp', target);
    PERFORM set_config('idempotency.pending_guard', '', FALSE);
    PERFORM set_config('search_path', saved_path, TRUE);
END
$migrate$;
