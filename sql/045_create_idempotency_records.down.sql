-- 045_create_idempotency_records.down.sql
--
-- Removes what 045_create_idempotency_records.sql created, in reverse order:
-- the two indexes, then the table idempotency_records with its primary key,
-- chk_expires_at and comments. Every stored record is deleted with it.
-- Reverse of: 045_create_idempotency_records.sql
-- Apply:      psql -v ON_ERROR_STOP=1 --no-psqlrc -1 -f sql/045_create_idempotency_records.down.sql
-- Apply 046_create_idempotency_cleanup_job.down.sql first.
--
-- It acts on the install and nothing else: the table that the name
-- idempotency_records reaches on the search_path, in its own schema, by
-- qualified names. It refuses, before removing anything, a temporary table of
-- that name (which the unqualified name would reach first), a relation of that
-- name that is not the table 045 creates, and an index of one of the two names
-- that is not on that table.
--
-- Re-runnable by design (nothing to remove is no error): running it twice, or
-- on a database where 045 never ran, succeeds and changes nothing. No CASCADE:
-- if another object depends on the table (a view, a foreign key), the removal
-- stops with an error naming it rather than removing it silently.
--
-- The blocks follow the three rules numbered in 045's header: one deployer at a
-- time (the advisory lock 7594306390479384566, shared with the up files; a wait
-- bounded by lock_timeout, 2 s where the deployer set none, SQLSTATE 55P03
-- naming the pid waited for); a refused check stops the rest, also under plain
-- psql -f (the session setting idempotency.pending_guard, so the statements run
-- in one session, in order); another role's code never runs here (search_path
-- pg_catalog, pg_temp, the caller's only to see what idempotency_records resolves to).

-- The check below has not passed yet in this session (045's rule 2). A refusal
-- that another file left pending in this session stops this file too.
DO $begin$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    pending TEXT;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    pending := coalesce(current_setting('idempotency.pending_guard', TRUE), '');
    IF pending <> '' AND split_part(pending, ' ', 1) <> '045_create_idempotency_records.down.sql' THEN
        RAISE EXCEPTION '045_create_idempotency_records.down.sql stopped: % did not pass its checks earlier in this session',
        split_part(pending, ' ', 1)
        USING
            ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('found: idempotency.pending_guard = %L; expected: %L', pending, ''),
            HINT = 'Nothing of this file was removed. Fix what the first error names, then apply the files again.';
    END IF;
    PERFORM set_config('idempotency.pending_guard', '045_create_idempotency_records.down.sql guard', FALSE);
    PERFORM set_config('search_path', saved_path, TRUE);
END
$begin$;

-- Guard: what the name reaches is the install, or nothing.
DO $guard$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    resolved REGCLASS;
    rel RECORD;
    foreign_index RECORD;
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
            HINT = 'Nothing more was removed. Apply the file again once that deploy has ended, or with a '
            || 'longer lock_timeout.';
    END;
    PERFORM FROM pg_seclabel WHERE FALSE;
    -- Rule 2: only in its turn among the checks.
    IF current_setting('idempotency.pending_guard', TRUE)
        IS DISTINCT FROM '045_create_idempotency_records.down.sql guard' THEN
        RAISE EXCEPTION '045_create_idempotency_records.down.sql stopped: a check before this statement did not pass'
        USING
            ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('found: idempotency.pending_guard = %L; expected: %L',
                current_setting('idempotency.pending_guard', TRUE), '045_create_idempotency_records.down.sql guard'),
            HINT = 'Nothing more was removed. Fix what the first error names, then apply the files again.';
    END IF;

    -- What the unqualified name reaches now that no other deployer runs, under
    -- the caller's path.
    PERFORM set_config('search_path', saved_path, TRUE);
    resolved := pg_catalog.to_regclass('idempotency_records');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    IF resolved IS NOT NULL THEN
        SELECT
            n.nspname AS schema,
            c.relkind,
            c.relpersistence,
            (
                SELECT count(*)
                FROM pg_attribute AS a
                WHERE
                    a.attrelid = c.oid AND NOT a.attisdropped
                    AND a.attname IN (
                        'request_id', 'operation', 'result_payload', 'status_code', 'created_at', 'expires_at'
                    )
            ) AS contract_columns
        INTO rel
        FROM pg_class AS c
        INNER JOIN pg_namespace AS n ON c.relnamespace = n.oid
        WHERE c.oid = resolved;
        -- 045's rule 1, under REPEATABLE READ or SERIALIZABLE: the snapshot shows it.
        IF NOT FOUND THEN
            RAISE EXCEPTION 'idempotency_records changed after this transaction''s snapshot was taken'
            USING
                ERRCODE = 'serialization_failure',
                DETAIL = format(
                    'found: transaction_isolation %s, and relation %s created by another session after the snapshot; '
                    || 'expected: a snapshot that shows it', current_setting('transaction_isolation'), resolved::OID
                ),
                HINT = 'Nothing was removed: apply the file again, or under READ COMMITTED '
                || '(PGOPTIONS=''-c default_transaction_isolation=read\ committed'').';
        END IF;
        IF rel.schema ~ '^pg_(toast_)?temp_' OR rel.relpersistence = 't' THEN
            RAISE EXCEPTION 'idempotency_records resolves to a temporary table'
            USING
                ERRCODE = 'invalid_schema_name',
                DETAIL = format('found: %I.idempotency_records, a temporary table of this session; '
                    || 'expected: the table 045 created, in a permanent schema', rel.schema),
                HINT = 'Nothing was removed. Apply the file in a session without a temporary idempotency_records '
                || '(or DROP TABLE pg_temp.idempotency_records first).';
        END IF;
        IF rel.relkind <> 'r' OR rel.contract_columns <> 6 THEN
            RAISE EXCEPTION 'relation %.idempotency_records is not the table 045 creates', rel.schema
            USING
                ERRCODE = 'object_not_in_prerequisite_state',
                DETAIL = format('found: relkind %s with %s of the six columns of 045; expected: an ordinary table '
                    || 'with all six', rel.relkind, rel.contract_columns),
                HINT = 'Nothing was removed. Check what it is and whose; drop it by hand if it is to go.';
        END IF;
        FOR foreign_index IN
            SELECT c.relname, c.relkind, i.indrelid::REGCLASS AS indexed
            FROM pg_class AS c
            LEFT JOIN pg_index AS i ON c.oid = i.indexrelid
            WHERE
                c.relname IN ('idx_idempotency_expires', 'idx_idempotency_operation')
                AND c.relnamespace = to_regnamespace(quote_ident(rel.schema))::OID
                AND i.indrelid IS DISTINCT FROM resolved::OID
            ORDER BY 1
        LOOP
            RAISE EXCEPTION 'relation %.% is not an index of %.idempotency_records', rel.schema,
            foreign_index.relname, rel.schema
            USING
                ERRCODE = 'object_not_in_prerequisite_state',
                DETAIL = format('found: relkind %s, on %s; expected: an index on %I.idempotency_records or none',
                    foreign_index.relkind, coalesce(foreign_index.indexed::TEXT, 'no table'), rel.schema),
                HINT = 'Nothing was removed. Rename that relation, then apply the file again.';
        END LOOP;
    END IF;
    PERFORM set_config('idempotency.pending_guard', '', FALSE);
    PERFORM set_config('search_path', saved_path, TRUE);
END
$guard$;

-- The index for monitoring and analytics, idx_idempotency_operation.
DO $operation_index$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    resolved REGCLASS;
    found_index REGCLASS;
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
            HINT = 'Nothing more was removed. Apply the file again once that deploy has ended, or with a '
            || 'longer lock_timeout.';
    END;
    PERFORM FROM pg_seclabel WHERE FALSE;
    -- Rule 2: only once every check before this statement has passed.
    IF current_setting('idempotency.pending_guard', TRUE) IS DISTINCT FROM '' THEN
        RAISE EXCEPTION '045_create_idempotency_records.down.sql stopped: a check before this statement did not pass'
        USING
            ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('found: idempotency.pending_guard = %L; expected: %L',
                current_setting('idempotency.pending_guard', TRUE), ''),
            HINT = 'Nothing more was removed. Fix what the first error names, then apply the files again.';
    END IF;

    PERFORM set_config('search_path', saved_path, TRUE);
    resolved := pg_catalog.to_regclass('idempotency_records');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    SELECT i.indexrelid::REGCLASS
    INTO found_index
    FROM pg_index AS i
    INNER JOIN pg_class AS c ON i.indexrelid = c.oid
    WHERE i.indrelid = resolved::OID AND c.relname = 'idx_idempotency_operation';
    IF found_index IS NOT NULL THEN
        EXECUTE format('DROP INDEX %s', found_index);
    END IF;
    PERFORM set_config('search_path', saved_path, TRUE);
END
$operation_index$;

-- The cleanup's index, idx_idempotency_expires.
DO $expires_index$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    resolved REGCLASS;
    found_index REGCLASS;
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
            HINT = 'Nothing more was removed. Apply the file again once that deploy has ended, or with a '
            || 'longer lock_timeout.';
    END;
    PERFORM FROM pg_seclabel WHERE FALSE;
    -- Rule 2: only once every check before this statement has passed.
    IF current_setting('idempotency.pending_guard', TRUE) IS DISTINCT FROM '' THEN
        RAISE EXCEPTION '045_create_idempotency_records.down.sql stopped: a check before this statement did not pass'
        USING
            ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('found: idempotency.pending_guard = %L; expected: %L',
                current_setting('idempotency.pending_guard', TRUE), ''),
            HINT = 'Nothing more was removed. Fix what the first error names, then apply the files again.';
    END IF;

    PERFORM set_config('search_path', saved_path, TRUE);
    resolved := pg_catalog.to_regclass('idempotency_records');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    SELECT i.indexrelid::REGCLASS
    INTO found_index
    FROM pg_index AS i
    INNER JOIN pg_class AS c ON i.indexrelid = c.oid
    WHERE i.indrelid = resolved::OID AND c.relname = 'idx_idempotency_expires';
    IF found_index IS NOT NULL THEN
        EXECUTE format('DROP INDEX %s', found_index);
    END IF;
    PERFORM set_config('search_path', saved_path, TRUE);
END
$expires_index$;

-- The table, with its primary key, chk_expires_at, comments and every record.
DO $table$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    resolved REGCLASS;
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
            HINT = 'Nothing more was removed. Apply the file again once that deploy has ended, or with a '
            || 'longer lock_timeout.';
    END;
    PERFORM FROM pg_seclabel WHERE FALSE;
    -- Rule 2: only once every check before this statement has passed.
    IF current_setting('idempotency.pending_guard', TRUE) IS DISTINCT FROM '' THEN
        RAISE EXCEPTION '045_create_idempotency_records.down.sql stopped: a check before this statement did not pass'
        USING
            ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('found: idempotency.pending_guard = %L; expected: %L',
                current_setting('idempotency.pending_guard', TRUE), ''),
            HINT = 'Nothing more was removed. Fix what the first error names, then apply the files again.';
    END IF;

    PERFORM set_config('search_path', saved_path, TRUE);
    resolved := pg_catalog.to_regclass('idempotency_records');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    IF resolved IS NOT NULL THEN
        IF EXISTS (SELECT FROM pg_class AS c WHERE c.oid = resolved::OID AND c.relpersistence = 't') THEN
            RAISE EXCEPTION 'idempotency_records resolves to a temporary table'
            USING
                ERRCODE = 'invalid_schema_name',
                DETAIL = 'found: a temporary table of this session; expected: the table 045 created',
                HINT = 'Apply the file in a session without a temporary idempotency_records.';
        END IF;
        EXECUTE format('DROP TABLE %s', resolved);
    END IF;
    PERFORM set_config('search_path', saved_path, TRUE);
END
$table$;
