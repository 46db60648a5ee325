-- 047_create_idempotency_protocol.sql
--
-- Optional. Creates the protocol of docs/protocol.md on 045's table: the
-- columns request_hash and lease_token, and the functions idempotency_claim,
-- idempotency_complete, idempotency_release and idempotency_key.
-- Reverse: 047_create_idempotency_protocol.down.sql
-- Requires: 045 applied, with the same search_path.
-- Apply:   PGOPTIONS='-c lock_timeout=2s' psql -v ON_ERROR_STOP=1 \
--          --no-psqlrc -1 -f sql/047_create_idempotency_protocol.sql
--
-- Re-runnable by design (pipelines apply files again): it adds what is
-- missing (a complete install, no lock on the table) and replaces the
-- functions. Two statements: docs/reliability.md, "How the files are built".
-- The bodies call only built-ins whose argument types match exactly.

-- 1. Marks this file's checks as not passed in this session (rule 2).
DO $mark$
DECLARE
    this_file CONSTANT TEXT := '047_create_idempotency_protocol.sql';
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

-- 2. The lock and the checks, then the columns, the functions, their comments
-- and their pinned search_path: one statement, all there or none.
DO $migrate$
DECLARE
    this_file CONSTANT TEXT := '047_create_idempotency_protocol.sql';
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    target CONSTANT TEXT := pg_catalog.current_schema();
    columns CONSTANT TEXT [] := ARRAY[
        ['request_hash', 'bytea', 'Digest of the request that claimed the '
            'key; NULL in records of other statements.'],
        ['lease_token', 'uuid', 'Fencing token of the claim holding the key '
            'until expires_at.']];
    -- The functions of these names in this schema (none, or these four), as
    -- the catalog prints them, and their comments.
    functions CONSTANT TEXT [] := ARRAY[
        ['idempotency_claim(request_id uuid, operation character varying, '
            'request_hash bytea, lease interval, OUT outcome text, OUT token '
            'uuid, OUT result_payload text, OUT status_code integer) record',
            'Claims a key for a lease, or says why not: one row.'],
        ['idempotency_complete(request_id uuid, token uuid, result_payload '
            'text, status_code integer, ttl interval) boolean', 'Stores the '
            'result, if token still holds the key.'],
        ['idempotency_key(scope text, client_key text) uuid', 'The '
            'request_id of client_key within scope (a tenant).'],
        ['idempotency_release(request_id uuid, token uuid) boolean', 'Gives '
            'up the key if token still holds it.']];
    resolved REGCLASS;
    tbl REGCLASS;
    visible TEXT;
    state TEXT;
    found_columns TEXT;
    found_functions TEXT;
    refused RECORD;
    col TEXT [];
    signature TEXT;
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
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    tbl := to_regclass(format('%I.idempotency_records', target));
    SELECT format('%s.%I', c.relnamespace::REGNAMESPACE, c.relname)
    INTO visible FROM pg_class AS c WHERE c.oid = resolved;

    -- What the functions' callers would run or miss on the table (as 046).
    SELECT concat_ws(', ', CASE WHEN (c.relkind, c.relpersistence)
            <> ('r', 'p') THEN 'not a permanent table' END,
        'owner ' || nullif(pg_get_userbyid(c.relowner), current_user),
        (SELECT string_agg(w, ', ') FROM (
            SELECT 'trigger ' || t.tgname FROM pg_trigger AS t
            WHERE t.tgrelid = tbl AND NOT t.tgisinternal
            UNION ALL
            SELECT 'rule ' || r.rulename FROM pg_rewrite AS r
            WHERE r.ev_class = tbl
            UNION ALL
            SELECT 'policy ' || p.polname FROM pg_policy AS p
            WHERE p.polrelid = tbl
            UNION ALL
            SELECT 'row security' WHERE c.relrowsecurity
                OR c.relforcerowsecurity
            UNION ALL
            SELECT 'foreign key ' || k.conname FROM pg_constraint AS k
            WHERE k.contype = 'f' AND k.confrelid = tbl
            UNION ALL
            SELECT format('%s held by %s', g.privilege_type, coalesce(
                pg_get_userbyid(nullif(g.grantee, 0))::TEXT, 'PUBLIC'))
            FROM aclexplode(c.relacl) AS g WHERE g.grantee <> c.relowner
                AND g.privilege_type IN ('TRIGGER', 'REFERENCES')) AS s (w)))
    INTO state FROM pg_class AS c WHERE c.oid = tbl;
    -- Columns of its names that are not its own; functions of its names that
    -- are not its four (an overload captures calls) or another role's.
    SELECT string_agg(s.col, ', ') INTO found_columns FROM (
        SELECT format('%s %s%s%s', a.attname, format_type(a.atttypid,
            a.atttypmod), CASE WHEN a.attnotnull THEN ' not null' END,
            ' default ' || pg_get_expr(d.adbin, d.adrelid)) AS col
        FROM pg_attribute AS a LEFT JOIN pg_attrdef AS d
            ON a.attrelid = d.adrelid AND a.attnum = d.adnum
        WHERE a.attrelid = tbl AND NOT a.attisdropped
            AND a.attname IN ('request_hash', 'lease_token')) AS s
    WHERE s.col NOT IN ('request_hash bytea', 'lease_token uuid');
    SELECT string_agg(s.fn, '; ' ORDER BY s.fn) INTO found_functions
    FROM (SELECT format('%s(%s) %s%s', p.proname,
            pg_get_function_arguments(p.oid),
            pg_get_function_result(p.oid), ' owned by '
            || nullif(pg_get_userbyid(p.proowner), current_user)) AS fn
        FROM pg_proc AS p
        WHERE p.proname IN ('idempotency_claim', 'idempotency_complete',
                'idempotency_release', 'idempotency_key')
            AND p.pronamespace = to_regnamespace(quote_ident(target))) AS s
    WHERE s.fn <> ALL (functions[:][1:1]);

    -- The checks, in order: the first that fails stops the file.
    SELECT v.* INTO refused FROM (VALUES
        -- A snapshot taken before the lock misses the last deployer's work.
        (1, resolved IS NOT NULL AND visible IS NULL, '40001',
            'idempotency_records changed after this transaction''s snapshot',
            'transaction_isolation ' || current_setting(
                'transaction_isolation'), 'a snapshot that shows it',
            'Apply the file again, or under READ COMMITTED.'),
        (2, concat(target, ' ', visible) ~ '(^| )pg_(toast_)?temp_', '3F000',
            'idempotency_records does not resolve to a table in a permanent '
            'schema', format('current schema %s, the name resolves to %s',
                target, coalesce(visible, 'nothing')), 'a permanent schema',
            'Apply 047 with the search_path of 045, without pg_temp first.'),
        (3, tbl IS NULL AND visible IS NOT NULL, '3F000',
            'idempotency_records is installed in another schema than '
            || target, visible, 'idempotency_records in schema ' || target,
            'Apply 047 with the search_path of the install.'),
        (4, tbl IS NULL, '42P01', format('table %s.idempotency_records does '
            'not exist', target), 'no such relation', 'the table 045 creates',
            'Apply 045 first, with the same search_path.'),
        (5, state <> '', '55000', format('table %s.idempotency_records is '
            'not the table 045 creates', target), state, 'none of these',
            'Apply 045 again as its owner: it names every difference and '
            'repairs what it can.'),
        (6, found_functions IS NOT NULL, '42723', format('schema %s holds a '
            'function of 047''s names that 047 does not create', target),
            found_functions, format('none, or %s, owned by %s',
                array_to_string(functions[:][1:1], '; '), current_user),
            'Review it, drop it, then apply 047 again.'),
        (7, found_columns IS NOT NULL, '42701', format('table '
            '%s.idempotency_records has a column of 047''s names with '
            'another definition', target), found_columns,
            'request_hash bytea, lease_token uuid',
            'Rename that column, then apply 047 again.')
    ) AS v (n, failed, code, message, found, expected, hint)
    WHERE v.failed ORDER BY v.n LIMIT 1;
    IF FOUND THEN
        RAISE USING MESSAGE = refused.message, ERRCODE = refused.code,
        DETAIL = format('found: %s; expected: %s', refused.found,
            refused.expected), HINT = refused.hint;
    END IF;

    -- Each column where missing (nullable, no default: the catalog only),
    -- each comment where it differs.
    FOREACH col SLICE 1 IN ARRAY columns LOOP
        IF NOT EXISTS (SELECT FROM pg_attribute AS a WHERE a.attrelid = tbl
            AND a.attname = col[1] AND NOT a.attisdropped) THEN
            EXECUTE format('ALTER TABLE %s ADD COLUMN %I %s', tbl, col[1],
                col[2]);
        END IF;
        IF col_description(tbl, (SELECT a.attnum FROM pg_attribute AS a
            WHERE a.attrelid = tbl AND a.attname = col[1]))
            IS DISTINCT FROM col[3] THEN
            EXECUTE format('COMMENT ON COLUMN %s.%I IS %L', tbl, col[1],
                col[3]);
        END IF;
    END LOOP;

    -- Under the caller's search_path, which decides the schema (as for 045's
    -- table). SQL statements qualify the arguments: the columns share names.
    PERFORM set_config('search_path', saved_path, TRUE);
    CREATE OR REPLACE FUNCTION idempotency_claim(request_id UUID,
        operation VARCHAR(100), request_hash BYTEA, lease INTERVAL,
        OUT outcome TEXT, OUT token UUID, OUT result_payload TEXT,
        OUT status_code INTEGER)
    LANGUAGE plpgsql SET lock_timeout = '100ms' AS $body$
DECLARE
    -- What the repository's get reads of a key in progress.
    placeholder CONSTANT TEXT := '{"title":"Conflict","status":409,'
        '"detail":"A request with this key is in progress."}';
    stored RECORD;
    bad CONSTANT TEXT := CASE WHEN request_id IS NULL THEN 'request_id is NULL'
        WHEN operation IS NULL THEN 'operation is NULL'
        WHEN request_hash IS NULL THEN 'request_hash is NULL'
        WHEN lease IS NULL THEN 'lease is NULL'
        WHEN char_length(operation::TEXT) > 100
            THEN 'operation is longer than 100 characters'
        WHEN octet_length(request_hash) NOT BETWEEN 16 AND 64
            THEN 'request_hash is not a digest of 16 to 64 bytes'
        WHEN NOT (now() + lease > now() AND isfinite(now() + lease))
            THEN 'lease is not a positive, finite interval' END;
BEGIN
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'idempotency_claim: %', bad
        USING ERRCODE = CASE WHEN bad ~ 'NULL$' THEN '22004'
            WHEN bad ~ '^operation' THEN '22001' ELSE '22023' END,
        DETAIL = 'found: ' || bad || '; expected: a key, an operation of at '
        'most 100 characters, a digest of 16 to 64 bytes, a lease > 0';
    END IF;

    SELECT r.operation, r.request_hash, r.result_payload, r.status_code,
        r.expires_at, r.lease_token
    INTO stored FROM idempotency_records AS r
    WHERE r.request_id = idempotency_claim.request_id;
    IF FOUND AND stored.expires_at > now() THEN
        -- A NULL stored hash (a record of the repository's save) matches.
        outcome := CASE
            WHEN stored.operation::TEXT <> operation::TEXT
                OR stored.request_hash <> request_hash THEN 'mismatch'
            WHEN stored.lease_token IS NOT NULL AND stored.status_code = 409
                AND stored.result_payload = placeholder THEN 'in_progress'
            ELSE 'replay' END;
        IF outcome = 'replay' THEN
            result_payload := stored.result_payload;
            status_code := stored.status_code;
        END IF;
        RETURN;
    END IF;
    -- A new record, or an expired one taken over. A transaction writing the
    -- key (waited for at most lock_timeout), or one since the read: in use.
    BEGIN
        INSERT INTO idempotency_records AS r (request_id, operation,
            result_payload, status_code, expires_at, request_hash, lease_token)
        VALUES (idempotency_claim.request_id, idempotency_claim.operation,
            placeholder, 409, now() + lease, idempotency_claim.request_hash,
            gen_random_uuid())
        ON CONFLICT ON CONSTRAINT idempotency_records_pkey DO UPDATE SET
            operation = excluded.operation, result_payload = placeholder,
            status_code = 409, created_at = now(), expires_at = now() + lease,
            request_hash = excluded.request_hash,
            lease_token = excluded.lease_token
        WHERE r.expires_at <= now()
        RETURNING r.lease_token INTO token;
    EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
        token := NULL;
    END;
    outcome := CASE WHEN token IS NULL THEN 'in_progress' ELSE 'claimed' END;
END
$body$;
    CREATE OR REPLACE FUNCTION idempotency_complete(request_id UUID,
        token UUID, result_payload TEXT, status_code INTEGER, ttl INTERVAL)
    RETURNS BOOLEAN LANGUAGE plpgsql SET lock_timeout = '100ms' AS $body$
DECLARE
    placeholder CONSTANT TEXT := '{"title":"Conflict","status":409,'
        '"detail":"A request with this key is in progress."}';
    bad CONSTANT TEXT := CASE WHEN request_id IS NULL THEN 'request_id is NULL'
        WHEN token IS NULL THEN 'token is NULL'
        WHEN result_payload IS NULL THEN 'result_payload is NULL'
        WHEN ttl IS NULL THEN 'ttl is NULL'
        WHEN status_code = 409 AND result_payload = placeholder
            THEN 'the result is the in-progress placeholder'
        WHEN NOT (now() + ttl > now() AND isfinite(now() + ttl))
            THEN 'ttl is not a positive, finite interval' END;
BEGIN
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'idempotency_complete: %', bad
        USING ERRCODE = CASE WHEN bad ~ 'NULL$' THEN '22004' ELSE '22023'
            END, DETAIL = 'found: ' || bad || '; expected: the key, the token '
        'of its claim, its result, a ttl > 0';
    END IF;
    -- Only while the token holds the key; never before created_at.
    UPDATE idempotency_records AS r SET
        result_payload = idempotency_complete.result_payload,
        status_code = idempotency_complete.status_code,
        expires_at = greatest(now(), r.created_at) + ttl, lease_token = NULL
    WHERE r.request_id = idempotency_complete.request_id
        AND r.lease_token = token AND r.status_code = 409
        AND r.result_payload = placeholder;
    RETURN FOUND;
END
$body$;
    CREATE OR REPLACE FUNCTION idempotency_release(request_id UUID,
        token UUID)
    RETURNS BOOLEAN LANGUAGE plpgsql SET lock_timeout = '100ms' AS $body$
DECLARE
    placeholder CONSTANT TEXT := '{"title":"Conflict","status":409,'
        '"detail":"A request with this key is in progress."}';
BEGIN
    IF request_id IS NULL OR token IS NULL THEN
        RAISE EXCEPTION 'idempotency_release: % is NULL', CASE
            WHEN request_id IS NULL THEN 'request_id' ELSE 'token' END
        USING ERRCODE = '22004', DETAIL = 'found: NULL; expected: the key '
        'and the token of its claim';
    END IF;
    DELETE FROM idempotency_records AS r
    WHERE r.request_id = idempotency_release.request_id
        AND r.lease_token = token AND r.status_code = 409
        AND r.result_payload = placeholder;
    RETURN FOUND;
END
$body$;
    -- RFC 9562 version 8: the first 128 bits of SHA-256 over a namespace and
    -- both strings, each as UTF-8 after its length in 4 bytes.
    CREATE OR REPLACE FUNCTION idempotency_key(scope TEXT, client_key TEXT)
    RETURNS UUID LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $body$
DECLARE
    scope_bytes CONSTANT BYTEA := convert_to(scope, 'UTF8'::NAME);
    key_bytes CONSTANT BYTEA := convert_to(client_key, 'UTF8'::NAME);
    bad CONSTANT TEXT := CASE WHEN scope IS NULL THEN 'scope is NULL'
        WHEN scope = '' THEN 'scope is empty'
        WHEN client_key IS NULL THEN 'client_key is NULL'
        WHEN client_key = '' THEN 'client_key is empty' END;
    digest BYTEA;
BEGIN
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'idempotency_key: %', bad
        USING ERRCODE = CASE WHEN bad ~ 'NULL$' THEN '22004' ELSE '22023'
            END, DETAIL = 'found: ' || bad || '; expected: a string';
    END IF;
    digest := substr(sha256(decode('1e71d1276a3c48e297f3dcba64f6255b', 'hex')
        || int4send(octet_length(scope_bytes)) || scope_bytes
        || int4send(octet_length(key_bytes)) || key_bytes), 1, 16);
    digest := set_byte(digest, 6, (get_byte(digest, 6) & 15) | 128);
    digest := set_byte(digest, 8, (get_byte(digest, 8) & 63) | 128);
    RETURN encode(digest, 'hex')::UUID;
END
$body$;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);

    -- Each search_path pinned to this schema (functions made in pg_temp fail
    -- here, undoing all), and each comment.
    FOREACH col SLICE 1 IN ARRAY functions LOOP
        signature := format('%I.%s)', target, split_part(col[1], ') ', 1));
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, '
            'pg_temp', signature, target);
        EXECUTE format('COMMENT ON FUNCTION %s IS %L', signature, col[2]);
    END LOOP;
    PERFORM set_config('idempotency.pending_guard', '', FALSE);
    PERFORM set_config('search_path', saved_path, TRUE);
END
$migrate$;
