-- test_idempotency_migrations.sql: does this database hold what migrations 045 and 046 promise,
-- and nothing that changes it? And, where it is installed, all of the optional 047 as it ships?
--
-- Run it with psql against any database, as a DBA:
--
--     psql -v ON_ERROR_STOP=1 --no-psqlrc -d "$DATABASE_URL" -f tests/test_idempotency_migrations.sql
--     pg_prove -d "$DATABASE_URL" tests/test_idempotency_migrations.sql
--
-- Variables (psql -v NAME=VALUE):
--     schema=NAME      the schema the migrations were applied to, spelled as it is (App, my schema,
--                      a.b), not quoted (default: the current schema, the first of the search_path)
--     catalog_only=1   only the catalog checks, which write nothing: for a role with SELECT only, a
--                      busy table, a replica
--     owner=NAME       the role that must own the table and the function, and that you trust
--                      (default: the function's owner, which must be you or a superuser)
--
-- It prints TAP (1..N, then "ok N - ..." or "not ok N - ...: found ..., expected ...", with
-- "# note: ..." and "# HINT: ..." lines) and exits non-zero when any check is not ok. Plain SQL
-- and psql, no extension. Every run prints the same tests in the same order; a test that does not
-- run is printed "ok N - ... # SKIP <why>". When even the catalog cannot be read within
-- lock_timeout (the table held in ACCESS EXCLUSIVE mode), it prints "Bail out!" and exits non-zero.
--
-- The rule. A check fails on anything that changes what the contract promises: which rows are
-- unique, which values are accepted, which rows the cleanup deletes, who sees which rows, what code
-- runs when the table is written or the function called, how the function behaves (its body, every
-- setting and attribute). 047, the optional protocol, is all there or not at all: where any of it is,
-- its two columns and four functions are checked as the function is, and its own tests run; where
-- none of it is, they print "# SKIP". Project additions that change none of it are noted ("# note:") and pass:
-- an extra column the save can leave out (nullable, or with a built-in default), an extra non-unique
-- index on the table's own values, storage parameters, statistics targets. docs/README_IDEMPOTENCY.md
-- ("Verification") lists every case.
--
-- First the catalog checks: they read pg_catalog only, and run no code but the built-ins. Then the
-- behaviour tests of the report's test script, corrected, in one REPEATABLE READ transaction that
-- is rolled back: they write only rows under fresh random keys and lock only those. They are
-- skipped, with the reason, when catalog_only is set, in a read-only session or on a hot standby,
-- for a role without the application's grants, and when a catalog check failed: the table or the
-- function could then run another role's code.
--
-- Another role's code never runs here:
--   * The script captures the schema first, with pg_catalog-qualified calls only, then runs under
--     search_path pg_catalog, pg_temp and names our objects by schema. A role that can CREATE in a
--     schema on the search_path (public, before PostgreSQL 15) can add a function or operator whose
--     argument types match a call exactly where the built-in needs a cast, and PostgreSQL prefers it
--     to pg_catalog's whatever the path order (CVE-2018-1058); functions are never looked up in
--     pg_temp. The session's search_path and lock_timeout are restored at the end.
--   * It executes no DDL (an event trigger has nothing to fire on): the behaviour tests are a DO
--     block, which hands its results back through a transaction-local setting.
--   * The behaviour tests take the table's ROW EXCLUSIVE lock (the lock every INSERT takes; no
--     application statement waits on it) before the catalog checks read the catalog, so no trigger,
--     rule, policy, default or constraint can be added between the checks and the tests.
--
-- No application statement waits on it: every statement waits for a lock at most lock_timeout (2s
-- unless the session sets one), and the cleanup test runs only when the transaction's snapshot holds
-- no expired record but the script's own. Under REPEATABLE READ the cleanup sees that same snapshot
-- (the script sets idempotency.cleanup_in_snapshot, without which the function refuses any level but
-- READ COMMITTED), so it cannot lock a row of the application's, not even one that expires or is
-- stored while the script runs.

\set QUIET on
\set ON_ERROR_STOP on

-- What 046 creates, which the catalog checks compare. tests/verify/test_verify_contract.py applies 046 and
-- fails until these equal what it creates: when 046 changes the function, update these two lines.
--   function_body_sha256  sha256 of the function's body (pg_proc.prosrc, line ends as \n)
--   function_settings     its settings (pg_proc.proconfig), sorted, joined by '; '; %1$I is the schema
\set function_body_sha256 9292f5cf221024caf5fc55c2d18e7dad3008b543558dfc03524a891a4238be22
\set function_settings 'search_path=pg_catalog, %1$I, pg_temp'
-- What 047 creates, compared where it is installed, checked by the same test: the sha256 of each
-- function's body, and the settings of the three that wait for locks (idempotency_key's are
-- function_settings).
\set claim_body_sha256 6bc91391e6607d319871164e490b32ef5e5e7b6d0bc5048aed012390f7fb934e
\set complete_body_sha256 d4c964d250459e9e283ee3bd7243efc73ffe20cb2ca85852737c3a1347faf7bb
\set release_body_sha256 7046d4218cdc437236f4370c42fb0e0757a4fe0411a0b4e60f56c0399ebe50d4
\set key_body_sha256 041bf46fe86bba3a1daf6e29f09c763f3dc22a56fe29a0587703283babdd29e8
\set protocol_settings 'lock_timeout=100ms; search_path=pg_catalog, %1$I, pg_temp'

SELECT
    pg_catalog.current_setting('search_path') AS saved_search_path,
    pg_catalog.current_setting('lock_timeout') AS saved_lock_timeout \gset
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

-- Every wait for a lock is bounded: the session's own lock_timeout, or 2s.
SELECT CASE current_setting('lock_timeout') WHEN '0' THEN '2s' ELSE current_setting('lock_timeout') END AS lock_timeout
\gset
SET lock_timeout = :'lock_timeout';

-- Whether the behaviour tests can run at all (an empty reason: yes, if the catalog checks pass),
-- and the table to lock for them.
SELECT
    format('%I.idempotency_records', :'schema'::TEXT) AS target_table,
    format('%I.cleanup_expired_idempotency_records()', :'schema'::TEXT) AS target_function,
    w.reason AS behaviour_skip_reason,
    w.reason = '' AS take_lock
FROM (
    SELECT
        CASE
            WHEN :'catalog_only'::BOOLEAN THEN 'catalog_only is set: the behaviour tests write rows'
            WHEN pg_is_in_recovery() THEN 'a hot standby (in recovery): the behaviour tests write rows'
            WHEN current_setting('transaction_read_only')::BOOLEAN
                THEN 'a read-only session (default_transaction_read_only is on): the behaviour tests write rows'
            WHEN c.oid IS NULL OR c.relkind <> 'r' OR p.oid IS NULL THEN 'no table and function to test'
            ELSE coalesce(
                'role ' || current_user::TEXT || ' lacks '
                || nullif(
                    concat_ws(
                        ', ',
                        CASE WHEN NOT has_schema_privilege(n.oid, 'USAGE') THEN 'USAGE on the schema' END,
                        CASE WHEN NOT has_table_privilege(c.oid, 'SELECT') THEN 'SELECT' END,
                        CASE WHEN NOT has_table_privilege(c.oid, 'INSERT') THEN 'INSERT' END,
                        CASE WHEN NOT has_table_privilege(c.oid, 'DELETE') THEN 'DELETE' END,
                        (
                            SELECT 'UPDATE (' || string_agg(a.attname::TEXT, ', ' ORDER BY a.attnum) || ')'
                            FROM pg_attribute AS a
                            WHERE
                                a.attrelid = c.oid
                                AND a.attname IN ('operation', 'result_payload', 'status_code', 'expires_at')
                                AND NOT a.attisdropped
                                AND NOT has_column_privilege(c.oid, a.attnum, 'UPDATE')
                        ),
                        CASE WHEN NOT has_function_privilege(p.oid, 'EXECUTE') THEN 'EXECUTE on the function' END
                    ),
                    ''
                )
                || ': the behaviour tests need the grants of the guide''s application role',
                ''
            )
        END AS reason
    FROM (VALUES (1)) AS one (x)
    LEFT JOIN pg_namespace AS n ON n.nspname = :'schema'
    LEFT JOIN pg_class AS c ON c.relnamespace = n.oid AND c.relname = 'idempotency_records'
    LEFT JOIN pg_proc AS p
        ON p.pronamespace = n.oid AND p.proname = 'cleanup_expired_idempotency_records' AND p.pronargs = 0
) AS w \gset

-- Whether 047 is there (any of its columns or functions), and whether its tests can run: the
-- protocol client's grants of docs/protocol.md.
SELECT
    w.installed AS protocol_installed,
    CASE
        WHEN NOT w.installed THEN '047, the optional protocol, is not installed'
        ELSE coalesce(
            'role ' || current_user::TEXT || ' lacks ' || nullif(w.lacking, '')
            || ': the protocol''s tests need the grants of docs/protocol.md',
            ''
        )
    END AS protocol_skip_reason
FROM (
    SELECT
        EXISTS (
            SELECT FROM pg_proc AS p
            WHERE p.pronamespace = n.oid AND p.proname IN ('idempotency_claim', 'idempotency_complete', 'idempotency_release', 'idempotency_key')
        )
        OR EXISTS (
            SELECT FROM pg_attribute AS a
            WHERE a.attrelid = c.oid AND a.attname IN ('request_hash', 'lease_token') AND NOT a.attisdropped
        ) AS installed,
        concat_ws(
            ', ',
            (
                SELECT 'UPDATE (' || string_agg(a.attname::TEXT, ', ' ORDER BY a.attnum) || ')'
                FROM pg_attribute AS a
                WHERE
                    a.attrelid = c.oid
                    AND a.attname IN ('created_at', 'request_hash', 'lease_token')
                    AND NOT a.attisdropped
                    AND NOT has_column_privilege(c.oid, a.attnum, 'UPDATE')
            ),
            (
                SELECT 'EXECUTE on ' || string_agg(p.proname::TEXT, ', ' ORDER BY p.proname)
                FROM pg_proc AS p
                WHERE
                    p.pronamespace = n.oid
                    AND p.proname IN ('idempotency_claim', 'idempotency_complete')
                    AND NOT has_function_privilege(p.oid, 'EXECUTE')
            )
        ) AS lacking
    FROM (VALUES (1)) AS one (x)
    LEFT JOIN pg_namespace AS n ON n.nspname = :'schema'
    LEFT JOIN pg_class AS c ON c.relnamespace = n.oid AND c.relname = 'idempotency_records'
) AS w \gset

-- One transaction for the catalog checks and the behaviour tests, rolled back at the end. The lock
-- comes first: a REPEATABLE READ transaction takes its snapshot at its first query, so the catalog
-- the checks read is the one the lock then keeps from changing.
BEGIN ISOLATION LEVEL REPEATABLE READ;
\if :take_lock
\set ON_ERROR_STOP off
LOCK TABLE ONLY :target_table IN ROW EXCLUSIVE MODE;
\set ON_ERROR_STOP on
\if :ERROR
ROLLBACK;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT
    format(
        'the table''s ROW EXCLUSIVE lock was not granted within lock_timeout %s (%s: %s): run the script again',
        :'lock_timeout', :'LAST_ERROR_SQLSTATE', :'LAST_ERROR_MESSAGE'
    ) AS behaviour_skip_reason \gset
\endif
\endif

-- The catalog checks, in order. `found` and `expected` are text; a check is ok when they are equal.
-- An error here (a lock not granted within lock_timeout: pg_get_expr, pg_get_indexdef and
-- pg_get_constraintdef take the table's ACCESS SHARE lock) stops the script with TAP's "Bail out!"
-- and a non-zero exit: no verdict.
-- `hint` is printed under a check that is not ok; `notes` (below) under their check, ok or not.
-- "Another role's code": a function, operator or operator class created after initdb (OID 16384 and
-- up, FirstNormalObjectId), found through pg_depend, which records what an expression uses.
\set ON_ERROR_STOP off
WITH RECURSIVE
target AS (
    SELECT
        :'schema'::TEXT AS nsp_name,
        n.oid AS nsp,
        c.oid AS tbl,
        p.oid AS fn,
        nullif(:'owner', '') AS owner_named
    FROM (VALUES (1)) AS one (x)
    LEFT JOIN pg_namespace AS n ON n.nspname = :'schema'
    LEFT JOIN pg_class AS c ON c.relnamespace = n.oid AND c.relname = 'idempotency_records'
    LEFT JOIN pg_proc AS p
        ON p.pronamespace = n.oid AND p.proname = 'cleanup_expired_idempotency_records' AND p.pronargs = 0
),

contract_columns (ord, name, expected) AS (
    VALUES
    (1, 'request_id', 'uuid not null'),
    (2, 'operation', 'character varying(100) not null'),
    (3, 'result_payload', 'text not null'),
    (4, 'status_code', 'integer null'),
    (5, 'created_at', 'timestamp with time zone not null default now()'),
    (6, 'expires_at', 'timestamp with time zone not null')
),

contract_indexes (ord, name, col, uniq) AS (
    VALUES
    (1, 'idempotency_records_pkey', 'request_id', 'UNIQUE '),
    (2, 'idx_idempotency_expires', 'expires_at', ''),
    (3, 'idx_idempotency_operation', 'operation', '')
),

-- what 047 creates where it is installed: its columns, and its functions with their arguments as
-- pg_get_function_arguments prints them, result, attributes, settings and the sha256 of their body
protocol_columns (ord, name, expected) AS (
    VALUES
    (1, 'request_hash', 'bytea null'),
    (2, 'lease_token', 'uuid null')
),

protocol_functions (ord, name, arguments, expected, settings, sha) AS (
    VALUES
    (
        1, 'idempotency_claim',
        'request_id uuid, operation character varying, request_hash bytea, lease interval, OUT outcome text, '
        || 'OUT token uuid, OUT result_payload text, OUT status_code integer',
        'returns record, plpgsql, security invoker, volatile, not strict, parallel unsafe',
        :'protocol_settings', :'claim_body_sha256'
    ),
    (
        2, 'idempotency_complete', 'request_id uuid, token uuid, result_payload text, status_code integer, ttl interval',
        'returns boolean, plpgsql, security invoker, volatile, not strict, parallel unsafe',
        :'protocol_settings', :'complete_body_sha256'
    ),
    (
        3, 'idempotency_release', 'request_id uuid, token uuid',
        'returns boolean, plpgsql, security invoker, volatile, not strict, parallel unsafe',
        :'protocol_settings', :'release_body_sha256'
    ),
    (
        4, 'idempotency_key', 'scope text, client_key text',
        'returns uuid, plpgsql, security invoker, immutable, not strict, parallel safe',
        :'function_settings', :'key_body_sha256'
    )
),

-- every column of the table: how 045 would print it, and what in it is another role's code
columns AS (
    SELECT
        a.attnum,
        a.attname::TEXT AS name,
        a.attnotnull,
        d.oid IS NOT NULL AND a.attgenerated = '' AS has_default,
        a.attidentity <> '' AS is_identity,
        a.attgenerated <> '' AS is_generated,
        a.atttypid,
        concat(
            format_type(a.atttypid, a.atttypmod),
            CASE WHEN a.attcollation NOT IN (0, ty.typcollation) THEN ' collate ' || quote_ident(co.collname) END,
            CASE WHEN a.attnotnull THEN ' not null' ELSE ' null' END,
            CASE WHEN a.attgenerated = '' THEN ' default ' || pg_get_expr(d.adbin, d.adrelid) END,
            CASE a.attidentity
                WHEN 'a' THEN ' generated always as identity'
                WHEN 'd' THEN ' generated by default as identity'
            END,
            CASE a.attgenerated
                WHEN 's' THEN ' generated always as (' || pg_get_expr(d.adbin, d.adrelid) || ') stored'
                WHEN 'v' THEN ' generated always as (' || pg_get_expr(d.adbin, d.adrelid) || ') virtual'
            END
        ) AS shape,
        (
            SELECT string_agg(DISTINCT pg_describe_object(dep.refclassid, dep.refobjid, 0), ', ')
            FROM pg_depend AS dep
            WHERE
                dep.classid = 'pg_catalog.pg_attrdef'::REGCLASS
                AND dep.objid = d.oid
                AND dep.refobjid >= 16384
                AND dep.refclassid IN ('pg_catalog.pg_proc'::REGCLASS, 'pg_catalog.pg_operator'::REGCLASS)
        ) AS default_calls,
        a.attstattarget,
        -- what ALTER COLUMN ... SET (n_distinct...) set; not the options the server keeps for itself
        -- (some minor releases store pg_attver=... on every column)
        ARRAY(SELECT o.opt FROM unnest(a.attoptions) AS o (opt) WHERE o.opt !~ '^pg_') AS attoptions,
        a.attstorage <> ty.typstorage AS storage_changed,
        a.attstorage,
        a.attcompression
    FROM target AS t
    INNER JOIN pg_attribute AS a ON a.attrelid = t.tbl AND a.attnum > 0 AND NOT a.attisdropped
    INNER JOIN pg_type AS ty ON a.atttypid = ty.oid
    LEFT JOIN pg_collation AS co ON a.attcollation = co.oid
    LEFT JOIN pg_attrdef AS d ON a.attrelid = d.adrelid AND a.attnum = d.adnum
),

-- the types of the columns 045 does not define, with the domains' base types and array elements
column_types (root, typ) AS (
    SELECT
        c.atttypid,
        c.atttypid
    FROM columns AS c
    WHERE c.name NOT IN (SELECT cc.name FROM contract_columns AS cc UNION ALL SELECT pc.name FROM protocol_columns AS pc)
    UNION
    SELECT
        ct.root,
        next_type.typ
    FROM column_types AS ct
    INNER JOIN pg_type AS ty ON ct.typ = ty.oid
    CROSS JOIN LATERAL (VALUES (ty.typbasetype), (ty.typelem)) AS next_type (typ)
    WHERE next_type.typ <> 0
),

-- another role's code a value of such a type runs: input and output functions, a domain's
-- default and check constraints, a range's functions
type_code (root, calls) AS (
    SELECT
        ct.root,
        string_agg(DISTINCT pg_describe_object(dep.refclassid, dep.refobjid, 0), ', ')
    FROM column_types AS ct
    INNER JOIN pg_depend AS dep
        ON
            (
                (dep.classid = 'pg_catalog.pg_type'::REGCLASS AND dep.objid = ct.typ)
                OR (
                    dep.classid = 'pg_catalog.pg_constraint'::REGCLASS
                    AND dep.objid IN (SELECT con.oid FROM pg_constraint AS con WHERE con.contypid = ct.typ)
                )
            )
            AND dep.refobjid >= 16384
            AND dep.refclassid IN ('pg_catalog.pg_proc'::REGCLASS, 'pg_catalog.pg_operator'::REGCLASS)
    GROUP BY ct.root
),

extra_columns AS (
    SELECT
        c.*,
        concat_ws(
            '; ',
            CASE
                WHEN c.attnotnull AND NOT (c.has_default OR c.is_identity OR c.is_generated)
                    THEN format('%I is not null without a default: every save fails (23502)', c.name)
            END,
            CASE
                WHEN c.default_calls IS NOT NULL
                    THEN format('%I''s default or generation calls %s', c.name, c.default_calls)
            END,
            CASE
                WHEN tc.calls IS NOT NULL
                    THEN format('%I''s type %s calls %s', c.name, format_type(c.atttypid, NULL), tc.calls)
            END
        ) AS problem
    FROM columns AS c
    LEFT JOIN type_code AS tc ON c.atttypid = tc.root
    WHERE c.name NOT IN (SELECT cc.name FROM contract_columns AS cc UNION ALL SELECT pc.name FROM protocol_columns AS pc)
),

extra_indexes AS (
    SELECT
        ic.relname::TEXT AS name,
        pg_get_indexdef(ic.oid) AS definition,
        concat_ws(
            '; ',
            CASE
                WHEN i.indisunique
                    THEN format('%I is unique: it refuses records the contract accepts', ic.relname)
            END,
            CASE
                WHEN ic.relam >= 16384
                    THEN format('%I uses the access method %s', ic.relname, (SELECT am.amname FROM pg_am AS am WHERE am.oid = ic.relam))
            END,
            (
                SELECT format('%I calls %s', ic.relname, string_agg(DISTINCT pg_describe_object(dep.refclassid, dep.refobjid, 0), ', '))
                FROM pg_depend AS dep
                WHERE
                    dep.classid = 'pg_catalog.pg_class'::REGCLASS
                    AND dep.objid = ic.oid
                    AND dep.refobjid >= 16384
                    AND dep.refclassid IN (
                        'pg_catalog.pg_proc'::REGCLASS, 'pg_catalog.pg_operator'::REGCLASS, 'pg_catalog.pg_opclass'::REGCLASS
                    )
                HAVING count(*) > 0
            )
        ) AS problem
    FROM target AS t
    INNER JOIN pg_index AS i ON t.tbl = i.indrelid
    INNER JOIN pg_class AS ic ON i.indexrelid = ic.oid
    WHERE ic.relname NOT IN (SELECT ci.name FROM contract_indexes AS ci)
),

-- the table, what runs when it is written, and who can change that
table_checks (sort, name, found, expected, hint) AS (
    SELECT
        v.sort,
        v.name,
        v.found,
        v.expected,
        v.hint
    FROM target AS t
    LEFT JOIN pg_class AS c ON t.tbl = c.oid
    LEFT JOIN pg_proc AS p ON t.fn = p.oid
    CROSS JOIN LATERAL (
        VALUES
        (
            1,
            format('schema %I exists and is permanent', t.nsp_name),
            CASE
                WHEN t.nsp_name = '' THEN 'no schema on the search_path'
                WHEN t.nsp IS NULL THEN 'no schema of that name'
                WHEN t.nsp_name ~ '^pg_(toast_)?temp_' THEN 'a temporary schema'
                ELSE 'a permanent schema'
            END,
            'a permanent schema',
            'Name the schema the migrations were applied to, as it is spelled: psql -v schema=NAME.'
        ),
        (
            2,
            'table idempotency_records exists as an ordinary heap table (report test 1)',
            CASE c.relkind
                WHEN 'r' THEN 'ordinary table, access method ' || (SELECT am.amname FROM pg_am AS am WHERE am.oid = c.relam)
                WHEN 'v' THEN 'a view'
                WHEN 'm' THEN 'a materialized view'
                WHEN 'p' THEN 'a partitioned table'
                WHEN 'f' THEN 'a foreign table'
                WHEN 'S' THEN 'a sequence'
                WHEN 'i' THEN 'an index'
                WHEN 'c' THEN 'a composite type'
                ELSE coalesce('relkind ' || c.relkind::TEXT, 'no table')
            END,
            'ordinary table, access method heap',
            'Apply sql/045_create_idempotency_records.sql with the search_path starting with this schema.'
        ),
        (
            3,
            'table idempotency_records is permanent (logged)',
            CASE c.relpersistence WHEN 'p' THEN 'permanent' WHEN 'u' THEN 'unlogged' WHEN 't' THEN 'temporary' ELSE 'no table' END,
            'permanent',
            NULL
        ),
        (
            4,
            'table idempotency_records and the function are owned by one role',
            format(
                'table %s, function %s',
                coalesce(pg_get_userbyid(c.relowner)::TEXT, 'absent'), coalesce(pg_get_userbyid(p.proowner)::TEXT, 'absent')
            ),
            format(
                'table %1$s, function %1$s',
                coalesce(t.owner_named, pg_get_userbyid(p.proowner)::TEXT, pg_get_userbyid(c.relowner)::TEXT, 'absent')
            ),
            'The owner can change the table and the function at any time: apply 045 and 046 as the one role '
            || 'that owns them (ALTER TABLE or ALTER FUNCTION ... OWNER TO it).'
        ),
        (
            5,
            'their owner is a role you trust: you, a superuser, or the role named with -v owner',
            coalesce(
                (
                    SELECT
                        string_agg(
                            DISTINCT format(
                                '%s (not you, not a superuser%s)',
                                r.rolname, CASE WHEN t.owner_named IS NULL THEN ', no -v owner' ELSE ', not -v owner' END
                            ),
                            ', '
                        )
                    FROM (VALUES (c.relowner), (p.proowner)) AS o (role)
                    INNER JOIN pg_roles AS r ON o.role = r.oid
                    WHERE NOT (r.rolname = current_user OR r.rolsuper OR r.rolname IS NOT DISTINCT FROM t.owner_named)
                ),
                'a trusted owner'
            ),
            'a trusted owner',
            'Whoever owns them can change what runs while this script runs: if that role is trusted, '
            || 'name it with -v owner=NAME (make verify OWNER=NAME); otherwise run with catalog_only=1.'
        ),
        (
            6,
            'table idempotency_records has no parent, child or partition',
            coalesce(
                (
                    SELECT string_agg(s.what, ', ' ORDER BY s.what)
                    FROM (
                        SELECT format('child %s', i.inhrelid::REGCLASS) FROM pg_inherits AS i WHERE i.inhparent = t.tbl
                        UNION ALL
                        SELECT format('parent %s', i.inhparent::REGCLASS) FROM pg_inherits AS i WHERE i.inhrelid = t.tbl
                    ) AS s (what)
                ),
                'none'
            ),
            'none',
            'A DELETE or SELECT on the table reaches its children (their triggers and rows too): '
            || 'detach them (ALTER TABLE child NO INHERIT idempotency_records).'
        ),
        (
            7,
            'no trigger on idempotency_records (enabled, disabled, replica or internal)',
            coalesce(
                (
                    SELECT
                        string_agg(
                            format(
                                '%I (%s%s)',
                                tg.tgname,
                                CASE tg.tgenabled
                                    WHEN 'O' THEN 'enabled' WHEN 'D' THEN 'disabled'
                                    WHEN 'R' THEN 'replica' WHEN 'A' THEN 'always'
                                END,
                                CASE WHEN tg.tgisinternal THEN ', internal' ELSE '' END
                            ),
                            ', ' ORDER BY tg.tgname
                        )
                    FROM pg_trigger AS tg
                    WHERE tg.tgrelid = t.tbl
                ),
                'none'
            ),
            'none',
            'A trigger runs with the rights of whoever writes the table or calls the cleanup: review it and '
            || 'DROP TRIGGER name ON idempotency_records.'
        ),
        (
            8,
            'no rule on idempotency_records',
            coalesce(
                (
                    SELECT string_agg(quote_ident(r.rulename), ', ' ORDER BY r.rulename)
                    FROM pg_rewrite AS r
                    WHERE r.ev_class = t.tbl
                ),
                'none'
            ),
            'none',
            'A rule rewrites the statements on the table: DROP RULE name ON idempotency_records.'
        ),
        (
            9,
            'no row security and no policy on idempotency_records',
            CASE
                WHEN c.oid IS NULL THEN 'no table'
                ELSE format(
                    'row security %s, %s, %s',
                    CASE WHEN c.relrowsecurity THEN 'on' ELSE 'off' END,
                    CASE WHEN c.relforcerowsecurity THEN 'forced' ELSE 'not forced' END,
                    coalesce(
                        'policies ' || (
                            SELECT string_agg(quote_ident(pol.polname), ', ' ORDER BY pol.polname)
                            FROM pg_policy AS pol
                            WHERE pol.polrelid = t.tbl
                        ),
                        'no policy'
                    )
                )
            END,
            'row security off, not forced, no policy',
            'A policy hides records from the application and the cleanup, and runs its expressions as them: '
            || 'ALTER TABLE idempotency_records NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY; '
            || 'DROP POLICY name ON idempotency_records.'
        ),
        (
            10,
            'no foreign key references idempotency_records',
            coalesce(
                (
                    SELECT
                        string_agg(
                            format('%I on %s', con.conname, con.conrelid::REGCLASS), ', ' ORDER BY con.conname
                        )
                    FROM pg_constraint AS con
                    WHERE con.contype = 'f' AND con.confrelid = t.tbl
                ),
                'none'
            ),
            'none',
            'A foreign key referencing the table makes the cleanup''s DELETE fail, cascade or wait on '
            || 'another table: drop it (ALTER TABLE other DROP CONSTRAINT name).'
        ),
        (
            11,
            'no other role may add triggers or foreign keys to idempotency_records (TRIGGER, REFERENCES)',
            coalesce(
                (
                    SELECT
                        string_agg(
                            DISTINCT format(
                                '%s to %s',
                                acl.privilege_type,
                                CASE WHEN acl.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(acl.grantee)::TEXT END
                            ),
                            ', '
                        )
                    FROM aclexplode(c.relacl) AS acl
                    WHERE acl.privilege_type IN ('TRIGGER', 'REFERENCES') AND acl.grantee <> c.relowner
                ),
                'none'
            ),
            'none',
            'REVOKE TRIGGER, REFERENCES ON idempotency_records FROM the roles named.'
        ),
        (
            19,
            'primary key idempotency_records_pkey on request_id',
            coalesce(
                (
                    SELECT string_agg(format('%I %s', con.conname, pg_get_constraintdef(con.oid)), ', ')
                    FROM pg_constraint AS con
                    WHERE con.conrelid = t.tbl AND con.contype = 'p'
                ),
                'no primary key'
            ),
            'idempotency_records_pkey PRIMARY KEY (request_id)',
            NULL
        ),
        (
            20,
            'check constraint chk_expires_at',
            coalesce(
                (
                    SELECT pg_get_constraintdef(con.oid)
                    FROM pg_constraint AS con
                    WHERE con.conrelid = t.tbl AND con.conname = 'chk_expires_at'
                ),
                'no constraint chk_expires_at'
            ),
            'CHECK ((expires_at > created_at))',
            NULL
        ),
        (
            21,
            'no other constraint on idempotency_records (UNIQUE, EXCLUDE, CHECK, FOREIGN KEY)',
            coalesce(
                (
                    SELECT string_agg(format('%I %s', con.conname, pg_get_constraintdef(con.oid)), ', ' ORDER BY con.conname)
                    FROM pg_constraint AS con
                    WHERE
                        con.conrelid = t.tbl
                        AND con.contype <> 'n'  -- NOT NULL, a constraint from PostgreSQL 18 on: the columns' checks
                        AND con.contype <> 'p'
                        AND con.conname <> 'chk_expires_at'
                ),
                'none'
            ),
            'none',
            'Each one refuses records or deletes the contract allows: drop it (ALTER TABLE idempotency_records '
            || 'DROP CONSTRAINT name).'
        ),
        (
            18,
            'other columns: none that a save cannot leave out, none that runs another role''s code',
            coalesce(
                (SELECT string_agg(e.problem, '; ' ORDER BY e.attnum) FROM extra_columns AS e WHERE e.problem <> ''),
                'none'
            ),
            'none',
            'The application''s save names only the contract''s columns: give a NOT NULL column a built-in '
            || 'default, and drop a default or type that calls a function of another role.'
        ),
        (
            25,
            'other indexes: none unique, none that runs another role''s code',
            coalesce(
                (SELECT string_agg(e.problem, '; ' ORDER BY e.name) FROM extra_indexes AS e WHERE e.problem <> ''),
                'none'
            ),
            'none',
            'DROP INDEX CONCURRENTLY name: a unique index refuses saves, and an expression, predicate or '
            || 'operator class of another role runs on every write.'
        )
    ) AS v (sort, name, found, expected, hint)
),

-- every column 045 defines: type, length, collation, nullability, default, identity, generation
column_checks (sort, name, found, expected, hint) AS (
    SELECT
        11 + cc.ord,
        format('column %s', cc.name),
        coalesce(c.shape, 'no column'),
        cc.expected,
        NULL::TEXT
    FROM contract_columns AS cc
    LEFT JOIN columns AS c ON cc.name = c.name
),

-- report test 2: the indexes, each with its definition, access method and validity
index_checks (sort, name, found, expected, hint) AS (
    SELECT
        21 + ci.ord,
        format('index %s (report test 2)', ci.name),
        coalesce(
            (
                SELECT
                    -- storage parameters (WITH (...)) are noted below, not compared
                    coalesce(
                        regexp_replace(pg_get_indexdef(ic.oid), ' WITH \([^()]*\)', ''),
                        'relkind ' || ic.relkind::TEXT
                    )
                    || CASE WHEN i.indisvalid AND i.indisready AND i.indislive THEN '' ELSE ' (INVALID)' END
                FROM pg_class AS ic
                LEFT JOIN pg_index AS i ON ic.oid = i.indexrelid
                WHERE ic.relname = ci.name AND ic.relnamespace = t.nsp
            ),
            'no index'
        ),
        format('CREATE %sINDEX %I ON %I.idempotency_records USING btree (%I)', ci.uniq, ci.name, t.nsp_name, ci.col),
        CASE
            WHEN ci.ord > 1
                THEN format(
                    'Outside a transaction: DROP INDEX CONCURRENTLY IF EXISTS %1$I; then apply 045 again '
                    || '(or CREATE INDEX CONCURRENTLY %1$I ON idempotency_records (%2$I) first, on a busy table).',
                    ci.name, ci.col
                )
        END
    FROM target AS t
    CROSS JOIN contract_indexes AS ci
),

-- the function: what it is, how it runs, and its body
function_checks (sort, name, found, expected, hint) AS (
    SELECT
        v.sort,
        v.name,
        coalesce(v.found, 'no function'),
        v.expected,
        v.hint
    FROM target AS t
    LEFT JOIN pg_proc AS p ON t.fn = p.oid
    LEFT JOIN pg_language AS l ON p.prolang = l.oid
    CROSS JOIN LATERAL (
        VALUES
        (
            26,
            'function cleanup_expired_idempotency_records() exists',
            CASE p.prokind WHEN 'f' THEN 'function' WHEN 'p' THEN 'a procedure' WHEN 'a' THEN 'an aggregate' END,
            'function',
            'Apply sql/046_create_idempotency_cleanup_job.sql with the search_path starting with this schema.'
        ),
        (
            27,
            'function signature and result: () RETURNS TABLE(deleted_count bigint)',
            format('(%s) RETURNS %s', pg_get_function_arguments(p.oid), pg_get_function_result(p.oid)),
            '() RETURNS TABLE(deleted_count bigint)',
            NULL
        ),
        (
            28,
            'function is plpgsql and SECURITY INVOKER',
            format('%s, security %s', l.lanname, CASE WHEN p.prosecdef THEN 'definer' ELSE 'invoker' END),
            'plpgsql, security invoker',
            'Apply 046 again: it replaces the function (its grants stay).'
        ),
        (
            29,
            'function attributes: volatile, not strict, not leakproof, parallel unsafe, cost 100, rows 1000',
            format(
                '%s, %s, %s, parallel %s, cost %s, rows %s%s',
                CASE p.provolatile WHEN 'v' THEN 'volatile' WHEN 's' THEN 'stable' WHEN 'i' THEN 'immutable' END,
                CASE WHEN p.proisstrict THEN 'strict' ELSE 'not strict' END,
                CASE WHEN p.proleakproof THEN 'leakproof' ELSE 'not leakproof' END,
                CASE p.proparallel WHEN 'u' THEN 'unsafe' WHEN 'r' THEN 'restricted' WHEN 's' THEN 'safe' END,
                p.procost,
                p.prorows,
                CASE WHEN p.prosupport <> 0 THEN ', support function ' || p.prosupport::REGPROC::TEXT ELSE '' END
            ),
            'volatile, not strict, not leakproof, parallel unsafe, cost 100, rows 1000',
            'Apply 046 again: it replaces the function (its grants stay).'
        ),
        (
            30,
            'function settings exactly as 046 sets them (search_path pinned to this schema)',
            CASE
                WHEN p.oid IS NOT NULL
                    THEN coalesce(
                        (SELECT string_agg(s.setting, '; ' ORDER BY s.setting) FROM unnest(p.proconfig) AS s (setting)),
                        'none'
                    )
            END,
            format(:'function_settings', t.nsp_name),
            'Apply 046 again: it replaces the function with its own settings only (its grants stay).'
        ),
        (
            31,
            'function body is the one 046 ships',
            CASE
                WHEN p.oid IS NULL THEN NULL
                WHEN encode(sha256(convert_to(replace(p.prosrc, E'\r\n', E'\n'), 'UTF8')), 'hex') = :'function_body_sha256'
                    THEN 'the body 046 ships'
                ELSE format(
                    'another body (sha256 %s, %s lines)',
                    left(encode(sha256(convert_to(replace(p.prosrc, E'\r\n', E'\n'), 'UTF8')), 'hex'), 16),
                    array_length(string_to_array(p.prosrc, E'\n'), 1)
                )
            END,
            'the body 046 ships',
            'An older copy of the function (the report''s plain DELETE, which waits on row locks and deadlocks, '
            || 'or an earlier version of 046), or one edited by hand: apply '
            || 'sql/046_create_idempotency_cleanup_job.sql again; it replaces the body and keeps the grants.'
        ),
        (
            32,
            'comments on the table, its six columns and the function',
            coalesce(
                nullif(
                    concat_ws(
                        ', ',
                        CASE WHEN obj_description(t.tbl, 'pg_class') IS NULL THEN 'table' END,
                        (
                            SELECT string_agg(cc.name, ', ' ORDER BY cc.ord)
                            FROM contract_columns AS cc
                            LEFT JOIN columns AS c ON cc.name = c.name
                            WHERE col_description(t.tbl, c.attnum) IS NULL
                        ),
                        CASE WHEN obj_description(t.fn, 'pg_proc') IS NULL THEN 'function' END
                    ),
                    ''
                ),
                'none missing'
            ),
            'none missing',
            'Apply 045 and 046 again: they set the comments that are missing.'
        )
    ) AS v (sort, name, found, expected, hint)
),

-- 047 where it is there: all of it, each column and function as 047 ships it, nothing else of its
-- names; each check printed "# SKIP" where none of it is
protocol_parts (name, present) AS (
    SELECT
        pc.name,
        EXISTS (SELECT FROM columns AS c WHERE c.name = pc.name)
    FROM protocol_columns AS pc
    UNION ALL
    SELECT
        pf.name,
        EXISTS (SELECT FROM target AS t INNER JOIN pg_proc AS p ON t.nsp = p.pronamespace AND p.proname = pf.name)
    FROM protocol_functions AS pf
),

protocol_state AS (
    SELECT CASE WHEN bool_or(pp.present) THEN NULL ELSE '047, the optional protocol, is not installed' END AS skip
    FROM protocol_parts AS pp
),

protocol_checks (sort, name, found, expected, hint, skip) AS (
    SELECT
        33,
        '047, the optional protocol: installed whole, or not at all',
        CASE
            WHEN bool_and(pp.present) OR NOT bool_or(pp.present) THEN 'all or none'
            ELSE format(
                'only %s, without %s',
                string_agg(pp.name, ', ') FILTER (WHERE pp.present), string_agg(pp.name, ', ') FILTER (WHERE NOT pp.present)
            )
        END,
        'all or none',
        'Apply sql/047_create_idempotency_protocol.sql again to complete it, or its down file to remove it.',
        NULL::TEXT
    FROM protocol_parts AS pp
    UNION ALL
    SELECT
        33 + pc.ord,
        format('column %s of 047', pc.name),
        coalesce(c.shape, 'no column'),
        pc.expected,
        'A column of that name that is not 047''s: rename it, then apply 047 again.',
        ps.skip
    FROM protocol_columns AS pc
    CROSS JOIN protocol_state AS ps
    LEFT JOIN columns AS c ON pc.name = c.name
    UNION ALL
    SELECT
        35 + pf.ord,
        format('function %s of 047: its result, attributes, settings, owner and body', pf.name),
        CASE
            WHEN p.oid IS NOT NULL
                THEN format(
                    'returns %s, %s, security %s, %s, %s, parallel %s, settings %s, owner %s, %s',
                    pg_get_function_result(p.oid),
                    l.lanname,
                    CASE WHEN p.prosecdef THEN 'definer' ELSE 'invoker' END,
                    CASE p.provolatile WHEN 'v' THEN 'volatile' WHEN 's' THEN 'stable' WHEN 'i' THEN 'immutable' END,
                    CASE WHEN p.proisstrict THEN 'strict' ELSE 'not strict' END,
                    CASE p.proparallel WHEN 'u' THEN 'unsafe' WHEN 'r' THEN 'restricted' WHEN 's' THEN 'safe' END,
                    coalesce(
                        (SELECT string_agg(x.setting, '; ' ORDER BY x.setting) FROM unnest(p.proconfig) AS x (setting)),
                        'none'
                    ),
                    pg_get_userbyid(p.proowner),
                    CASE
                        WHEN encode(sha256(convert_to(replace(p.prosrc, E'\r\n', E'\n'), 'UTF8')), 'hex') = pf.sha
                            THEN 'the body 047 ships'
                        ELSE format(
                            'another body (sha256 %s)',
                            left(encode(sha256(convert_to(replace(p.prosrc, E'\r\n', E'\n'), 'UTF8')), 'hex'), 16)
                        )
                    END
                )
            ELSE format('no function %s(%s)', pf.name, pf.arguments)
        END,
        format(
            '%s, settings %s, owner %s, the body 047 ships',
            pf.expected, format(pf.settings, t.nsp_name), coalesce(pg_get_userbyid(c.relowner)::TEXT, 'absent')
        ),
        'Apply sql/047_create_idempotency_protocol.sql again, as the owner of the table: it replaces the function '
        || '(its grants stay), or names what stops it.',
        ps.skip
    FROM target AS t
    CROSS JOIN protocol_functions AS pf
    CROSS JOIN protocol_state AS ps
    LEFT JOIN pg_class AS c ON t.tbl = c.oid
    LEFT JOIN pg_proc AS p
        ON t.nsp = p.pronamespace AND pf.name = p.proname AND pg_get_function_arguments(p.oid) = pf.arguments
    LEFT JOIN pg_language AS l ON p.prolang = l.oid
    UNION ALL
    SELECT
        40,
        'no other function of 047''s names (an overload can capture the calls)',
        coalesce(
            (
                SELECT string_agg(format('%s(%s)', p.proname, pg_get_function_arguments(p.oid)), ', ' ORDER BY p.proname)
                FROM pg_proc AS p
                WHERE
                    p.pronamespace = t.nsp
                    AND p.proname IN (SELECT pf.name FROM protocol_functions AS pf)
                    AND NOT EXISTS (
                        SELECT FROM protocol_functions AS pf
                        WHERE pf.name = p.proname AND pf.arguments = pg_get_function_arguments(p.oid)
                    )
            ),
            'none'
        ),
        'none',
        'Drop it (DROP FUNCTION name(argument types)) after checking what it is and whose.',
        ps.skip
    FROM target AS t
    CROSS JOIN protocol_state AS ps
    UNION ALL
    SELECT
        41,
        'comments on 047''s columns and functions',
        coalesce(
            nullif(
                concat_ws(
                    ', ',
                    (
                        SELECT string_agg(pc.name, ', ' ORDER BY pc.ord)
                        FROM protocol_columns AS pc
                        INNER JOIN columns AS c ON pc.name = c.name
                        WHERE col_description(t.tbl, c.attnum) IS NULL
                    ),
                    (
                        SELECT string_agg(pf.name, ', ' ORDER BY pf.ord)
                        FROM protocol_functions AS pf
                        INNER JOIN pg_proc AS p ON t.nsp = p.pronamespace AND pf.name = p.proname
                        WHERE obj_description(p.oid, 'pg_proc') IS NULL
                    )
                ),
                ''
            ),
            'none missing'
        ),
        'none missing',
        'Apply 047 again: it sets the comments that are missing.',
        ps.skip
    FROM target AS t
    CROSS JOIN protocol_state AS ps
),

-- project additions that change nothing the contract promises: printed, never failing
notes (sort, text) AS (
    SELECT
        3,
        format('table storage parameters %s', array_to_string(c.reloptions, ', '))
    FROM target AS t
    INNER JOIN pg_class AS c ON t.tbl = c.oid
    WHERE c.reloptions IS NOT NULL
    UNION ALL
    SELECT
        3,
        format('TOAST storage parameters %s', array_to_string(toast.reloptions, ', '))
    FROM target AS t
    INNER JOIN pg_class AS c ON t.tbl = c.oid
    INNER JOIN pg_class AS toast ON c.reltoastrelid = toast.oid
    WHERE toast.reloptions IS NOT NULL
    UNION ALL
    SELECT
        3,
        format('table in tablespace %I', ts.spcname)
    FROM target AS t
    INNER JOIN pg_class AS c ON t.tbl = c.oid
    INNER JOIN pg_tablespace AS ts ON c.reltablespace = ts.oid
    UNION ALL
    SELECT
        3,
        format(
            'replica identity %s',
            CASE c.relreplident WHEN 'n' THEN 'nothing' WHEN 'f' THEN 'full' WHEN 'i' THEN 'using an index' END
        )
    FROM target AS t
    INNER JOIN pg_class AS c ON t.tbl = c.oid
    WHERE c.relreplident <> 'd'
    UNION ALL
    SELECT
        coalesce(11 + cc.ord, 18),
        concat_ws(
            ', ',
            format('column %I', c.name),
            CASE WHEN coalesce(c.attstattarget, -1) >= 0 THEN format('statistics target %s', c.attstattarget) END,
            CASE WHEN c.attoptions <> '{}' THEN format('options %s', array_to_string(c.attoptions, ', ')) END,
            CASE
                WHEN c.storage_changed
                    THEN format(
                        'storage %s',
                        CASE c.attstorage WHEN 'p' THEN 'plain' WHEN 'e' THEN 'external' WHEN 'm' THEN 'main' ELSE 'extended' END
                    )
            END,
            CASE c.attcompression WHEN 'p' THEN 'compression pglz' WHEN 'l' THEN 'compression lz4' END
        )
    FROM columns AS c
    LEFT JOIN contract_columns AS cc ON c.name = cc.name
    WHERE
        coalesce(c.attstattarget, -1) >= 0
        OR c.attoptions <> '{}'
        OR c.storage_changed
        OR c.attcompression <> ''
    UNION ALL
    SELECT
        18,
        format('column %I %s: a project addition a save can leave out', e.name, e.shape)
    FROM extra_columns AS e
    WHERE e.problem = ''
    UNION ALL
    SELECT
        21 + ci.ord,
        concat_ws(
            ', ',
            format('index %I', ic.relname),
            CASE WHEN ic.reloptions IS NOT NULL THEN 'storage parameters ' || array_to_string(ic.reloptions, ', ') END,
            CASE WHEN ic.reltablespace <> 0 THEN format('tablespace %I', ts.spcname) END
        )
    FROM target AS t
    CROSS JOIN contract_indexes AS ci
    INNER JOIN pg_class AS ic ON ic.relname = ci.name AND ic.relnamespace = t.nsp
    LEFT JOIN pg_tablespace AS ts ON ic.reltablespace = ts.oid
    WHERE ic.reloptions IS NOT NULL OR ic.reltablespace <> 0
    UNION ALL
    SELECT
        25,
        format('index %s: a project addition (not unique)', e.definition)
    FROM extra_indexes AS e
    WHERE e.problem = ''
    UNION ALL
    SELECT
        26,
        format('another function of that name: %s(%s)', p.proname, pg_get_function_identity_arguments(p.oid))
    FROM target AS t
    INNER JOIN pg_proc AS p
        ON t.nsp = p.pronamespace AND p.proname = 'cleanup_expired_idempotency_records' AND p.oid <> t.fn
),

checks AS (
    SELECT *, NULL::TEXT AS skip FROM table_checks
    UNION ALL
    SELECT *, NULL::TEXT AS skip FROM column_checks
    UNION ALL
    SELECT *, NULL::TEXT AS skip FROM index_checks
    UNION ALL
    SELECT *, NULL::TEXT AS skip FROM function_checks
    UNION ALL
    SELECT * FROM protocol_checks
),

numbered AS (
    SELECT
        row_number() OVER (ORDER BY c.sort) AS n,
        c.sort,
        -- one line each, and no '#' that TAP would read as a directive
        replace(regexp_replace(c.name, '\s+', ' ', 'g'), '#', '\#') AS name,
        replace(regexp_replace(c.found, '\s+', ' ', 'g'), '#', '\#') AS found,
        replace(regexp_replace(c.expected, '\s+', ' ', 'g'), '#', '\#') AS expected,
        c.hint,
        c.skip,
        c.skip IS NOT NULL OR c.found IS NOT DISTINCT FROM c.expected AS ok
    FROM checks AS c
)

SELECT
    count(*) AS catalog_count,
    count(*) FILTER (WHERE NOT n.ok) AS catalog_failures,
    string_agg(
        concat_ws(
            E'\n',
            CASE
                WHEN n.skip IS NOT NULL THEN format('ok %s - %s # SKIP %s', n.n, n.name, n.skip)
                WHEN n.ok THEN format('ok %s - %s', n.n, n.name)
                ELSE format('not ok %s - %s: found %s, expected %s', n.n, n.name, n.found, n.expected)
            END,
            CASE WHEN NOT n.ok THEN '# HINT: ' || regexp_replace(n.hint, '\s+', ' ', 'g') END,
            (
                SELECT string_agg('# note: ' || regexp_replace(x.text, '\s+', ' ', 'g'), E'\n' ORDER BY x.text)
                FROM notes AS x
                WHERE x.sort = n.sort
            )
        ),
        E'\n' ORDER BY n.n
    ) AS catalog_lines
FROM numbered AS n \gset
\set ON_ERROR_STOP on
\if :ERROR
ROLLBACK;
SELECT
    format(
        'Bail out! The catalog checks could not run (%s: %s)%s',
        :'LAST_ERROR_SQLSTATE',
        :'LAST_ERROR_MESSAGE',
        CASE
            WHEN :'LAST_ERROR_SQLSTATE' = '55P03'
                THEN format(
                    ': another session has held a lock on the table (ACCESS EXCLUSIVE: a migration, VACUUM FULL) '
                    || 'longer than lock_timeout %s. Run the script again.',
                    :'lock_timeout'
                )
            ELSE ''
        END
    ) AS bail_out,
    format(
        'DO $fail$ BEGIN RAISE EXCEPTION %L; END $fail$',
        'idempotency_records verification bailed out: the catalog checks could not run'
    ) AS fail_statement \gset
\echo :bail_out
SELECT
    pg_catalog.set_config('lock_timeout', :'saved_lock_timeout', FALSE) AS restored_lock_timeout,
    pg_catalog.set_config('search_path', :'saved_search_path', FALSE) AS restored_search_path \gset
:fail_statement;
\endif

SELECT
    :catalog_failures = 0 AND :'behaviour_skip_reason' = '' AS behaviour_runs,
    CASE
        WHEN :catalog_failures > 0
            THEN format(
                '%s catalog checks not ok: the behaviour tests run only where the table and the function '
                || 'run no code but the contract''s',
                :catalog_failures
            )
        ELSE :'behaviour_skip_reason'
    END AS behaviour_skip_reason \gset

\set behaviour_results '[]'
\if :behaviour_runs
SELECT
    set_config('idempotency_verify.table', :'target_table', TRUE) AS behaviour_table,
    set_config('idempotency_verify.function', :'target_function', TRUE) AS behaviour_function,
    set_config('idempotency_verify.protocol', format('%I.idempotency_', :'schema'::TEXT), TRUE) AS behaviour_protocol,
    set_config('idempotency_verify.protocol_skip', :'protocol_skip_reason', TRUE) AS behaviour_protocol_skip \gset

-- The report's tests 3 to 10, then 047's (11 to 13) where it is installed, in the transaction the
-- catalog checks ran in (rolled back below), on fresh random keys. A DO
-- block, not a function (no DDL): each test catches its own error, so a failed test never stops the
-- script, and the results come back as JSON in a transaction-local setting. The table is named by
-- schema in every statement, hence EXECUTE.
DO $behaviour$
DECLARE
    tbl CONSTANT TEXT := current_setting('idempotency_verify.table');
    cleanup CONSTANT TEXT := current_setting('idempotency_verify.function');
    table_oid CONSTANT OID := tbl::REGCLASS::OID;
    -- 047's functions, named by schema; why its tests are skipped ('' when they run)
    protocol CONSTANT TEXT := current_setting('idempotency_verify.protocol');
    protocol_skip CONSTANT TEXT := current_setting('idempotency_verify.protocol_skip');
    claim CONSTANT TEXT := 'SELECT c.outcome, c.token, c.result_payload, c.status_code FROM ' || protocol
        || 'claim($1, $2, $3, $4) AS c';
    claim_key CONSTANT UUID := gen_random_uuid();
    request_hash CONSTANT BYTEA := sha256(uuid_send(claim_key));
    claimed RECORD;
    answer RECORD;
    completed BOOLEAN;
    live_key CONSTANT UUID := gen_random_uuid();
    expired_key CONSTANT UUID := gen_random_uuid();
    -- the report's save query (IdempotencyRepository::save); $5 is the lifetime in hours
    save CONSTANT TEXT :=
        'INSERT INTO ' || tbl || ' (request_id, operation, result_payload, status_code, expires_at) '
        || 'VALUES ($1, $2, $3, $4, now() + INTERVAL ''1 hour'' * $5) '
        || 'ON CONFLICT (request_id) DO UPDATE SET operation = excluded.operation, '
        || 'result_payload = excluded.result_payload, status_code = excluded.status_code, '
        || 'expires_at = excluded.expires_at';
    results JSONB := '[]';
    test INTEGER;
    passed BOOLEAN;
    skipped BOOLEAN;
    detail TEXT;
    note TEXT;
    n BIGINT;
    seen TEXT;
    plan JSONB;
    used TEXT[];
    others TEXT[];
    failed_constraint TEXT;
    probe RECORD;
BEGIN
    FOR test IN 3..13 LOOP
        passed := FALSE;
        skipped := FALSE;
        detail := NULL;
        note := NULL;
        BEGIN
            CASE test
            WHEN 3 THEN
                EXECUTE save USING live_key, 'verify', '{"n": 1}', 201, 1;
                GET DIAGNOSTICS n = ROW_COUNT;
                passed := n = 1;
                detail := format('found %s rows saved, expected 1', n);
            WHEN 4 THEN
                -- the report's get query (IdempotencyRepository::get)
                EXECUTE format(
                    'SELECT r.result_payload || '' '' || r.status_code FROM %s AS r '
                    || 'WHERE r.request_id = $1 AND r.expires_at > now()',
                    tbl
                ) INTO seen USING live_key;
                passed := seen IS NOT DISTINCT FROM '{"n": 1} 201';
                detail := format('found %s, expected {"n": 1} 201', coalesce(seen, 'no row'));
            WHEN 5 THEN
                EXECUTE save USING live_key, 'verify', '{"n": 2}', 200, 2;
                EXECUTE format(
                    'SELECT count(*) || '' row, '' || max(r.result_payload) FROM %s AS r WHERE r.request_id = $1',
                    tbl
                ) INTO seen USING live_key;
                passed := seen IS NOT DISTINCT FROM '1 row, {"n": 2}';
                detail := format('found %s, expected 1 row, {"n": 2}', seen);
            WHEN 6 THEN
                EXECUTE format(
                    'INSERT INTO %s (request_id, operation, result_payload, created_at, expires_at) '
                    || 'VALUES ($1, ''verify'', ''{}'', now() - INTERVAL ''2 hours'', now() - INTERVAL ''1 hour'')',
                    tbl
                ) USING expired_key;
                GET DIAGNOSTICS n = ROW_COUNT;
                passed := n = 1;
                detail := format('found %s rows stored, expected 1', n);
            WHEN 7 THEN
                EXECUTE format(
                    'SELECT string_agg(r.request_id::TEXT, '', '') FROM %s AS r '
                    || 'WHERE r.request_id IN ($1, $2) AND r.expires_at > now()',
                    tbl
                ) INTO seen USING live_key, expired_key;
                passed := seen IS NOT DISTINCT FROM live_key::TEXT;
                detail := format('found %s, expected only %s', coalesce(seen, 'no row'), live_key);
            WHEN 8 THEN
                -- The cleanup locks every expired row it sees until the rollback. It sees this
                -- transaction's snapshot (REPEATABLE READ): if that holds no expired record but ours,
                -- it locks ours only; a record stored or expired since is not in the snapshot.
                EXECUTE format(
                    'SELECT count(*) FROM %s AS r WHERE r.expires_at <= now() AND r.request_id <> $1', tbl
                ) INTO n USING expired_key;
                IF n > 0 THEN
                    skipped := TRUE;
                    passed := TRUE;
                    detail := format(
                        '%s expired records of the application''s are present: the cleanup would lock them '
                        || 'until the rollback', n
                    );
                ELSE
                    -- The cleanup refuses to run outside READ COMMITTED unless told that the
                    -- snapshot's records are exactly what the caller wants deleted.
                    PERFORM set_config('idempotency.cleanup_in_snapshot', 'on', TRUE);
                    EXECUTE format('SELECT c.deleted_count FROM %s AS c', cleanup) INTO n;
                    EXECUTE format(
                        'SELECT string_agg(r.request_id::TEXT, '', '') FROM %s AS r WHERE r.request_id IN ($1, $2)', tbl
                    ) INTO seen USING live_key, expired_key;
                    passed := (n, seen) IS NOT DISTINCT FROM (1::BIGINT, live_key::TEXT);
                    detail := format(
                        'found deleted_count %s, left %s, expected deleted_count 1, left %s',
                        n, coalesce(seen, 'no row'), live_key
                    );
                END IF;
            WHEN 9 THEN
                -- "Can use": each query's condition matches only its index (and any other index on the
                -- same leading column), sequential scans are off, and nothing runs (EXPLAIN only). So
                -- this holds on any data and any statistics; which plan the planner prefers on real
                -- data is in docs/performance.md.
                PERFORM set_config('enable_seqscan', 'off', TRUE);
                detail := '';
                FOR probe IN
                    SELECT *
                    FROM (
                        VALUES
                        (
                            'idempotency_records_pkey', 'request_id',
                            format('SELECT * FROM %s WHERE request_id = %L', tbl, live_key)
                        ),
                        (
                            'idx_idempotency_expires', 'expires_at',
                            format('SELECT ctid FROM %s WHERE expires_at <= now() FOR UPDATE SKIP LOCKED', tbl)
                        ),
                        (
                            'idx_idempotency_operation', 'operation',
                            format('SELECT count(*) FROM %s WHERE operation = %L', tbl, 'verify')
                        )
                    ) AS v (index_name, column_name, query)
                LOOP
                    EXECUTE 'EXPLAIN (FORMAT JSON) ' || probe.query INTO plan;
                    used := ARRAY(
                        SELECT DISTINCT x.name #>> '{}' FROM jsonb_path_query(plan, '$.**."Index Name"') AS x (name)
                    );
                    SELECT coalesce(array_agg(ic.relname::TEXT), '{}')
                    INTO others
                    FROM pg_index AS i
                    INNER JOIN pg_class AS ic ON i.indexrelid = ic.oid
                    INNER JOIN pg_attribute AS a ON i.indrelid = a.attrelid AND i.indkey[0] = a.attnum
                    WHERE i.indrelid = table_oid AND a.attname = probe.column_name AND ic.relname <> probe.index_name;
                    IF probe.index_name = ANY(used) THEN
                        detail := detail || format('%s used; ', probe.index_name);
                    ELSIF used && others THEN
                        detail := detail || format('%s used; ', array_to_string(used, ', '));
                        note := concat_ws(
                            '; ', note,
                            format(
                                'for the query of %1$s the planner chose %2$s, another index on %3$s (%1$s itself '
                                || 'is checked by its definition and validity)',
                                probe.index_name, array_to_string(used, ', '), probe.column_name
                            )
                        );
                    ELSE
                        detail := detail || format('%s not used (found %s); ', probe.index_name,
                            coalesce(nullif(array_to_string(used, ', '), ''), 'no index'));
                    END IF;
                END LOOP;
                PERFORM set_config('enable_seqscan', 'on', TRUE);
                passed := detail NOT LIKE '%not used%';
                detail := 'found ' || rtrim(detail, '; ') || ', expected each index used';
            WHEN 10 THEN
                EXECUTE format(
                    'INSERT INTO %s (request_id, operation, result_payload, created_at, expires_at) '
                    || 'VALUES (gen_random_uuid(), ''verify'', ''{}'', now(), now())',
                    tbl
                );
                passed := FALSE;
                detail := 'found the row stored, expected check_violation (23514) on chk_expires_at';
            WHEN 11, 12, 13 THEN
                IF protocol_skip <> '' THEN
                    skipped := TRUE;
                    passed := TRUE;
                    detail := protocol_skip;
                ELSIF test = 11 THEN
                    EXECUTE claim INTO claimed USING claim_key, 'verify'::VARCHAR, request_hash, INTERVAL '1 minute';
                    EXECUTE claim INTO answer USING claim_key, 'verify'::VARCHAR, request_hash, INTERVAL '1 minute';
                    passed := (claimed.outcome, claimed.token IS NOT NULL, answer.outcome)
                        IS NOT DISTINCT FROM ('claimed'::TEXT, TRUE, 'in_progress'::TEXT);
                    detail := format(
                        'found %s then %s, expected claimed (with a token) then in_progress', claimed.outcome, answer.outcome
                    );
                ELSIF test = 12 THEN
                    EXECUTE format('SELECT %scomplete($1, $2, $3, $4, $5)', protocol)
                    INTO completed USING claim_key, claimed.token, '{"n": 3}'::TEXT, 201, INTERVAL '1 minute';
                    EXECUTE claim INTO answer USING claim_key, 'verify'::VARCHAR, request_hash, INTERVAL '1 minute';
                    passed := (completed, answer.outcome, answer.result_payload, answer.status_code)
                        IS NOT DISTINCT FROM (TRUE, 'replay'::TEXT, '{"n": 3}'::TEXT, 201);
                    detail := format(
                        'found %s, expected replay of {"n": 3} 201 after the completion', concat_ws(' ', answer.outcome,
                            answer.result_payload, answer.status_code)
                    );
                ELSE
                    EXECUTE claim INTO answer USING claim_key, 'verify'::VARCHAR, sha256(uuid_send(gen_random_uuid())),
                        INTERVAL '1 minute';
                    passed := (answer.outcome, answer.result_payload) IS NOT DISTINCT FROM ('mismatch'::TEXT, NULL::TEXT);
                    detail := format('found %s, expected mismatch and no stored result', answer.outcome);
                END IF;
            END CASE;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS failed_constraint = CONSTRAINT_NAME;
            IF test = 10 THEN
                passed := (SQLSTATE, failed_constraint) IS NOT DISTINCT FROM ('23514'::TEXT, 'chk_expires_at'::TEXT);
                detail := format('found error %s on %s, expected 23514 on chk_expires_at', SQLSTATE, failed_constraint);
            ELSE
                passed := FALSE;
                detail := format('found error %s: %s, expected success', SQLSTATE, SQLERRM);
            END IF;
        END;
        results := results || jsonb_build_object(
            'test', test, 'passed', passed, 'skipped', skipped, 'detail', detail, 'note', note
        );
    END LOOP;
    PERFORM set_config('idempotency_verify.results', results::TEXT, TRUE);
END
$behaviour$;

SELECT current_setting('idempotency_verify.results') AS behaviour_results \gset
\endif
ROLLBACK;

SELECT
    count(*) AS behaviour_count,
    count(*) FILTER (WHERE NOT coalesce((r.result ->> 'passed')::BOOLEAN, TRUE)) AS behaviour_failures,
    string_agg(
        concat_ws(
            E'\n',
            CASE
                WHEN r.result IS NULL
                    THEN format('ok %s - %s # SKIP %s', :catalog_count + t.test - 2, t.name, :'behaviour_skip_reason')
                WHEN (r.result ->> 'skipped')::BOOLEAN
                    THEN format('ok %s - %s # SKIP %s', :catalog_count + t.test - 2, t.name, r.result ->> 'detail')
                WHEN (r.result ->> 'passed')::BOOLEAN
                    THEN format('ok %s - %s', :catalog_count + t.test - 2, t.name)
                ELSE format(
                    'not ok %s - %s: %s',
                    :catalog_count + t.test - 2, t.name, replace(regexp_replace(r.result ->> 'detail', '\s+', ' ', 'g'), '#', '\#')
                )
            END,
            '# note: ' || (r.result ->> 'note')
        ),
        E'\n' ORDER BY t.test
    ) AS behaviour_lines
FROM (
    VALUES
    (3, 'report test 3: a record is saved'),
    (4, 'report test 4: the saved record is read back'),
    (5, 'report test 5: a second save of the same key replaces the record (one row)'),
    (6, 'report test 6: an expired record is stored (created_at backdated)'),
    (7, 'report test 7: the get query returns the live record and not the expired one'),
    (8, 'report test 8: the cleanup deletes the expired record, keeps the live one, counts 1'),
    (9, 'report test 9: each index can serve its query (the get, the cleanup, counts by operation)'),
    (10, 'report test 10: chk_expires_at refuses expires_at not after created_at'),
    (11, '047: a claim of a new key is claimed, a second claim of it is in_progress'),
    (12, '047: once completed, the key replays its result'),
    (13, '047: a claim with another request hash is a mismatch, and gets nothing of the result')
) AS t (test, name)
LEFT JOIN jsonb_array_elements(:'behaviour_results'::JSONB) AS r (result) ON (r.result ->> 'test')::INTEGER = t.test
\gset

SELECT
    :catalog_count + :behaviour_count AS total,
    :catalog_failures + :behaviour_failures AS failures,
    :catalog_failures + :behaviour_failures = 0 AS passed,
    format(
        'DO $fail$ BEGIN RAISE EXCEPTION %L; END $fail$',
        format(
            'idempotency_records verification failed: %s of %s checks not ok',
            :catalog_failures + :behaviour_failures, :catalog_count + :behaviour_count
        )
    ) AS fail_statement \gset

\echo 1..:total
\echo :catalog_lines
\echo :behaviour_lines

-- the session's own settings again (for a DBA who runs the script with \i in a session)
SELECT
    pg_catalog.set_config('lock_timeout', :'saved_lock_timeout', FALSE) AS restored_lock_timeout,
    pg_catalog.set_config('search_path', :'saved_search_path', FALSE) AS restored_search_path \gset

\if :passed
\else
\echo '#' :failures of :total checks not ok
:fail_statement;
\endif
