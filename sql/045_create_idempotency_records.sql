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
-- name, so every step first looks in the catalog:
--   * a table of this name that is not the one this file describes (columns,
--     defaults, primary key, chk_expires_at, persistence, owner, no triggers or
--     rules) stops the file with an error naming what differs;
--   * an index or comment that is missing is created; one that is there is not
--     touched, so re-applying a complete 045 takes no lock on the table at all
--     (CREATE INDEX IF NOT EXISTS would take a SHARE lock, which waits for every
--     open write transaction and makes every later write wait behind it, before
--     it even looks at the name; COMMENT ON takes SHARE UPDATE EXCLUSIVE);
--   * an index of a contract name with another definition, or left invalid by a
--     failed CREATE INDEX CONCURRENTLY, stops the file.
-- docs/README_IDEMPOTENCY.md ("Adopting an existing database") lists every case.
--
-- Another role's code never runs here. A role that can CREATE in a schema on the
-- search_path (public, before PostgreSQL 15) can add a function or operator whose
-- argument types match a call exactly where the built-in needs a cast, and
-- PostgreSQL prefers it to pg_catalog's whatever the path order (CVE-2018-1058).
-- So each DO block first captures what it needs from the search_path (the schema,
-- what idempotency_records resolves to) with pg_catalog-qualified calls only, then
-- sets search_path to pg_catalog, pg_temp (functions and operators are never
-- looked up in pg_temp) and restores it at its end: one rule for every block,
-- rather than qualifying each of its calls and operators, which a later edit
-- would forget. The DECLARE initialisers run before the body, under the caller's
-- path, so they are the captures and nothing else.

-- Any lock this file must take (only where it creates something) waits a bounded
-- time. The deployer's own lock_timeout wins; this sets one, for this file's
-- transaction only, where none is set.
DO $timeout$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    IF current_setting('lock_timeout') IN ('0', '0ms') THEN
        PERFORM set_config('lock_timeout', '2s', TRUE);
    END IF;
    PERFORM set_config('search_path', saved_path, TRUE);
END
$timeout$;

-- Where: never a temporary schema (pg_temp first on the search_path), whose
-- table would vanish at disconnect, and never under a temporary table of the
-- same name, which the unqualified names below would reach first.
DO $place$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    target CONSTANT TEXT := pg_catalog.current_schema();
    resolved CONSTANT OID := pg_catalog.to_regclass('idempotency_records');
    -- what the unqualified name reaches, schema-qualified
    visible TEXT;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    SELECT format('%s.%I', c.relnamespace::REGNAMESPACE, c.relname)
    INTO visible
    FROM pg_class AS c
    WHERE c.oid = resolved;
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
    PERFORM set_config('search_path', saved_path, TRUE);
END
$place$;

CREATE TABLE IF NOT EXISTS idempotency_records (
    request_id UUID CONSTRAINT idempotency_records_pkey PRIMARY KEY,
    operation VARCHAR(100) NOT NULL,
    result_payload TEXT NOT NULL,
    status_code INTEGER,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT chk_expires_at CHECK (expires_at > created_at)
);

-- Guard: CREATE TABLE IF NOT EXISTS above kept any table that already had this
-- name. Only a table this file could have created passes: the six columns (type,
-- nullability, default), the primary key, chk_expires_at, a permanent ordinary
-- table owned by the role applying the file (another role's table could carry
-- code that a superuser calling the cleanup would run), with no trigger and no
-- rule. Columns and constraints a project added in its own later migrations are
-- left alone, so re-running this file stays safe after them.
DO $guard$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    target CONSTANT TEXT := pg_catalog.current_schema();
    resolved CONSTANT REGCLASS := pg_catalog.to_regclass('idempotency_records');
    tbl REGCLASS;
    rel RECORD;
    found_text TEXT;
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
    tbl := to_regclass(format('%I.idempotency_records', target));
    -- Where pg_temp is only pending on the search_path, current_schema() can
    -- still name a permanent schema while CREATE TABLE went to the temporary one.
    IF tbl IS NULL OR resolved IS DISTINCT FROM tbl THEN
        RAISE EXCEPTION 'idempotency_records does not resolve to %.idempotency_records', target
        USING
            ERRCODE = 'invalid_schema_name',
            DETAIL = format('found: %s; expected: %I.idempotency_records',
                coalesce(resolved::TEXT, 'nothing'), target),
            HINT = 'Apply the file with a search_path that starts with the target schema, and without pg_temp first.';
    END IF;

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
                'found: relkind %s, relpersistence %s; expected: relkind r, relpersistence p (a permanent, logged table)',
                rel.relkind, rel.relpersistence
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
    PERFORM set_config('search_path', saved_path, TRUE);
END
$guard$;

-- The indexes, each created only where no relation has its name yet. One of
-- that name must be exactly this index, valid: otherwise the file stops rather
-- than let the cleanup or the monitoring queries run on something else.
--   idx_idempotency_expires:   the cleanup's DELETE ... WHERE expires_at <= now()
--                              is a range scan on it.
--   idx_idempotency_operation: monitoring and analytics, counts by operation.
DO $indexes$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    target CONSTANT TEXT := pg_catalog.current_schema();
    wanted RECORD;
    existing RECORD;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
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
            EXECUTE wanted.definition;
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
    qualified := format('%I.idempotency_records', target);
    tbl := qualified::REGCLASS;
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
                'End of the record''s lifetime: it is no longer replayed after this instant and cleanup deletes it '
                || '(must be later than created_at).'
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
    PERFORM set_config('search_path', saved_path, TRUE);
END
$comments$;
