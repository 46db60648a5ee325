-- 047_create_idempotency_protocol.down.sql
--
-- Removes what 047_create_idempotency_protocol.sql created, in reverse order:
-- the functions idempotency_key(), idempotency_release(),
-- idempotency_complete() and idempotency_claim() that the search_path
-- reaches, then the columns lease_token and request_hash of the table
-- idempotency_records it reaches. Every record stays: a key still in
-- progress keeps its 409 until its lease ends (docs/protocol.md, "Rolling
-- back").
-- Reverse of: 047_create_idempotency_protocol.sql
-- Run it before 046's and 045's down files.
-- Apply:   PGOPTIONS='-c lock_timeout=2s' psql -v ON_ERROR_STOP=1 \
--          --no-psqlrc -1 -f sql/047_create_idempotency_protocol.down.sql
--
-- It refuses a temporary table of that name. A column of those names with
-- another definition (another type, NOT NULL, a default) is not 047's: it
-- stays. Re-runnable by design: where nothing is left to remove, it changes
-- nothing and takes no lock on the table. No CASCADE: an object that depends
-- on a column (a view, an index) stops it with an error naming that object.
-- Two statements, under the three rules of docs/reliability.md, "How the
-- files are built".

-- 1. Marks this file's checks as not passed in this session (rule 2).
DO $mark$
DECLARE
    this_file CONSTANT TEXT := '047_create_idempotency_protocol.down.sql';
    pending CONSTANT TEXT := pg_catalog.split_part(
        pg_catalog.current_setting('idempotency.pending_guard', TRUE), ' ', 1);
BEGIN
    IF pending OPERATOR(pg_catalog.<>) ALL (ARRAY['', this_file]) THEN
        RAISE EXCEPTION '% stopped: % did not pass its checks earlier in this '
        'session', this_file, pending
        USING ERRCODE = '55000', DETAIL = pg_catalog.format('found: '
            'idempotency.pending_guard = %L; expected: %L', pending, ''),
        HINT = 'Nothing was removed. Fix what the first error names, then '
        'apply the files again.';
    END IF;
    PERFORM pg_catalog.set_config('idempotency.pending_guard', this_file,
        FALSE);
END
$mark$;

-- 2. The lock, the checks, then the functions and the columns are dropped:
-- one statement, so that none goes without the others.
DO $drop$
DECLARE
    this_file CONSTANT TEXT := '047_create_idempotency_protocol.down.sql';
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    -- In reverse order of creation.
    signatures CONSTANT TEXT [] := ARRAY['idempotency_key(text, text)',
        'idempotency_release(uuid, uuid)',
        'idempotency_complete(uuid, uuid, text, integer, interval)',
        'idempotency_claim(uuid, character varying, bytea, interval)'];
    resolved REGCLASS;
    functions REGPROCEDURE [];
    rel RECORD;
    fn REGPROCEDURE;
    col TEXT;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    -- One deployer at a time (rule 1). Every lock waits at most
    -- lock_timeout: the session's, else 2s, set here for this transaction.
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
        HINT = 'Nothing was removed. Apply the file again once that deploy '
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
        HINT = 'Nothing was removed. Fix what the first error names, then '
        'apply the files again.';
    END IF;

    -- What the unqualified names reach, under the caller's search_path.
    PERFORM set_config('search_path', saved_path, TRUE);
    resolved := pg_catalog.to_regclass('idempotency_records');
    functions := ARRAY(SELECT pg_catalog.to_regprocedure(s.signature)
        FROM pg_catalog.unnest(signatures) AS s (signature));
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    SELECT n.nspname AS schema, c.relkind, c.relpersistence INTO rel
    FROM pg_class AS c INNER JOIN pg_namespace AS n ON c.relnamespace = n.oid
    WHERE c.oid = resolved;

    -- Under REPEATABLE READ or SERIALIZABLE, a snapshot taken before the wait
    -- for the lock misses what the previous deployer did.
    IF resolved IS NOT NULL AND rel.schema IS NULL OR EXISTS (
        SELECT FROM unnest(functions) AS f (oid) WHERE f.oid IS NOT NULL
            AND NOT EXISTS (SELECT FROM pg_proc AS p WHERE p.oid = f.oid)) THEN
        RAISE EXCEPTION 'idempotency_records or a function of 047 changed '
        'after this transaction''s snapshot was taken'
        USING ERRCODE = '40001', DETAIL = format('found: '
            'transaction_isolation %s, and the catalog changed by another '
            'session after the snapshot; expected: a snapshot that shows it',
            current_setting('transaction_isolation')),
        HINT = 'Nothing was removed: apply the file again, or under READ '
        'COMMITTED.';
    END IF;
    IF rel.schema ~ '^pg_(toast_)?temp_' OR rel.relpersistence = 't' THEN
        RAISE EXCEPTION 'idempotency_records resolves to a temporary table'
        USING ERRCODE = '3F000', DETAIL = format('found: '
            '%I.idempotency_records, a temporary table of this session; '
            'expected: the table 045 created, in a permanent schema',
            rel.schema),
        HINT = 'Nothing was removed. Apply the file in a session without '
        'a temporary idempotency_records.';
    END IF;

    FOREACH fn IN ARRAY functions LOOP
        IF fn IS NOT NULL THEN
            EXECUTE format('DROP FUNCTION %s', fn);
        END IF;
    END LOOP;
    -- The columns as 047 adds them, lease_token first.
    FOR col IN
        SELECT a.attname FROM pg_attribute AS a
        WHERE a.attrelid = resolved AND rel.relkind = 'r'
            AND NOT a.attisdropped AND NOT a.attnotnull AND NOT a.atthasdef
            AND format('%s %s', a.attname, format_type(a.atttypid,
                a.atttypmod)) IN ('lease_token uuid', 'request_hash bytea')
        ORDER BY a.attname
    LOOP
        EXECUTE format('ALTER TABLE %s DROP COLUMN %I', resolved, col);
    END LOOP;
    PERFORM set_config('idempotency.pending_guard', '', FALSE);
    PERFORM set_config('search_path', saved_path, TRUE);
END
$drop$;
