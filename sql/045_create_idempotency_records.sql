-- 045_create_idempotency_records.sql
--
-- Creates the table idempotency_records (one row per idempotency key), its
-- primary key, the check chk_expires_at, the indexes idx_idempotency_expires
-- and idx_idempotency_operation, and comments on the table and its columns,
-- in the first schema of the search_path.
-- Reverse: 045_create_idempotency_records.down.sql
-- Apply:   psql -v ON_ERROR_STOP=1 --no-psqlrc -1
--          -f sql/045_create_idempotency_records.sql
--
-- No BEGIN/COMMIT, no psql meta-commands: a runner may wrap the file in its
-- own transaction. Re-runnable by design (pipelines apply files again): it
-- creates only what is missing, and stops, changing nothing, where what is
-- there is not what it creates (IF NOT EXISTS alone only checks a name).
-- docs/reliability.md, "How the files are built", explains its two
-- statements and the three rules of the four files.

-- 1. Marks this file's checks as not passed in this session: a statement of
-- its own, as an error undoes its statement's settings. A refused file's mark
-- stops this file.
DO $mark$
DECLARE
    this_file CONSTANT TEXT := '045_create_idempotency_records.sql';
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

-- 2. The schema, then the checks, then what is missing is created: one
-- statement, which takes the lock once and leaves nothing when it refuses.
DO $migrate$
DECLARE
    create_table CONSTANT TEXT := '
    CREATE TABLE IF NOT EXISTS idempotency_records (
        request_id UUID CONSTRAINT idempotency_records_pkey PRIMARY KEY,
        operation VARCHAR(100) NOT NULL,
        result_payload TEXT NOT NULL,
        status_code INTEGER,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        expires_at TIMESTAMPTZ NOT NULL,
        CONSTRAINT chk_expires_at CHECK (expires_at > created_at)
    )';
    -- As pg_get_indexdef prints them, but for the schema. The cleanup's
    -- DELETE ... WHERE expires_at <= now() is a range scan on the first; the
    -- second serves monitoring (counts by operation).
    create_indexes CONSTANT TEXT [] := ARRAY[
        'CREATE INDEX idx_idempotency_expires ON idempotency_records'
        ' USING btree (expires_at)',
        'CREATE INDEX idx_idempotency_operation ON idempotency_records'
        ' USING btree (operation)'
    ];
    comments CONSTANT TEXT [] := ARRAY[
        ['', 'Stores idempotency records for duplicate request prevention: '
            'the stored result of each request, replayed when the same '
            'request_id is seen again before expires_at.'],
        ['request_id', 'Unique request identifier (idempotency key) sent by '
            'the client.'],
        ['operation', 'Name of the operation the request performed, e.g. '
            'payment or transfer (at most 100 characters).'],
        ['result_payload', 'Result of the first execution, replayed to '
            'duplicates (JSON text).'],
        ['status_code', 'HTTP status code of the first execution; NULL when '
            'not applicable.'],
        ['created_at', 'When the record was stored.'],
        ['expires_at', 'End of the record''s lifetime: it is no longer '
            'replayed after this instant and cleanup deletes it (must be '
            'later than created_at).']
    ];
    -- The six columns and the two constraints as the catalog shows them.
    wanted CONSTANT TEXT := 'created_at timestamp with time zone not null '
    'default now(), expires_at timestamp with time zone not null, operation '
    'character varying(100) not null, request_id uuid not null, '
    'result_payload text not null, status_code integer null; chk_expires_at '
    'CHECK ((expires_at > created_at)), idempotency_records_pkey PRIMARY KEY '
    '(request_id)';
    names CONSTANT TEXT [] := ARRAY(
        SELECT pg_catalog.unnest(comments[2:][1:1]));
    this_file CONSTANT TEXT := '045_create_idempotency_records.sql';
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    target CONSTANT TEXT := pg_catalog.current_schema();
    qualified CONSTANT TEXT := pg_catalog.format('%I.idempotency_records',
        target);
    resolved REGCLASS;
    tbl REGCLASS;
    visible TEXT;
    seen RECORD;
    refused RECORD;
    ddl TEXT;
    index_name TEXT;
    idx REGCLASS;
    pair TEXT [];
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    -- One deployer at a time, waiting at most lock_timeout (rule 1). The lock
    -- on pg_seclabel applies the previous deployer's catalog changes.
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

    -- What the unqualified name reaches, under the caller's search_path.
    PERFORM set_config('search_path', saved_path, TRUE);
    resolved := pg_catalog.to_regclass('idempotency_records');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    tbl := to_regclass(qualified);
    SELECT format('%s.%I', c.relnamespace::REGNAMESPACE, c.relname)
    INTO visible FROM pg_class AS c WHERE c.oid = resolved;

    -- What the table that is there holds; the types of a project's own
    -- columns, with their domains' and arrays' types.
    WITH RECURSIVE cols AS (
        SELECT a.*, a.attname::TEXT = ANY (names) AS six FROM pg_attribute AS a
        WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped
    ),

    own_types (typ) AS (
        SELECT cols.atttypid FROM cols WHERE NOT cols.six
        UNION
        SELECT unnest(ARRAY[t.typbasetype, t.typelem])
        FROM own_types AS o INNER JOIN pg_type AS t ON o.typ = t.oid
    )

    SELECT
        c.oid,
        pg_get_userbyid(c.relowner) AS owner,
        format('relkind %s, relpersistence %s', c.relkind, c.relpersistence)
            AS kind,
        concat_ws('; ', (SELECT string_agg(format('%s %s%s %s%s', a.attname,
            format_type(a.atttypid, a.atttypmod), ' collate '
            || nullif(a.attcollation, t.typcollation)::REGCOLLATION,
            CASE WHEN a.attnotnull THEN 'not null' ELSE 'null' END,
            ' default ' || pg_get_expr(d.adbin, d.adrelid)), ', '
            ORDER BY a.attname)
            FROM cols AS a INNER JOIN pg_type AS t ON a.atttypid = t.oid
            LEFT JOIN pg_attrdef AS d
                ON a.attrelid = d.adrelid AND a.attnum = d.adnum
            WHERE a.six), coalesce((SELECT string_agg(format('%s %s',
                k.conname, pg_get_constraintdef(k.oid)), ', '
                ORDER BY k.conname)
            FROM pg_constraint AS k WHERE k.conrelid = tbl AND (k.contype = 'p'
                OR k.conname IN ('idempotency_records_pkey', 'chk_expires_at'))
        ), 'no primary key or check')) AS columns,
        (SELECT string_agg(w, ', ' ORDER BY w) FROM (
            SELECT 'trigger ' || g.tgname FROM pg_trigger AS g
            WHERE g.tgrelid = tbl AND NOT g.tgisinternal
            UNION ALL
            SELECT 'rule ' || r.rulename FROM pg_rewrite AS r
            WHERE r.ev_class = tbl) AS s (w)) AS code,
        -- What a project may not add (the verification script's rules): it
        -- runs code for whoever writes or cleans up the table, refuses saves
        -- the contract accepts, or hides or keeps records.
        (SELECT string_agg(DISTINCT w, '; ') FROM (
            SELECT format('constraint %I on %s %s', k.conname,
                k.conrelid::REGCLASS, pg_get_constraintdef(k.oid))
            FROM pg_constraint AS k
            WHERE k.conrelid = tbl AND k.contype NOT IN ('p', 'n')
                AND k.conname <> 'chk_expires_at'
                OR k.contype = 'f' AND k.confrelid = tbl
            UNION ALL
            SELECT format('%s inherits from %s', i.inhrelid::REGCLASS,
                i.inhparent::REGCLASS)
            FROM pg_inherits AS i WHERE tbl IN (i.inhrelid, i.inhparent)
            UNION ALL
            SELECT 'row security'
            WHERE c.relrowsecurity OR c.relforcerowsecurity
            UNION ALL
            SELECT 'policy ' || quote_ident(p.polname)
            FROM pg_policy AS p WHERE p.polrelid = tbl
            UNION ALL
            SELECT format('%s held by %s', g.privilege_type, coalesce(
                pg_get_userbyid(nullif(g.grantee, 0))::TEXT, 'PUBLIC'))
            FROM aclexplode(c.relacl) AS g
            WHERE g.privilege_type IN ('TRIGGER', 'REFERENCES')
                AND g.grantee <> c.relowner
            UNION ALL
            SELECT format('column %I not null without a default', a.attname)
            FROM cols AS a WHERE NOT a.six AND a.attnotnull AND NOT a.atthasdef
                AND a.attidentity = ''
            UNION ALL
            SELECT 'unique index ' || quote_ident(x.relname)
            FROM pg_index AS i INNER JOIN pg_class AS x ON i.indexrelid = x.oid
            WHERE i.indrelid = tbl AND i.indisunique
                AND x.relname <> 'idempotency_records_pkey'
            UNION ALL
            SELECT format('%s calls %s', pg_describe_object(d.classid, d.objid,
                0), pg_describe_object(d.refclassid, d.refobjid, 0))
            FROM pg_depend AS d
            WHERE d.refobjid >= 16384 AND d.refclassid IN ('pg_proc'::REGCLASS,
                'pg_operator'::REGCLASS, 'pg_opclass'::REGCLASS)
                AND d.objid IN (
                    SELECT x.oid FROM pg_attrdef AS x WHERE x.adrelid = tbl
                    UNION ALL
                    SELECT x.indexrelid FROM pg_index AS x
                    WHERE x.indrelid = tbl
                    UNION ALL
                    SELECT o.typ FROM own_types AS o
                    UNION ALL
                    SELECT x.oid FROM pg_constraint AS x
                    WHERE x.contypid IN (SELECT o.typ FROM own_types AS o))
        ) AS s (w)) AS additions
    INTO seen
    FROM pg_class AS c WHERE c.oid = tbl;

    -- The checks, in order: the first that fails stops the file.
    SELECT v.* INTO refused FROM (VALUES
        -- Under REPEATABLE READ or SERIALIZABLE the snapshot, taken before
        -- the wait for the lock, misses what the previous deployer did.
        (1, resolved IS NOT NULL AND visible IS NULL
            OR tbl IS DISTINCT FROM seen.oid, '40001', 'idempotency_records '
            'changed after this transaction''s snapshot was taken',
            'transaction_isolation ' || current_setting('transaction_isolation')
            || ', and the table changed by another session since',
            'a snapshot that shows it', 'Nothing was applied. Apply the file '
            'again, or under READ COMMITTED.'),
        -- Never a temporary schema (pg_temp first on the search_path), nor
        -- under a temporary table of this name, nor a second copy beside an
        -- install in another schema of the search_path.
        (2, concat(target, ' ', visible) ~ '(^| )pg_(toast_)?temp_', '3F000',
            'idempotency_records would be created in or resolved to a '
            'temporary schema', format('current schema %s, '
                'idempotency_records resolves to %s', target,
                coalesce(visible, 'nothing')), 'a permanent schema',
            'Apply the file with the target schema first on the search_path, '
            'in a session without a temporary idempotency_records.'),
        (3, tbl IS NULL AND visible IS NOT NULL, '42P07',
            'idempotency_records is installed in another schema than '
            || target, format('%s, while the search_path would create a '
                'second one in schema %s, its first', visible, target),
            format('idempotency_records in schema %s, or in none of the '
                'search_path', target),
            format('Apply 045 and 046 with the search_path of the install, '
                'or drop or rename schema %I if it was created by mistake.',
                target)),
        -- The table that is there is one this file could have created, owned
        -- by the role applying it (another role's table could carry code
        -- that a superuser calling the cleanup would run).
        (4, seen.owner <> current_user, '42501',
            format('table %s is owned by another role', qualified),
            'owner ' || seen.owner,
            format('owner %s (the role applying 045)', current_user),
            'Check the table (triggers, rules, policies, grants), then apply '
            'the files as its owner, or give it to the migration role.'),
        (5, seen.code IS NOT NULL, '55000',
            format('table %s has triggers or rules', qualified), seen.code,
            'no trigger and no rule', 'Review and drop it (a trigger runs as '
            'whoever writes or cleans up the table), then apply 045 again.'),
        (6, seen.kind <> 'relkind r, relpersistence p', '42P07',
            format('table %s already exists with another persistence or kind',
                qualified), seen.kind,
            'relkind r, relpersistence p',
            'For an UNLOGGED table: ALTER TABLE idempotency_records SET '
            'LOGGED (a rewrite under an ACCESS EXCLUSIVE lock), then apply '
            '045 again.'),
        (7, seen.columns IS DISTINCT FROM wanted, '42P07',
            format('table %s already exists with other columns or '
                'constraints', qualified), seen.columns, wanted,
            'Rename or drop the table, or restore what differs as 045 defines '
            'it, then apply 045 again.'),
        (8, seen.additions IS NOT NULL, '55000',
            format('table %s has additions that change what it promises',
                qualified), seen.additions, 'none', 'Drop or revoke what is '
            'found, then apply 045 again. What a project may add: '
            'docs/README_IDEMPOTENCY.md, "Adopting an existing database".')
    ) AS v (n, failed, code, message, found, expected, hint)
    WHERE v.failed AND (v.n <= 3 OR tbl IS NOT NULL) ORDER BY v.n LIMIT 1;
    IF FOUND THEN
        RAISE USING MESSAGE = refused.message, ERRCODE = refused.code,
        DETAIL = format('found: %s; expected: %s', refused.found,
            refused.expected), HINT = refused.hint;
    END IF;

    IF tbl IS NULL THEN
        PERFORM set_config('search_path', saved_path, TRUE);
        EXECUTE create_table;
        resolved := pg_catalog.to_regclass('idempotency_records');
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp',
            TRUE);
        tbl := to_regclass(qualified);
        -- With pg_temp first on the search_path but no temporary table yet,
        -- current_schema() names a permanent schema while the table went to
        -- the temporary one: the error undoes it.
        IF tbl IS NULL OR resolved IS DISTINCT FROM tbl THEN
            RAISE EXCEPTION 'idempotency_records does not resolve to %',
            qualified
            USING ERRCODE = '3F000', DETAIL = format('found: %s; expected: %s',
                coalesce(resolved::TEXT, 'nothing'), qualified),
            HINT = 'Apply the file with a search_path that starts with the '
            'target schema, and without pg_temp first.';
        END IF;
    END IF;

    -- An index is created where no relation has its name; a relation of that
    -- name must be that index, valid (storage parameters are the project's).
    -- Read by oid, as the catalog is now (a snapshot may be older).
    FOREACH ddl IN ARRAY create_indexes LOOP
        ddl := replace(ddl, ' ON idempotency_records ', ' ON ' || qualified
            || ' ');
        index_name := split_part(ddl, ' ', 3);
        idx := to_regclass(format('%I.%I', target, index_name));
        IF idx IS NULL THEN
            EXECUTE ddl;
        ELSIF regexp_replace(pg_get_indexdef(idx), ' WITH \([^()]*\)', '')
            IS DISTINCT FROM ddl THEN
            RAISE EXCEPTION 'relation %.% already exists with another '
            'definition', target, index_name
            USING ERRCODE = '42P07', DETAIL = format('found: %s; expected: %s',
                coalesce(pg_get_indexdef(idx), 'not an index'), ddl),
            HINT = format('Drop or rename %I (DROP INDEX CONCURRENTLY takes '
                'no lock that blocks writes), then apply 045 again.',
                index_name);
        ELSIF NOT (SELECT i.indisvalid AND i.indisready FROM pg_index AS i
            WHERE i.indexrelid = idx) THEN
            RAISE EXCEPTION 'index %.% is invalid', target, index_name
            USING ERRCODE = '55000', DETAIL = 'found: indisvalid or '
            'indisready false; expected: a valid index (a failed CREATE INDEX '
            'CONCURRENTLY leaves an invalid one)', HINT = format('Outside a '
                'transaction block: DROP INDEX CONCURRENTLY %I; then %s, '
                'written CREATE INDEX CONCURRENTLY; then apply 045 again.',
                index_name, ddl);
        END IF;
    END LOOP;

    -- Each comment only where it differs: COMMENT ON takes a SHARE UPDATE
    -- EXCLUSIVE lock on the table, which waits for (auto)vacuum.
    FOREACH pair SLICE 1 IN ARRAY comments LOOP
        IF (CASE pair[1] WHEN '' THEN obj_description(tbl, 'pg_class')
            ELSE col_description(tbl, (SELECT a.attnum FROM pg_attribute AS a
                WHERE a.attrelid = tbl AND a.attname = pair[1])) END)
            IS DISTINCT FROM pair[2] THEN
            EXECUTE format('COMMENT ON %s IS %L', CASE pair[1] WHEN '' THEN
                'TABLE ' || qualified ELSE format('COLUMN %s.%I', qualified,
                    pair[1]) END, pair[2]);
        END IF;
    END LOOP;
    PERFORM set_config('idempotency.pending_guard', '', FALSE);
    PERFORM set_config('search_path', saved_path, TRUE);
END
$migrate$;
