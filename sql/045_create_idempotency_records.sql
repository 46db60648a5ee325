-- 045_create_idempotency_records.sql
--
-- Creates the table idempotency_records (one row per idempotency key), its check
-- constraint chk_expires_at, the indexes idx_idempotency_expires and
-- idx_idempotency_operation, and a comment on the table and on every column.
-- Reverse: 045_create_idempotency_records.down.sql
-- Apply:   psql -v ON_ERROR_STOP=1 --no-psqlrc -1 -f sql/045_create_idempotency_records.sql
--
-- Objects land in the first schema of the session's search_path.
-- No BEGIN/COMMIT and no psql meta-commands: runners that wrap each file in their
-- own transaction (sqlx, Flyway, dbmate, golang-migrate, sqitch) take it unchanged.
--
-- Re-runnable by design: pipelines re-apply files to live databases, and a run cut
-- off part way must complete when applied again. IF NOT EXISTS only checks a
-- name, so the file first looks in the catalog:
--   * a table of this name that is not the one this file describes (columns,
--     defaults, primary key, chk_expires_at, persistence, owner, no triggers or
--     rules) stops the file with an error naming what differs;
--   * an index or comment that is missing is created; one that is there is not
--     touched, so re-applying a complete 045 takes no lock on the table at all
--     (CREATE INDEX IF NOT EXISTS would take a SHARE lock, which waits for every
--     open write transaction and makes every later write wait behind it, before
--     it even looks at the name; COMMENT ON takes SHARE UPDATE EXCLUSIVE);
--   * an index of a contract name with another definition, or left invalid by a
--     failed CREATE INDEX CONCURRENTLY, stops the file;
--   * the table in another schema of the search_path (an install in public, and
--     later a schema named after the user, first in the default "$user", public)
--     stops the file rather than start a second, empty copy.
-- docs/README_IDEMPOTENCY.md ("Adopting an existing database") lists every case.
--
-- Every block follows three rules, shared by the four files:
--
-- 1. One deployer at a time. Every block after the first takes the transaction
--    advisory lock 7594306390479384566 (the same key in the four files, so an up
--    racing a down waits too) before it reads or changes anything: under -1 or a
--    runner's transaction the first one holds it to the commit; without -1 (plain
--    psql -f, each statement its own transaction) each block takes it again. A
--    deployer behind another waits at most lock_timeout (2 s where the deployer
--    set none) and then fails with SQLSTATE 55P03 naming the pid it waited for.
--    Then it reads the catalog as the other one left it: each statement under
--    READ COMMITTED takes a new snapshot, and the lock on pg_seclabel right after
--    the advisory lock (a catalog nothing here reads otherwise, so the lock is the
--    transaction's first on it) makes the backend apply the cache invalidations
--    the other's commit sent; without it a name looked up before that commit
--    could still resolve as it did then (racing runs of 045 without -1 failed
--    with "relation ... already exists").
--    Under REPEATABLE READ or SERIALIZABLE the snapshot predates the wait: a
--    check that finds the catalog changed since stops with SQLSTATE 40001
--    (apply the file again).
--
-- 2. A refused check stops the rest of the file however it is run: under -1 or a
--    runner the error aborts the transaction; under plain psql -f or psql < file,
--    which go on after an error, each later statement finds the session setting
--    idempotency.pending_guard still naming the check that did not pass (the
--    first statement sets it, each check clears its own stage when it passes, and
--    only a passing statement commits) and fails in turn, so nothing is created
--    after a refusal and no later line of output claims otherwise. A refusal left
--    pending also stops the next file applied in the same session (its first
--    statement fails, and every one after it). Not chosen: setting
--    default_transaction_read_only until the checks pass, which would also stop
--    everything after a refusal, but leaves a session in which the file was cut
--    off read-only for every later transaction, the file's own re-run included.
--    So the statements run in one session, in order: a pooler in transaction
--    mode needs -1.
--
-- 3. Another role's code never runs here. A role that can CREATE in a schema on
--    the search_path (public, before PostgreSQL 15) can add a function or
--    operator whose argument types match a call exactly where the built-in needs
--    a cast, and PostgreSQL prefers it to pg_catalog's whatever the path order
--    (CVE-2018-1058). So each block runs under search_path pg_catalog, pg_temp
--    (functions and operators are never looked up in pg_temp), switching back to
--    the caller's path only for what must see it (what idempotency_records
--    resolves to, with pg_catalog-qualified calls, and the CREATE TABLE), and
--    restores it at its end: one rule for every block, rather than qualifying
--    each call and operator, which a later edit would forget.

-- The checks below have not passed yet in this session (rule 2). A refusal that
-- another file left pending in this session stops this file too.
DO $begin$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    pending TEXT;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    pending := coalesce(current_setting('idempotency.pending_guard', TRUE), '');
    IF pending <> '' AND split_part(pending, ' ', 1) <> '045_create_idempotency_records.sql' THEN
        RAISE EXCEPTION '045_create_idempotency_records.sql stopped: % did not pass its checks earlier in this session',
        split_part(pending, ' ', 1)
        USING
            ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('found: idempotency.pending_guard = %L; expected: %L', pending, ''),
            HINT = 'Nothing of this file was applied. Fix what the first error names, then apply the files again.';
    END IF;
    PERFORM set_config('idempotency.pending_guard', '045_create_idempotency_records.sql place', FALSE);
    PERFORM set_config('search_path', saved_path, TRUE);
END
$begin$;

-- Where: never a temporary schema (pg_temp first on the search_path), whose
-- table would vanish at disconnect, never under a temporary table of the same
-- name, which the unqualified names below would reach first, and never a second
-- copy beside an install in another schema of the search_path.
DO $place$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    target CONSTANT TEXT := pg_catalog.current_schema();
    resolved REGCLASS;
    -- what the unqualified name reaches, schema-qualified, and its schema
    visible TEXT;
    visible_schema TEXT;
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
        IS DISTINCT FROM '045_create_idempotency_records.sql place' THEN
        RAISE EXCEPTION '045_create_idempotency_records.sql stopped: a check before this statement did not pass'
        USING
            ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('found: idempotency.pending_guard = %L; expected: %L',
                current_setting('idempotency.pending_guard', TRUE), '045_create_idempotency_records.sql place'),
            HINT = 'Nothing more was applied. Fix what the first error names, then apply the files again.';
    END IF;

    -- What the unqualified name reaches now that no other deployer runs, under
    -- the caller's path.
    PERFORM set_config('search_path', saved_path, TRUE);
    resolved := pg_catalog.to_regclass('idempotency_records');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    SELECT
        format('%s.%I', c.relnamespace::REGNAMESPACE, c.relname),
        c.relnamespace::REGNAMESPACE::TEXT
    INTO visible, visible_schema
    FROM pg_class AS c
    WHERE c.oid = resolved;
    -- Rule 1, under REPEATABLE READ or SERIALIZABLE: the snapshot shows what resolves.
    IF resolved IS NOT NULL AND visible IS NULL THEN
        RAISE EXCEPTION 'idempotency_records changed after this transaction''s snapshot was taken'
        USING
            ERRCODE = 'serialization_failure',
            DETAIL = format(
                'found: transaction_isolation %s, and relation %s committed by another session after the snapshot; '
                || 'expected: a snapshot that shows it', current_setting('transaction_isolation'), resolved::OID
            ),
            HINT = 'Nothing was applied: apply the file again, or under READ COMMITTED '
            || '(PGOPTIONS=''-c default_transaction_isolation=read\ committed'').';
    END IF;

    IF target ~ '^pg_(toast_)?temp_' OR visible ~ '^pg_(toast_)?temp_' THEN
        RAISE EXCEPTION 'idempotency_records would be created in or resolved to a temporary schema'
        USING
            ERRCODE = 'invalid_schema_name',
            DETAIL = format(
                'found: current schema %s, idempotency_records resolves to %s; expected: a permanent schema',
                target, coalesce(visible, 'nothing')
            ),
            HINT = 'Apply the file with a search_path that starts with the target schema, '
            || 'e.g. PGOPTIONS=''-c search_path=public'', in a session without a temporary idempotency_records.';
    END IF;
    IF to_regclass(format('%I.idempotency_records', target)) IS NULL AND visible IS NOT NULL THEN
        RAISE EXCEPTION 'idempotency_records is installed in another schema than %', target
        USING
            ERRCODE = 'duplicate_table',
            DETAIL = format(
                'found: %s, while the search_path would create a second one in schema %s, its first; '
                || 'expected: idempotency_records in schema %s, or in no schema of the search_path',
                visible, target, target
            ),
            HINT = format(
                'Apply 045 and 046 with the search_path of the install (PGOPTIONS=''-c search_path=%s''), '
                || 'or drop or rename schema %I if it was created by mistake.',
                visible_schema, target
            );
    END IF;
    PERFORM set_config('idempotency.pending_guard', '045_create_idempotency_records.sql guard', FALSE);
    PERFORM set_config('search_path', saved_path, TRUE);
END
$place$;

-- Guard: a table of this name that is already there must be one this file could
-- have created: the six columns (type, nullability, default), the primary key,
-- chk_expires_at, a permanent ordinary table owned by the role applying the file
-- (another role's table could carry code that a superuser calling the cleanup
-- would run), with no trigger and no rule; and a relation with the name of one of
-- the two indexes must be exactly that index, valid. Columns and constraints a
-- project added in its own later migrations are left alone, so re-running this
-- file stays safe after them. Nothing is changed until every check has passed.
DO $guard$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    target CONSTANT TEXT := pg_catalog.current_schema();
    tbl REGCLASS;
    rel RECORD;
    found_text TEXT;
    wanted RECORD;
    existing RECORD;
    wanted_columns CONSTANT TEXT :=
    'created_at timestamp with time zone not null default now(), '
    || 'expires_at timestamp with time zone not null, '
    || 'operation character varying(100) not null, '
    || 'request_id uuid not null, '
    || 'result_payload text not null, '
    || 'status_code integer null';
    wanted_constraints CONSTANT TEXT :=
    'chk_expires_at CHECK ((expires_at > created_at)), '
    || 'idempotency_records_pkey PRIMARY KEY (request_id)';
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
        IS DISTINCT FROM '045_create_idempotency_records.sql guard' THEN
        RAISE EXCEPTION '045_create_idempotency_records.sql stopped: a check before this statement did not pass'
        USING
            ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('found: idempotency.pending_guard = %L; expected: %L',
                current_setting('idempotency.pending_guard', TRUE), '045_create_idempotency_records.sql guard'),
            HINT = 'Nothing more was applied. Fix what the first error names, then apply the files again.';
    END IF;
    -- Rule 1, under REPEATABLE READ or SERIALIZABLE: the snapshot this block reads
    -- shows the table and indexes as they are.
    IF EXISTS (
        SELECT
        FROM unnest(ARRAY['idempotency_records', 'idx_idempotency_expires', 'idx_idempotency_operation']) AS n (name)
        WHERE to_regclass(format('%I.%I', target, n.name)) IS DISTINCT FROM (
            SELECT c.oid::REGCLASS
            FROM pg_class AS c
            WHERE c.relname = n.name AND c.relnamespace = to_regnamespace(quote_ident(target))::OID
        )
    ) THEN
        RAISE EXCEPTION 'idempotency_records changed after this transaction''s snapshot was taken'
        USING
            ERRCODE = 'serialization_failure',
            DETAIL = format(
                'found: transaction_isolation %s, and a relation of schema %s changed by another session after the '
                || 'snapshot; expected: a snapshot that shows it', current_setting('transaction_isolation'), target
            ),
            HINT = 'Nothing was applied: apply the file again, or under READ COMMITTED '
            || '(PGOPTIONS=''-c default_transaction_isolation=read\ committed'').';
    END IF;

    tbl := to_regclass(format('%I.idempotency_records', target));
    IF tbl IS NOT NULL THEN
        SELECT
            c.relkind,
            c.relpersistence,
            pg_get_userbyid(c.relowner) AS owner
        INTO rel
        FROM pg_catalog.pg_class AS c
        WHERE c.oid = tbl;

        IF rel.owner IS DISTINCT FROM current_user THEN
            RAISE EXCEPTION 'table %.idempotency_records is owned by another role', target
            USING
                ERRCODE = 'insufficient_privilege',
                DETAIL = format('found: owner %s; expected: owner %s (the role applying 045)', rel.owner, current_user),
                HINT = 'Check the table (triggers, rules, policies, grants) and then either apply the migrations '
                || 'as its owner or run ALTER TABLE idempotency_records OWNER TO the migration role.';
        END IF;

        SELECT string_agg(s.what, ', ' ORDER BY s.what)
        INTO found_text
        FROM (
            SELECT 'trigger ' || t.tgname
            FROM pg_catalog.pg_trigger AS t
            WHERE t.tgrelid = tbl AND NOT t.tgisinternal
            UNION ALL
            SELECT 'rule ' || r.rulename
            FROM pg_catalog.pg_rewrite AS r
            WHERE r.ev_class = tbl
        ) AS s (what);
        IF found_text IS NOT NULL THEN
            RAISE EXCEPTION 'table %.idempotency_records has triggers or rules', target
            USING
                ERRCODE = 'object_not_in_prerequisite_state',
                DETAIL = format('found: %s; expected: no trigger and no rule', found_text),
                HINT = 'A trigger runs with the rights of whoever writes or cleans up the table; a rule rewrites '
                || 'those statements. Review it, drop it (DROP TRIGGER or DROP RULE name ON idempotency_records) '
                || 'and apply 045 again.';
        END IF;

        IF (rel.relkind, rel.relpersistence) IS DISTINCT FROM ('r'::"char", 'p'::"char") THEN
            RAISE EXCEPTION 'table %.idempotency_records already exists with another persistence or kind', target
            USING
                ERRCODE = 'duplicate_table',
                DETAIL = format(
                    'found: relkind %s, relpersistence %s; expected: relkind r, relpersistence p (a permanent, '
                    || 'logged table)', rel.relkind, rel.relpersistence
                ),
                HINT = 'For an UNLOGGED table: ALTER TABLE idempotency_records SET LOGGED (it rewrites the table '
                || 'under an ACCESS EXCLUSIVE lock), then apply 045 again.';
        END IF;

        SELECT
            string_agg(
                format(
                    '%s %s %s%s',
                    a.attname,
                    format_type(a.atttypid, a.atttypmod),
                    CASE WHEN a.attnotnull THEN 'not null' ELSE 'null' END,
                    ' default ' || pg_get_expr(d.adbin, d.adrelid)
                ),
                ', ' ORDER BY a.attname
            )
        INTO found_text
        FROM pg_catalog.pg_attribute AS a
        LEFT JOIN pg_catalog.pg_attrdef AS d ON a.attrelid = d.adrelid AND a.attnum = d.adnum
        WHERE
            a.attrelid = tbl
            AND a.attname IN (
                'request_id', 'operation', 'result_payload',
                'status_code', 'created_at', 'expires_at'
            )
            AND NOT a.attisdropped;
        IF found_text IS DISTINCT FROM wanted_columns THEN
            RAISE EXCEPTION 'table %.idempotency_records already exists with other columns', target
            USING
                ERRCODE = 'duplicate_table',
                DETAIL = format('found: %s; expected: %s', found_text, wanted_columns),
                HINT = 'Rename or drop the existing table, or apply the migration in another schema.';
        END IF;

        SELECT string_agg(format('%s %s', con.conname, pg_get_constraintdef(con.oid)), ', ' ORDER BY con.conname)
        INTO found_text
        FROM pg_catalog.pg_constraint AS con
        WHERE
            con.conrelid = tbl
            AND (con.conname IN ('idempotency_records_pkey', 'chk_expires_at') OR con.contype = 'p');
        IF found_text IS DISTINCT FROM wanted_constraints THEN
            RAISE EXCEPTION 'table %.idempotency_records already exists with another primary key or check', target
            USING
                ERRCODE = 'duplicate_table',
                DETAIL = format('found: %s; expected: %s', coalesce(found_text, 'none'), wanted_constraints),
                HINT = 'Restore the primary key and chk_expires_at as 045 defines them (docs/README_IDEMPOTENCY.md, '
                || '"Adopting an existing database"), then apply 045 again.';
        END IF;
    END IF;

    -- A relation with an index's name must be exactly that index, valid: otherwise
    -- the cleanup or the monitoring queries would run on something else.
    FOR wanted IN
        SELECT
            v.name,
            format('CREATE INDEX %I ON %I.idempotency_records USING btree (%I)', v.name, target, v.col)
                AS definition
        FROM (
            VALUES
            ('idx_idempotency_expires', 'expires_at'),
            ('idx_idempotency_operation', 'operation')
        ) AS v (name, col)
    LOOP
        SELECT
            c.relkind,
            i.indisvalid,
            i.indisready,
            pg_get_indexdef(c.oid) AS definition
        INTO existing
        FROM pg_catalog.pg_class AS c
        LEFT JOIN pg_catalog.pg_index AS i ON c.oid = i.indexrelid
        WHERE c.relname = wanted.name AND c.relnamespace = to_regnamespace(quote_ident(target));

        IF NOT FOUND THEN
            CONTINUE;
        ELSIF existing.definition IS DISTINCT FROM wanted.definition THEN
            RAISE EXCEPTION 'relation %.% already exists with another definition', target, wanted.name
            USING
                ERRCODE = 'duplicate_table',
                DETAIL = format('found: %s; expected: %s', coalesce(existing.definition, 'relkind ' || existing.relkind::TEXT),
                    wanted.definition),
                HINT = format('Drop or rename %I (DROP INDEX CONCURRENTLY takes no lock that blocks writes), '
                    || 'then apply 045 again.', wanted.name);
        ELSIF NOT (existing.indisvalid AND existing.indisready) THEN
            RAISE EXCEPTION 'index %.% is invalid', target, wanted.name
            USING
                ERRCODE = 'object_not_in_prerequisite_state',
                DETAIL = format('found: indisvalid %s, indisready %s; expected: a valid index (a failed '
                    || 'CREATE INDEX CONCURRENTLY leaves an invalid one)', existing.indisvalid, existing.indisready),
                HINT = format('Outside a transaction block: DROP INDEX CONCURRENTLY %1$I; then '
                    || '%2$s, written CREATE INDEX CONCURRENTLY; then apply 045 again.', wanted.name, wanted.definition);
        END IF;
    END LOOP;
    PERFORM set_config('idempotency.pending_guard', '', FALSE);
    PERFORM set_config('search_path', saved_path, TRUE);
END
$guard$;

-- The table, created where it is absent. IF NOT EXISTS only says what the block
-- checks first (the checks above read any table that is there); the statement
-- runs under the caller's search_path, which decides the schema.
DO $table$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    target CONSTANT TEXT := pg_catalog.current_schema();
    resolved REGCLASS;
    tbl REGCLASS;
    owner TEXT;
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
        RAISE EXCEPTION '045_create_idempotency_records.sql stopped: a check before this statement did not pass'
        USING
            ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('found: idempotency.pending_guard = %L; expected: %L',
                current_setting('idempotency.pending_guard', TRUE), ''),
            HINT = 'Nothing more was applied. Fix what the first error names, then apply the files again.';
    END IF;

    tbl := to_regclass(format('%I.idempotency_records', target));
    IF tbl IS NULL THEN
        PERFORM set_config('search_path', saved_path, TRUE);
        CREATE TABLE IF NOT EXISTS idempotency_records (
            request_id UUID CONSTRAINT idempotency_records_pkey PRIMARY KEY,
            operation VARCHAR(100) NOT NULL,
            result_payload TEXT NOT NULL,
            status_code INTEGER,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            expires_at TIMESTAMPTZ NOT NULL,
            CONSTRAINT chk_expires_at CHECK (expires_at > created_at)
        );
        resolved := pg_catalog.to_regclass('idempotency_records');
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
        tbl := to_regclass(format('%I.idempotency_records', target));
        -- Where pg_temp is only pending on the search_path (first, but no temporary
        -- table made yet), current_schema() names a permanent schema while the
        -- table went to the temporary one: the error undoes it.
        IF tbl IS NULL OR resolved IS DISTINCT FROM tbl THEN
            RAISE EXCEPTION 'idempotency_records does not resolve to %.idempotency_records', target
            USING
                ERRCODE = 'invalid_schema_name',
                DETAIL = format('found: %s; expected: %I.idempotency_records',
                    coalesce(resolved::TEXT, 'nothing'), target),
                HINT = 'Apply the file with a search_path that starts with the target schema, and without pg_temp '
                || 'first.';
        END IF;
    ELSE
        -- Made by another session since the checks above (only without -1): its owner again.
        SELECT pg_get_userbyid(c.relowner) INTO owner FROM pg_class AS c WHERE c.oid = tbl;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'idempotency_records changed after this transaction''s snapshot was taken'
            USING
                ERRCODE = 'serialization_failure',
                DETAIL = format(
                    'found: transaction_isolation %s, and %s created by another session after the snapshot; '
                    || 'expected: a snapshot that shows it', current_setting('transaction_isolation'), tbl
                ),
                HINT = 'Apply the file again, or under READ COMMITTED '
                || '(PGOPTIONS=''-c default_transaction_isolation=read\ committed'').';
        ELSIF owner IS DISTINCT FROM current_user THEN
            RAISE EXCEPTION 'table %.idempotency_records is owned by another role', target
            USING
                ERRCODE = 'insufficient_privilege',
                DETAIL = format('found: owner %s; expected: owner %s (the role applying 045)', owner, current_user),
                HINT = 'Apply 045 again: its checks name what the table holds.';
        END IF;
    END IF;
    PERFORM set_config('search_path', saved_path, TRUE);
END
$table$;

-- The indexes, each created only where no relation has its name yet (the checks
-- above refused one of that name that is not exactly this index, valid).
--   idx_idempotency_expires:   the cleanup's DELETE ... WHERE expires_at <= now()
--                              is a range scan on it.
--   idx_idempotency_operation: monitoring and analytics, counts by operation.
DO $indexes$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    target CONSTANT TEXT := pg_catalog.current_schema();
    wanted RECORD;
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
        RAISE EXCEPTION '045_create_idempotency_records.sql stopped: a check before this statement did not pass'
        USING
            ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('found: idempotency.pending_guard = %L; expected: %L',
                current_setting('idempotency.pending_guard', TRUE), ''),
            HINT = 'Nothing more was applied. Fix what the first error names, then apply the files again.';
    END IF;

    -- Without -1, a 045.down run in between may have dropped the table: then
    -- there is nothing to index, and the state is the one that down left.
    IF to_regclass(format('%I.idempotency_records', target)) IS NOT NULL THEN
        FOR wanted IN
            SELECT format('CREATE INDEX %I ON %I.idempotency_records USING btree (%I)', v.name, target, v.col)
                AS definition
            FROM (
                VALUES
                ('idx_idempotency_expires', 'expires_at'),
                ('idx_idempotency_operation', 'operation')
            ) AS v (name, col)
            WHERE to_regclass(format('%I.%I', target, v.name)) IS NULL
        LOOP
            EXECUTE wanted.definition;
        END LOOP;
    END IF;
    PERFORM set_config('search_path', saved_path, TRUE);
END
$indexes$;

-- The comments, each set only where it is missing or differs: COMMENT ON takes a
-- SHARE UPDATE EXCLUSIVE lock on the table, which waits for (auto)vacuum.
DO $comments$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    target CONSTANT TEXT := pg_catalog.current_schema();
    qualified TEXT;
    tbl REGCLASS;
    wanted RECORD;
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
        RAISE EXCEPTION '045_create_idempotency_records.sql stopped: a check before this statement did not pass'
        USING
            ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('found: idempotency.pending_guard = %L; expected: %L',
                current_setting('idempotency.pending_guard', TRUE), ''),
            HINT = 'Nothing more was applied. Fix what the first error names, then apply the files again.';
    END IF;

    qualified := format('%I.idempotency_records', target);
    tbl := to_regclass(qualified);
    -- Without -1, a 045.down run in between may have dropped the table.
    IF tbl IS NOT NULL THEN
        FOR wanted IN
            SELECT
                v.col,
                v.text,
                CASE
                    WHEN v.col IS NULL THEN obj_description(tbl, 'pg_class')
                    ELSE col_description(tbl, a.attnum)
                END AS found
            FROM (
                VALUES
                (
                    NULL,
                    'Stores idempotency records for duplicate request prevention: the stored result of each request, '
                    || 'replayed when the same request_id is seen again before expires_at.'
                ),
                ('request_id', 'Unique request identifier (idempotency key) sent by the client.'),
                (
                    'operation',
                    'Name of the operation the request performed, e.g. payment or transfer (at most 100 characters).'
                ),
                ('result_payload', 'Result of the first execution, replayed to duplicates (JSON text).'),
                ('status_code', 'HTTP status code of the first execution; NULL when not applicable.'),
                ('created_at', 'When the record was stored.'),
                (
                    'expires_at',
                    'End of the record''s lifetime: it is no longer replayed after this instant and cleanup deletes '
                    || 'it (must be later than created_at).'
                )
            ) AS v (col, text)
            LEFT JOIN pg_catalog.pg_attribute AS a ON a.attrelid = tbl AND a.attname = v.col
        LOOP
            IF wanted.found IS DISTINCT FROM wanted.text THEN
                IF wanted.col IS NULL THEN
                    EXECUTE format('COMMENT ON TABLE %s IS %L', qualified, wanted.text);
                ELSE
                    EXECUTE format('COMMENT ON COLUMN %s.%I IS %L', qualified, wanted.col, wanted.text);
                END IF;
            END IF;
        END LOOP;
    END IF;
    PERFORM set_config('search_path', saved_path, TRUE);
END
$comments$;
