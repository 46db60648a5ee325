-- 045_create_idempotency_records.down.sql
--
-- Removes what 045_create_idempotency_records.sql created, in reverse order:
-- the two indexes, then the table idempotency_records with its primary key,
-- chk_expires_at, comments and every stored record.
-- Reverse of: 045_create_idempotency_records.sql (apply 046's down first)
-- Apply:      psql -v ON_ERROR_STOP=1 --no-psqlrc -1
--             -f sql/045_create_idempotency_records.down.sql
--
-- It acts on the install only: the table that idempotency_records reaches on
-- the search_path, by qualified names. Before it removes anything, it refuses
-- a temporary table of that name, a relation of that name that is not 045's
-- table, and an index of one of the two names on another table. Re-runnable
-- by design: where nothing is left to remove, it changes nothing. No CASCADE:
-- an object that depends on the table (a view, a foreign key) stops it with
-- an error naming that object. Two statements, under the three rules of
-- docs/reliability.md, "How the files are built".

-- 1. Marks this file's checks as not passed in this session (rule 2).
DO $mark$
DECLARE
    this_file CONSTANT TEXT := '045_create_idempotency_records.down.sql';
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

-- 2. The lock, the checks, then the indexes and the table are dropped.
DO $drop$
DECLARE
    this_file CONSTANT TEXT := '045_create_idempotency_records.down.sql';
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    resolved REGCLASS;
    rel RECORD;
    idx RECORD;
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

    PERFORM set_config('search_path', saved_path, TRUE);
    resolved := pg_catalog.to_regclass('idempotency_records');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    IF resolved IS NOT NULL THEN
        SELECT n.nspname AS schema, c.relkind, c.relpersistence, (
            SELECT count(*) FROM pg_attribute AS a
            WHERE a.attrelid = c.oid AND NOT a.attisdropped
                AND a.attname IN ('request_id', 'operation', 'result_payload',
                    'status_code', 'created_at', 'expires_at')
        ) AS columns
        INTO rel
        FROM pg_class AS c
        INNER JOIN pg_namespace AS n ON c.relnamespace = n.oid
        WHERE c.oid = resolved;
        -- Under REPEATABLE READ or SERIALIZABLE, a snapshot taken before the
        -- wait for the lock misses what the previous deployer did.
        IF NOT FOUND THEN
            RAISE EXCEPTION 'idempotency_records changed after this '
            'transaction''s snapshot was taken'
            USING ERRCODE = '40001', DETAIL = format('found: '
                'transaction_isolation %s, and relation %s created by another '
                'session after the snapshot; expected: a snapshot that shows '
                'it', current_setting('transaction_isolation'), resolved::OID),
            HINT = 'Nothing was removed: apply the file again, or under READ '
            'COMMITTED (PGOPTIONS=''-c default_transaction_isolation=read\ '
            'committed'').';
        END IF;
        IF rel.schema ~ '^pg_(toast_)?temp_' OR rel.relpersistence = 't' THEN
            RAISE EXCEPTION 'idempotency_records resolves to a temporary table'
            USING ERRCODE = '3F000', DETAIL = format('found: '
                '%I.idempotency_records, a temporary table of this session; '
                'expected: the table 045 created, in a permanent schema',
                rel.schema),
            HINT = 'Nothing was removed. Apply the file in a session without '
            'a temporary idempotency_records (or DROP TABLE '
            'pg_temp.idempotency_records first).';
        END IF;
        IF rel.relkind <> 'r' OR rel.columns <> 6 THEN
            RAISE EXCEPTION 'relation %.idempotency_records is not the table '
            '045 creates', rel.schema
            USING ERRCODE = '55000', DETAIL = format('found: relkind %s with '
                '%s of the six columns of 045; expected: an ordinary table '
                'with all six', rel.relkind, rel.columns),
            HINT = 'Nothing was removed. Check what it is and whose; drop it '
            'by hand if it is to go.';
        END IF;
        FOR idx IN
            SELECT c.relname, c.relkind, i.indrelid::REGCLASS AS indexed
            FROM pg_class AS c LEFT JOIN pg_index AS i ON c.oid = i.indexrelid
            WHERE c.relname IN ('idx_idempotency_expires',
                    'idx_idempotency_operation')
                AND c.relnamespace = to_regnamespace(quote_ident(rel.schema))
                AND i.indrelid IS DISTINCT FROM resolved
            ORDER BY 1
        LOOP
            RAISE EXCEPTION 'relation %.% is not an index of '
            '%.idempotency_records', rel.schema, idx.relname, rel.schema
            USING ERRCODE = '55000', DETAIL = format('found: relkind %s, on '
                '%s; expected: an index on %I.idempotency_records or none',
                idx.relkind, coalesce(idx.indexed::TEXT, 'no table'),
                rel.schema),
            HINT = 'Nothing was removed. Rename that relation, then apply the '
            'file again.';
        END LOOP;

        -- In reverse order: idx_idempotency_operation, idx_idempotency_expires,
        -- then the table.
        FOR idx IN
            SELECT i.indexrelid::REGCLASS AS name
            FROM pg_index AS i INNER JOIN pg_class AS c ON i.indexrelid = c.oid
            WHERE i.indrelid = resolved AND c.relname IN (
                'idx_idempotency_expires', 'idx_idempotency_operation')
            ORDER BY c.relname DESC
        LOOP
            EXECUTE format('DROP INDEX %s', idx.name);
        END LOOP;
        EXECUTE format('DROP TABLE %s', resolved);
    END IF;
    PERFORM set_config('idempotency.pending_guard', '', FALSE);
    PERFORM set_config('search_path', saved_path, TRUE);
END
$drop$;
