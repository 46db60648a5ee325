-- test_idempotency_migrations.sql: is this database's copy of migrations 045 and 046 the contract?
--
-- Run it with psql against any database, as a DBA:
--
--     psql -v ON_ERROR_STOP=1 --no-psqlrc -d "$DATABASE_URL" -f tests/test_idempotency_migrations.sql
--     pg_prove -d "$DATABASE_URL" tests/test_idempotency_migrations.sql
--
-- Variables (psql -v NAME=VALUE):
--     schema=NAME      the schema the migrations were applied to (default: the current schema)
--     catalog_only=1   only the catalog checks: for a role with SELECT only or a read-only replica
--     owner=NAME       the role that must own the table (default: the owner of the function)
--
-- It prints TAP (1..N, then "ok N - ..." or "not ok N - ...: found ..., expected ...") and exits
-- non-zero when any check is not ok. Plain SQL and psql, no extension.
--
-- First the catalog checks (read-only: pg_catalog only). Then, unless catalog_only is set, the
-- behaviour tests of the report's test script, corrected, in one transaction that is rolled back:
-- they insert their own rows under fresh random keys, lock only those, and leave nothing behind.
-- The cleanup test runs the cleanup function only when no expired record of the application's is
-- present (it would delete and lock those too, until the rollback); otherwise it is skipped.

\set QUIET on
\set ON_ERROR_STOP on

-- Another role's code never runs here. A role that can CREATE in a schema on the search_path
-- (public, before PostgreSQL 15) can add a function or operator whose argument types match a call
-- below exactly where the built-in needs a cast, and PostgreSQL prefers it to pg_catalog's whatever
-- the path order (CVE-2018-1058). So the script captures the schema first, with pg_catalog-qualified
-- calls only, then runs under search_path pg_catalog, pg_temp and names our objects by schema; the
-- session's search_path is restored at the end.
SELECT pg_catalog.current_setting('search_path') AS saved_search_path \gset
\if :{?schema}
\else
SELECT coalesce(pg_catalog.current_schema(), '') AS schema \gset
\endif
SET search_path = pg_catalog, pg_temp;
\if :{?owner}
\else
\set owner ''
\endif
\if :{?catalog_only}
\else
\set catalog_only off
\endif

-- The catalog checks, in order. `found` and `expected` are text; a check is ok when they are equal.
WITH
target AS (
    SELECT
        :'schema'::TEXT AS nsp,
        to_regclass(format('%I.idempotency_records', :'schema')) AS tbl,
        to_regprocedure(format('%I.cleanup_expired_idempotency_records()', :'schema')) AS fn
),

-- report test 1 (the table) and what makes it the contract's table
table_checks (sort, name, found, expected) AS (
    SELECT
        v.sort,
        v.name,
        v.found,
        v.expected
    FROM target AS t
    CROSS JOIN LATERAL (
        VALUES
        (
            1,
            format('schema %s is a permanent schema', t.nsp),
            CASE
                WHEN t.nsp = '' THEN 'no schema on the search_path'
                WHEN t.nsp ~ '^pg_(toast_)?temp_' THEN 'a temporary schema'
                ELSE 'a permanent schema'
            END,
            'a permanent schema'
        ),
        (
            2,
            'table idempotency_records exists (report test 1)',
            coalesce((SELECT 'table' FROM pg_class AS c WHERE c.oid = t.tbl AND c.relkind = 'r'), 'no table'),
            'table'
        ),
        (
            3,
            'table idempotency_records is permanent (logged)',
            coalesce(
                (
                    SELECT CASE c.relpersistence WHEN 'p' THEN 'permanent' WHEN 'u' THEN 'unlogged' ELSE 'temporary' END
                    FROM pg_class AS c
                    WHERE c.oid = t.tbl
                ),
                'no table'
            ),
            'permanent'
        ),
        (
            4,
            'table idempotency_records is owned by the owner of the function',
            coalesce((SELECT pg_get_userbyid(c.relowner)::TEXT FROM pg_class AS c WHERE c.oid = t.tbl), 'no table'),
            coalesce(
                nullif(:'owner', ''),
                (SELECT pg_get_userbyid(p.proowner)::TEXT FROM pg_proc AS p WHERE p.oid = t.fn),
                'no function'
            )
        ),
        (
            20,
            'primary key idempotency_records_pkey on request_id',
            coalesce(
                (
                    SELECT string_agg(format('%s %s', con.conname, pg_get_constraintdef(con.oid)), ', ')
                    FROM pg_constraint AS con
                    WHERE con.conrelid = t.tbl AND con.contype = 'p'
                ),
                'no primary key'
            ),
            'idempotency_records_pkey PRIMARY KEY (request_id)'
        ),
        (
            21,
            'check constraint chk_expires_at',
            coalesce(
                (
                    SELECT pg_get_constraintdef(con.oid)
                    FROM pg_constraint AS con
                    WHERE con.conrelid = t.tbl AND con.conname = 'chk_expires_at'
                ),
                'no constraint chk_expires_at'
            ),
            'CHECK ((expires_at > created_at))'
        ),
        (
            40,
            'no trigger on idempotency_records',
            coalesce(
                (
                    SELECT string_agg(tg.tgname, ', ' ORDER BY tg.tgname)
                    FROM pg_trigger AS tg
                    WHERE tg.tgrelid = t.tbl AND NOT tg.tgisinternal
                ),
                'none'
            ),
            'none'
        ),
        (
            41,
            'no rule on idempotency_records',
            coalesce(
                (SELECT string_agg(r.rulename, ', ' ORDER BY r.rulename) FROM pg_rewrite AS r WHERE r.ev_class = t.tbl),
                'none'
            ),
            'none'
        ),
        (
            50,
            'function cleanup_expired_idempotency_records() exists',
            CASE WHEN t.fn IS NULL THEN 'no function' ELSE 'function' END,
            'function'
        ),
        (
            51,
            'function returns TABLE(deleted_count bigint)',
            coalesce(pg_get_function_result(t.fn), 'no function'),
            'TABLE(deleted_count bigint)'
        ),
        (
            52,
            'function is plpgsql and SECURITY INVOKER',
            coalesce(
                (
                    SELECT format('%s, security %s', l.lanname, CASE WHEN p.prosecdef THEN 'definer' ELSE 'invoker' END)
                    FROM pg_proc AS p
                    INNER JOIN pg_language AS l ON p.prolang = l.oid
                    WHERE p.oid = t.fn
                ),
                'no function'
            ),
            'plpgsql, security invoker'
        ),
        (
            53,
            'function has its search_path pinned',
            coalesce(
                (
                    SELECT string_agg(setting, ', ')
                    FROM pg_proc AS p
                    CROSS JOIN LATERAL unnest(p.proconfig) AS setting
                    WHERE p.oid = t.fn AND setting LIKE 'search_path=%'
                ),
                'not pinned'
            ),
            format('search_path=pg_catalog, %I, pg_temp', t.nsp)
        ),
        (
            60,
            'comments on the table, its six columns and the function',
            coalesce(
                nullif(
                    concat_ws(
                        ', ',
                        CASE WHEN obj_description(t.tbl, 'pg_class') IS NULL THEN 'table' END,
                        (
                            SELECT string_agg(col.name, ', ' ORDER BY col.name)
                            FROM
                                unnest(
                                    ARRAY[
                                        'request_id', 'operation', 'result_payload',
                                        'status_code', 'created_at', 'expires_at'
                                    ]
                                ) AS col (name)
                            LEFT JOIN pg_attribute AS a ON a.attrelid = t.tbl AND a.attname = col.name
                            WHERE col_description(t.tbl, a.attnum) IS NULL
                        ),
                        CASE WHEN obj_description(t.fn, 'pg_proc') IS NULL THEN 'function' END
                    ),
                    ''
                ),
                'none missing'
            ),
            'none missing'
        )
    ) AS v (sort, name, found, expected)
),

-- every column: type, nullability, default
column_checks (sort, name, found, expected) AS (
    SELECT
        10 + w.ord,
        format('column %s', w.name),
        coalesce(
            (
                SELECT
                    format(
                        '%s %s%s',
                        format_type(a.atttypid, a.atttypmod),
                        CASE WHEN a.attnotnull THEN 'not null' ELSE 'null' END,
                        ' default ' || pg_get_expr(d.adbin, d.adrelid)
                    )
                FROM pg_attribute AS a
                LEFT JOIN pg_attrdef AS d ON a.attrelid = d.adrelid AND a.attnum = d.adnum
                WHERE a.attrelid = t.tbl AND a.attname = w.name AND NOT a.attisdropped
            ),
            'no column'
        ),
        w.expected
    FROM target AS t
    CROSS JOIN (
        VALUES
        (1, 'request_id', 'uuid not null'),
        (2, 'operation', 'character varying(100) not null'),
        (3, 'result_payload', 'text not null'),
        (4, 'status_code', 'integer null'),
        (5, 'created_at', 'timestamp with time zone not null default now()'),
        (6, 'expires_at', 'timestamp with time zone not null')
    ) AS w (ord, name, expected)
),

-- report test 2: the indexes, each with its definition, access method and validity
index_checks (sort, name, found, expected) AS (
    SELECT
        30 + w.ord,
        format('index %s (report test 2)', w.name),
        coalesce(
            (
                SELECT
                    coalesce(pg_get_indexdef(c.oid), 'relkind ' || c.relkind::TEXT)
                    || CASE WHEN i.indisvalid AND i.indisready THEN '' ELSE ' (INVALID)' END
                FROM pg_class AS c
                LEFT JOIN pg_index AS i ON c.oid = i.indexrelid
                WHERE c.relname = w.name AND c.relnamespace = to_regnamespace(t.nsp)
            ),
            'no index'
        ),
        format('CREATE %sINDEX %I ON %I.idempotency_records USING btree (%I)', w.uniq, w.name, t.nsp, w.col)
    FROM target AS t
    CROSS JOIN (
        VALUES
        (1, 'idempotency_records_pkey', 'request_id', 'UNIQUE '),
        (2, 'idx_idempotency_expires', 'expires_at', ''),
        (3, 'idx_idempotency_operation', 'operation', '')
    ) AS w (ord, name, col, uniq)
),

checks AS (
    SELECT * FROM table_checks
    UNION ALL
    SELECT * FROM column_checks
    UNION ALL
    SELECT * FROM index_checks
),

numbered AS (
    SELECT
        row_number() OVER (ORDER BY c.sort) AS n,
        c.name,
        c.found,
        c.expected,
        c.found IS NOT DISTINCT FROM c.expected AS ok
    FROM checks AS c
)

SELECT
    count(*) AS catalog_count,
    count(*) FILTER (WHERE NOT n.ok) AS catalog_failures,
    string_agg(
        CASE
            WHEN n.ok THEN format('ok %s - %s', n.n, n.name)
            -- TAP: a '#' in a description would start a directive
            ELSE format('not ok %s - %s: found %s, expected %s', n.n, n.name,
                replace(n.found, '#', '\#'), replace(n.expected, '#', '\#'))
        END,
        E'\n' ORDER BY n.n
    ) AS catalog_lines
FROM numbered AS n \gset

\set behaviour_count 0
\set behaviour_failures 0
\set behaviour_lines ''
\if :catalog_only
\else
BEGIN;
-- this script's own waits are bounded too
SET LOCAL lock_timeout = '2s';

-- The report's tests 3 to 10, one result row each. A temporary function, so that each test
-- catches its own error (a damaged table fails a test, never the script); the transaction's
-- ROLLBACK below removes it with every row the tests wrote. The schema is not on the search_path:
-- each statement names the table by schema, hence EXECUTE.
CREATE FUNCTION pg_temp.idempotency_behaviour(target TEXT)
RETURNS TABLE (name TEXT, ok BOOLEAN, detail TEXT)
LANGUAGE plpgsql
AS $behaviour$
DECLARE
    live_key UUID := gen_random_uuid();
    expired_key UUID := gen_random_uuid();
    tbl CONSTANT TEXT := format('%I.idempotency_records', target);
    -- the report's save query (IdempotencyRepository::save); $5 is the lifetime in hours
    save CONSTANT TEXT :=
        'INSERT INTO ' || tbl || ' (request_id, operation, result_payload, status_code, expires_at) '
        || 'VALUES ($1, $2, $3, $4, now() + INTERVAL ''1 hour'' * $5) '
        || 'ON CONFLICT (request_id) DO UPDATE SET operation = excluded.operation, '
        || 'result_payload = excluded.result_payload, status_code = excluded.status_code, '
        || 'expires_at = excluded.expires_at';
    test INTEGER;
    n BIGINT;
    seen TEXT;
    plan JSONB;
    failed_constraint TEXT;
BEGIN
    FOR test IN 3..10 LOOP
        BEGIN
            CASE test
            WHEN 3 THEN
                name := 'report test 3: a record is saved';
                EXECUTE save USING live_key, 'verify', '{"n": 1}', 201, 1;
                GET DIAGNOSTICS n = ROW_COUNT;
                ok := n = 1;
                detail := format('found %s rows saved, expected 1', n);
            WHEN 4 THEN
                name := 'report test 4: the saved record is read back';
                -- the report's get query (IdempotencyRepository::get)
                EXECUTE format(
                    'SELECT r.result_payload || '' '' || r.status_code FROM %s AS r '
                    || 'WHERE r.request_id = $1 AND r.expires_at > now()',
                    tbl
                ) INTO seen USING live_key;
                ok := seen IS NOT DISTINCT FROM '{"n": 1} 201';
                detail := format('found %s, expected {"n": 1} 201', coalesce(seen, 'no row'));
            WHEN 5 THEN
                name := 'report test 5: a second save of the same key replaces the record (one row)';
                EXECUTE save USING live_key, 'verify', '{"n": 2}', 200, 2;
                EXECUTE format(
                    'SELECT count(*) || '' row, '' || max(r.result_payload) FROM %s AS r WHERE r.request_id = $1',
                    tbl
                ) INTO seen USING live_key;
                ok := seen IS NOT DISTINCT FROM '1 row, {"n": 2}';
                detail := format('found %s, expected 1 row, {"n": 2}', seen);
            WHEN 6 THEN
                name := 'report test 6: an expired record is stored (created_at backdated)';
                EXECUTE format(
                    'INSERT INTO %s (request_id, operation, result_payload, created_at, expires_at) '
                    || 'VALUES ($1, ''verify'', ''{}'', now() - INTERVAL ''2 hours'', now() - INTERVAL ''1 hour'')',
                    tbl
                ) USING expired_key;
                GET DIAGNOSTICS n = ROW_COUNT;
                ok := n = 1;
                detail := format('found %s rows stored, expected 1', n);
            WHEN 7 THEN
                name := 'report test 7: the get query returns the live record and not the expired one';
                EXECUTE format(
                    'SELECT string_agg(r.request_id::TEXT, '', '') FROM %s AS r '
                    || 'WHERE r.request_id IN ($1, $2) AND r.expires_at > now()',
                    tbl
                ) INTO seen USING live_key, expired_key;
                ok := seen IS NOT DISTINCT FROM live_key::TEXT;
                detail := format('found %s, expected only %s', coalesce(seen, 'no row'), live_key);
            WHEN 8 THEN
                name := 'report test 8: the cleanup deletes the expired record, keeps the live one, counts 1';
                EXECUTE format(
                    'SELECT count(*) FROM %s AS r WHERE r.expires_at <= now() AND r.request_id <> $1', tbl
                ) INTO n USING expired_key;
                IF n > 0 THEN
                    ok := TRUE;
                    detail := format(
                        '# SKIP %s expired records of the application are present: the cleanup would lock them', n
                    );
                ELSE
                    EXECUTE format('SELECT c.deleted_count FROM %I.cleanup_expired_idempotency_records() AS c', target)
                    INTO n;
                    EXECUTE format(
                        'SELECT string_agg(r.request_id::TEXT, '', '') FROM %s AS r WHERE r.request_id IN ($1, $2)', tbl
                    ) INTO seen USING live_key, expired_key;
                    ok := (n, seen) IS NOT DISTINCT FROM (1::BIGINT, live_key::TEXT);
                    detail := format('found deleted_count %s, left %s, expected deleted_count 1, left %s',
                        n, coalesce(seen, 'no row'), live_key);
                END IF;
            WHEN 9 THEN
                name := 'report test 9: the get query can use idempotency_records_pkey, '
                    || 'the cleanup idx_idempotency_expires';
                -- "can use": with sequential scans off, on whatever data the table holds (EXPLAIN
                -- only, nothing runs). The plans the planner prefers on real data: the guide.
                PERFORM set_config('enable_seqscan', 'off', TRUE);
                EXECUTE format(
                    'EXPLAIN (FORMAT JSON) SELECT * FROM %s WHERE request_id = %L AND expires_at > now()',
                    tbl, live_key
                ) INTO plan;
                seen := CASE
                    WHEN jsonb_path_exists(plan, '$.** ? (@."Index Name" == "idempotency_records_pkey")')
                        THEN 'pkey'
                    ELSE 'no pkey'
                END;
                EXECUTE format('EXPLAIN (FORMAT JSON) DELETE FROM %s WHERE expires_at <= now()', tbl) INTO plan;
                seen := seen || CASE
                    WHEN jsonb_path_exists(plan, '$.** ? (@."Index Name" == "idx_idempotency_expires")')
                        THEN ', expires'
                    ELSE ', no expires'
                END;
                PERFORM set_config('enable_seqscan', 'on', TRUE);
                ok := seen = 'pkey, expires';
                detail := format('found %s, expected pkey, expires', seen);
            WHEN 10 THEN
                name := 'report test 10: chk_expires_at refuses expires_at not after created_at';
                EXECUTE format(
                    'INSERT INTO %s (request_id, operation, result_payload, created_at, expires_at) '
                    || 'VALUES (gen_random_uuid(), ''verify'', ''{}'', now(), now())',
                    tbl
                );
                ok := FALSE;
                detail := 'found the row stored, expected check_violation (23514) on chk_expires_at';
            END CASE;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS failed_constraint = CONSTRAINT_NAME;
            IF test = 10 THEN
                ok := (SQLSTATE, failed_constraint) IS NOT DISTINCT FROM ('23514'::TEXT, 'chk_expires_at'::TEXT);
                detail := format('found error %s on %s, expected 23514 on chk_expires_at', SQLSTATE, failed_constraint);
            ELSE
                ok := FALSE;
                detail := format('found error %s: %s, expected success', SQLSTATE, SQLERRM);
            END IF;
        END;
        RETURN NEXT;
    END LOOP;
END
$behaviour$;

SELECT
    count(*) AS behaviour_count,
    count(*) FILTER (WHERE NOT b.ok) AS behaviour_failures,
    string_agg(
        CASE
            WHEN b.ok AND b.detail LIKE '# SKIP%' THEN format('ok %s - %s %s', :catalog_count + b.n, b.name, b.detail)
            WHEN b.ok THEN format('ok %s - %s', :catalog_count + b.n, b.name)
            ELSE format('not ok %s - %s: %s', :catalog_count + b.n, b.name, replace(b.detail, '#', '\#'))
        END,
        E'\n' ORDER BY b.n
    ) AS behaviour_lines
FROM pg_temp.idempotency_behaviour(:'schema') WITH ORDINALITY AS b (name, ok, detail, n) \gset

ROLLBACK;
\endif

SELECT
    :catalog_count + :behaviour_count AS total,
    :catalog_failures + :behaviour_failures AS failures,
    :catalog_failures + :behaviour_failures = 0 AS passed \gset
\echo 1..:total
\echo :catalog_lines
\if :catalog_only
\else
\echo :behaviour_lines
\endif
\if :passed
\else
\echo '#' :failures of :total checks not ok
SELECT format(
    'DO $fail$ BEGIN RAISE EXCEPTION %L; END $fail$',
    format('idempotency_records verification failed: %s of %s checks not ok', :failures, :total)
) \gexec
\endif

-- the session's own search_path again (for a DBA who runs the script with \i in a session)
SELECT pg_catalog.set_config('search_path', :'saved_search_path', FALSE) AS restored_search_path \gset
