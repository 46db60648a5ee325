-- 047_create_idempotency_protocol.sql
--
-- Optional. Creates the idempotency protocol on 045's table, for operations that
-- call other systems and must not run inside an open database transaction: two
-- nullable columns of idempotency_records, request_hash and lease_token, and four
-- functions: idempotency_claim() (claimed, replay, in_progress or mismatch),
-- idempotency_complete() and idempotency_release() (both fenced by the claim's
-- token) and idempotency_key() (a key scoped per tenant). A claimed key is a row
-- of the table whose expires_at is the end of its lease, so 046's cleanup never
-- deletes a live lease and an expired lease is an expired record.
-- docs/protocol.md describes the protocol, its grants and its limits.
-- Reverse:  047_create_idempotency_protocol.down.sql
-- Requires: 045_create_idempotency_records.sql, applied with the same search_path.
-- Apply:    psql -v ON_ERROR_STOP=1 --no-psqlrc -1 -f sql/047_create_idempotency_protocol.sql
--
-- No BEGIN/COMMIT and no psql meta-commands: any runner can wrap it.
--
-- Re-runnable by design: pipelines re-apply files to live databases, and a run
-- cut off part way must complete when applied again. Each step looks in the
-- catalog first: a column or comment that is missing is added, one that is there
-- is not touched (ADD COLUMN IF NOT EXISTS would take its ACCESS EXCLUSIVE lock
-- before it looks), and the functions are replaced (CREATE OR REPLACE), which
-- locks no table. So re-applying a complete 047 takes no lock on the table.
-- The first apply adds the columns without a default: a change of the catalog
-- only (no rewrite, no scan), under an ACCESS EXCLUSIVE lock held to the commit,
-- which waits at most lock_timeout for the transactions using the table.
--
-- Another role's code never runs here. The DO blocks follow 045's rule: they
-- capture what they need from the search_path with pg_catalog-qualified calls,
-- run under search_path pg_catalog, pg_temp and restore the caller's path at
-- their end. The functions run under a search_path pinned to pg_catalog, this
-- schema, pg_temp, and call only built-ins whose argument types match exactly
-- (another role's function of the same name cannot be a better match).
--
-- The blocks named timeout, guard and pin are the deployment scaffolding; the
-- protocol itself is the columns, the comments and the functions between them.

-- Any lock this file must take (only on its first apply) waits a bounded time.
-- The deployer's own lock_timeout wins; this sets one, for this file's
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

-- Guard: the functions read and write the idempotency_records of this schema with
-- the rights of whoever calls them. Refuse to go on where that table is absent,
-- temporary or not the one 045 makes (another persistence, owned by another
-- role, with a trigger or rule that a caller would run); where a column of 047's
-- names has another definition; and where a function of one of the four names
-- exists in this schema owned by another role (its owner could change the body
-- that the callers run), with another signature (an overload that a call could
-- resolve to) or another result. It reads the catalog only.
DO $guard$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    target CONSTANT TEXT := pg_catalog.current_schema();
    resolved CONSTANT REGCLASS := pg_catalog.to_regclass('idempotency_records');
    tbl REGCLASS;
    -- what the unqualified name reaches, schema-qualified
    visible TEXT;
    found_text TEXT;
    wanted_state CONSTANT TEXT := 'permanent table, owner is the migration role, 0 triggers, 0 rules';
    wanted_columns CONSTANT TEXT[] := ARRAY['lease_token uuid null', 'request_hash bytea null'];
    wanted_functions CONSTANT TEXT[] := ARRAY[
        'idempotency_claim(request_id uuid, operation character varying, request_hash bytea, lease interval) '
        || 'returns TABLE(outcome text, token uuid, result_payload text, status_code integer)',
        'idempotency_complete(request_id uuid, token uuid, result_payload text, status_code integer, ttl interval) '
        || 'returns boolean',
        'idempotency_key(scope text, client_key text) returns uuid',
        'idempotency_release(request_id uuid, token uuid) returns boolean'
    ];
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    tbl := to_regclass(format('%I.idempotency_records', target));
    SELECT format('%s.%I', c.relnamespace::REGNAMESPACE, c.relname)
    INTO visible
    FROM pg_class AS c
    WHERE c.oid = resolved;
    IF target ~ '^pg_(toast_)?temp_' OR resolved IS DISTINCT FROM tbl THEN
        RAISE EXCEPTION 'idempotency_records does not resolve to a table in a permanent schema'
        USING
            ERRCODE = 'invalid_schema_name',
            DETAIL = format('found: current schema %s, idempotency_records resolves to %s; expected: %s',
                target, coalesce(visible, 'nothing'),
                'the table 045 created in the first schema of the search_path'),
            HINT = 'Apply 047 with the same search_path as 045, without pg_temp first and without a temporary '
            || 'table of that name.';
    END IF;
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'table %.idempotency_records does not exist', target
        USING
            ERRCODE = 'undefined_table',
            DETAIL = format('found: no relation %I.idempotency_records; expected: the table 045 creates', target),
            HINT = 'Apply 045_create_idempotency_records.sql first, with the same search_path.';
    END IF;

    SELECT
        format(
            '%s, %s, %s triggers, %s rules',
            CASE
                WHEN c.relkind = 'r' AND c.relpersistence = 'p' THEN 'permanent table'
                ELSE format('relkind %s relpersistence %s', c.relkind, c.relpersistence)
            END,
            CASE
                WHEN c.relowner = current_user::REGROLE THEN 'owner is the migration role'
                ELSE format('owner %s, not %s', pg_get_userbyid(c.relowner), current_user)
            END,
            (SELECT count(*) FROM pg_catalog.pg_trigger AS t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal),
            (SELECT count(*) FROM pg_catalog.pg_rewrite AS r WHERE r.ev_class = c.oid)
        )
    INTO found_text
    FROM pg_catalog.pg_class AS c
    WHERE c.oid = tbl;
    IF found_text IS DISTINCT FROM wanted_state THEN
        RAISE EXCEPTION 'table %.idempotency_records is not the table 045 creates', target
        USING
            ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('found: %s; expected: %s', found_text, wanted_state),
            HINT = 'Apply 045 again as the role that owns the table: it names every difference and repairs what '
            || 'it safely can. Then apply 047 as that role.';
    END IF;

    -- The columns 047 adds, where they exist already: exactly these definitions.
    SELECT string_agg(s.col, ', ' ORDER BY s.col)
    INTO found_text
    FROM (
        SELECT
            format(
                '%s %s %s%s',
                a.attname,
                format_type(a.atttypid, a.atttypmod),
                CASE WHEN a.attnotnull THEN 'not null' ELSE 'null' END,
                ' default ' || pg_get_expr(d.adbin, d.adrelid)
            ) AS col
        FROM pg_catalog.pg_attribute AS a
        LEFT JOIN pg_catalog.pg_attrdef AS d ON a.attrelid = d.adrelid AND a.attnum = d.adnum
        WHERE a.attrelid = tbl AND a.attname IN ('request_hash', 'lease_token') AND NOT a.attisdropped
    ) AS s
    WHERE s.col <> ALL (wanted_columns);
    IF found_text IS NOT NULL THEN
        RAISE EXCEPTION 'table %.idempotency_records already has a column of 047 with another definition', target
        USING
            ERRCODE = 'duplicate_column',
            DETAIL = format('found: %s; expected: %s', found_text, array_to_string(wanted_columns, ', ')),
            HINT = 'Rename the column (ALTER TABLE idempotency_records RENAME COLUMN ...), then apply 047 again.';
    END IF;

    -- The functions of the four names in this schema: none, or exactly these,
    -- owned by the role applying the file.
    SELECT string_agg(f.fn, ', ' ORDER BY f.fn)
    INTO found_text
    FROM (
        SELECT
            format(
                '%s(%s) returns %s%s',
                p.proname,
                pg_get_function_identity_arguments(p.oid),
                pg_get_function_result(p.oid),
                CASE
                    WHEN p.proowner = current_user::REGROLE THEN ''
                    ELSE format(' owned by %s', pg_get_userbyid(p.proowner))
                END
            ) AS fn
        FROM pg_catalog.pg_proc AS p
        WHERE
            p.pronamespace = to_regnamespace(quote_ident(target))
            AND p.proname IN ('idempotency_claim', 'idempotency_complete', 'idempotency_release', 'idempotency_key')
    ) AS f
    WHERE f.fn <> ALL (wanted_functions);
    IF found_text IS NOT NULL THEN
        RAISE EXCEPTION 'schema % holds a function of 047''s names that 047 does not create', target
        USING
            ERRCODE = 'duplicate_function',
            DETAIL = format('found: %s; expected: none, or %s, owned by %s', found_text,
                array_to_string(wanted_functions, ', '), current_user),
            HINT = 'A function another role owns runs its owner''s body with its caller''s rights; an overload can '
            || 'capture calls. Review it, drop it (DROP FUNCTION name(argument types)) and apply 047 again.';
    END IF;
    PERFORM set_config('search_path', saved_path, TRUE);
END
$guard$;

-- The columns, each added only where it is missing (so that a re-apply takes no
-- lock): nullable, without a default, so that adding one changes the catalog
-- only. Records stored by the report's statements keep NULL in both.
--   request_hash: the digest of the request that claimed the key.
--   lease_token:  the fencing token of the claim that holds the key.
DO $columns$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    target CONSTANT TEXT := pg_catalog.current_schema();
    wanted RECORD;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    FOR wanted IN
        SELECT v.col, v.type
        FROM (VALUES (1, 'request_hash', 'BYTEA'), (2, 'lease_token', 'UUID')) AS v (position, col, type)
        WHERE NOT EXISTS (
            SELECT
            FROM pg_catalog.pg_attribute AS a
            WHERE
                a.attrelid = format('%I.idempotency_records', target)::REGCLASS
                AND a.attname = v.col
                AND NOT a.attisdropped
        )
        ORDER BY v.position
    LOOP
        -- IF NOT EXISTS as well: a deployer that waited here for another one's lock finds the
        -- column that one added, once it commits, and goes on.
        EXECUTE format(
            'ALTER TABLE %I.idempotency_records ADD COLUMN IF NOT EXISTS %I %s', target, wanted.col, wanted.type
        );
    END LOOP;
    PERFORM set_config('search_path', saved_path, TRUE);
END
$columns$;

-- The columns' comments, each set only where it is missing or differs: COMMENT ON
-- takes a SHARE UPDATE EXCLUSIVE lock on the table.
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
            col_description(tbl, a.attnum) AS found
        FROM (
            VALUES
            (
                'request_hash',
                'Digest (SHA-256: 32 bytes) of the canonical request that claimed the key with idempotency_claim(); '
                || 'a claim of the key with another digest is answered mismatch. NULL in records stored by other '
                || 'statements (the repository''s save), which are matched on the operation alone.'
            ),
            (
                'lease_token',
                'Fencing token of the claim that holds the key (idempotency_claim()). While a record holds it with '
                || 'status_code 409 and the in-progress problem document, its request is in progress until '
                || 'expires_at, the end of the lease; idempotency_complete() sets it to NULL.'
            )
        ) AS v (col, text)
        LEFT JOIN pg_catalog.pg_attribute AS a ON a.attrelid = tbl AND a.attname = v.col
    LOOP
        IF wanted.found IS DISTINCT FROM wanted.text THEN
            EXECUTE format('COMMENT ON COLUMN %s.%I IS %L', qualified, wanted.col, wanted.text);
        END IF;
    END LOOP;
    PERFORM set_config('search_path', saved_path, TRUE);
END
$comments$;

-- idempotency_claim: take the key for a lease, or say why not.
--   claimed      the key was free (new, or its record or lease had expired): the
--                caller owns it until now() + lease and gets a new token;
--   replay       a finished, unexpired result: it comes back with its status;
--   in_progress  another caller holds an unexpired lease (answer 409), or a
--                transaction that writes the key did not end within lock_timeout;
--   mismatch     an unexpired record of another operation, or of another
--                request_hash (answer 422); nothing of it comes back.
-- It never waits on a row or a transaction longer than the lock_timeout it sets
-- for itself: a wait that times out is answered in_progress, and a claim cannot
-- be one side of a deadlock. The arguments are qualified with the function's
-- name and the columns with r: they share names.
CREATE OR REPLACE FUNCTION idempotency_claim(
    request_id UUID,
    operation VARCHAR(100),
    request_hash BYTEA,
    lease INTERVAL
)
RETURNS TABLE (outcome TEXT, token UUID, result_payload TEXT, status_code INTEGER)
LANGUAGE plpgsql
VOLATILE
SET lock_timeout = '100ms'
AS $function$
DECLARE
    -- What a reader of the table (the repository's get) sees while the request runs.
    in_progress_payload CONSTANT TEXT := '{"type":"about:blank","title":"Conflict","status":409,'
        || '"detail":"A request with this idempotency key is in progress; retry it later."}';
    stored RECORD;
    stored_found BOOLEAN;
    new_token UUID;
    attempts INTEGER := 0;
BEGIN
    -- Bad arguments fail here, before anything is read or written.
    IF idempotency_claim.request_id IS NULL THEN
        RAISE EXCEPTION 'idempotency_claim: request_id is NULL'
        USING
            ERRCODE = 'null_value_not_allowed',
            DETAIL = 'found: NULL; expected: the idempotency key, a UUID',
            HINT = 'Pass the client''s key, or idempotency_key(scope, client_key) for a key scoped per tenant.';
    END IF;
    IF idempotency_claim.operation IS NULL THEN
        RAISE EXCEPTION 'idempotency_claim: operation is NULL'
        USING
            ERRCODE = 'null_value_not_allowed',
            DETAIL = 'found: NULL; expected: the name of the operation, at most 100 characters';
    END IF;
    IF char_length(idempotency_claim.operation::TEXT) > 100 THEN
        RAISE EXCEPTION 'idempotency_claim: operation is longer than 100 characters'
        USING
            ERRCODE = 'string_data_right_truncation',
            DETAIL = 'found: ' || char_length(idempotency_claim.operation::TEXT)::TEXT
            || ' characters; expected: at most 100 (the column operation is VARCHAR(100))';
    END IF;
    IF idempotency_claim.request_hash IS NULL THEN
        RAISE EXCEPTION 'idempotency_claim: request_hash is NULL'
        USING
            ERRCODE = 'null_value_not_allowed',
            DETAIL = 'found: NULL; expected: a digest of the canonical request, 16 to 64 bytes',
            HINT = 'Pass the SHA-256 of the canonical request (docs/protocol.md says how to build it).';
    END IF;
    IF octet_length(idempotency_claim.request_hash) NOT BETWEEN 16 AND 64 THEN
        RAISE EXCEPTION 'idempotency_claim: request_hash is not a digest of 16 to 64 bytes'
        USING
            ERRCODE = 'invalid_parameter_value',
            DETAIL = 'found: ' || octet_length(idempotency_claim.request_hash)::TEXT
            || ' bytes; expected: 16 to 64 (SHA-256: 32)',
            HINT = 'Pass the SHA-256 of the canonical request, not the request itself.';
    END IF;
    IF idempotency_claim.lease IS NULL OR NOT (
        now() + idempotency_claim.lease > now() AND isfinite(now() + idempotency_claim.lease)
    ) THEN
        RAISE EXCEPTION 'idempotency_claim: lease is not a positive, finite interval'
        USING
            ERRCODE = CASE WHEN idempotency_claim.lease IS NULL THEN '22004' ELSE '22023' END,
            DETAIL = 'found: ' || coalesce(idempotency_claim.lease::TEXT, 'NULL')
            || '; expected: how long the caller may hold the key, e.g. INTERVAL ''30 seconds''';
    END IF;

    LOOP
        attempts := attempts + 1;
        SELECT
            r.operation,
            r.request_hash,
            r.result_payload,
            r.status_code,
            r.expires_at,
            r.lease_token
        INTO stored
        FROM idempotency_records AS r
        WHERE r.request_id = idempotency_claim.request_id;
        stored_found := FOUND;

        IF stored_found AND stored.expires_at > now() THEN
            IF
                stored.operation::TEXT <> idempotency_claim.operation::TEXT
                OR stored.request_hash <> idempotency_claim.request_hash
            THEN
                -- A NULL stored hash (a record of the repository's save) matches any.
                outcome := 'mismatch';
            ELSIF
                stored.lease_token IS NOT NULL
                AND stored.status_code = 409
                AND stored.result_payload = in_progress_payload
            THEN
                outcome := 'in_progress';
            ELSE
                outcome := 'replay';
                result_payload := stored.result_payload;
                status_code := stored.status_code;
            END IF;
            RETURN NEXT;
            RETURN;
        END IF;

        -- The key is free: insert its record, or take over the expired one with a
        -- whole new lifetime (created_at too). Either waits at most lock_timeout
        -- for a transaction that writes the key; the WHERE of the takeover is
        -- checked again on the latest version of the row.
        new_token := gen_random_uuid();
        BEGIN
            IF stored_found THEN
                UPDATE idempotency_records AS r
                SET
                    operation = idempotency_claim.operation,
                    result_payload = in_progress_payload,
                    status_code = 409,
                    created_at = now(),
                    expires_at = now() + idempotency_claim.lease,
                    request_hash = idempotency_claim.request_hash,
                    lease_token = new_token
                WHERE r.request_id = idempotency_claim.request_id AND r.expires_at <= now();
            ELSE
                INSERT INTO idempotency_records AS r (
                    request_id, operation, result_payload, status_code, expires_at, request_hash, lease_token
                )
                VALUES (
                    idempotency_claim.request_id,
                    idempotency_claim.operation,
                    in_progress_payload,
                    409,
                    now() + idempotency_claim.lease,
                    idempotency_claim.request_hash,
                    new_token
                )
                ON CONFLICT ON CONSTRAINT idempotency_records_pkey DO NOTHING;
            END IF;
            IF FOUND THEN
                outcome := 'claimed';
                token := new_token;
                RETURN NEXT;
                RETURN;
            END IF;
        EXCEPTION
            -- The wait ended by the lock_timeout, or by the deadlock detector where
            -- deadlock_timeout is set below it (a caller holding other keys in its transaction).
            WHEN lock_not_available OR deadlock_detected THEN
                outcome := 'in_progress';
                RETURN NEXT;
                RETURN;
        END;
        -- Another caller wrote the key between the read and the write: read again.
        IF attempts >= 3 THEN
            outcome := 'in_progress';
            RETURN NEXT;
            RETURN;
        END IF;
    END LOOP;
END
$function$;

COMMENT ON FUNCTION idempotency_claim(UUID, VARCHAR, BYTEA, INTERVAL) IS
'Claims the idempotency key request_id for operation and the digest request_hash of the request, for lease. One row: outcome claimed (the caller owns the key until now() + lease; token is its fencing token), replay (an unexpired result: result_payload and status_code), in_progress (another caller holds an unexpired lease: answer 409) or mismatch (an unexpired record of another operation or request_hash: answer 422). An expired record or lease is taken over. Never waits longer than its lock_timeout (100 ms): a wait that times out is answered in_progress. Call it in its own transaction. SECURITY INVOKER.';

-- idempotency_complete: store the result and end the lease, only while the
-- token still holds the key: a holder whose lease was taken over (or whose
-- record another statement overwrote or deleted) gets false and writes nothing.
-- The new lifetime starts at the later of now() and created_at, so a clock that
-- stepped back cannot make it end before the record began (chk_expires_at).
CREATE OR REPLACE FUNCTION idempotency_complete(
    request_id UUID,
    token UUID,
    result_payload TEXT,
    status_code INTEGER,
    ttl INTERVAL
)
RETURNS BOOLEAN
LANGUAGE plpgsql
VOLATILE
SET lock_timeout = '100ms'
AS $function$
DECLARE
    in_progress_payload CONSTANT TEXT := '{"type":"about:blank","title":"Conflict","status":409,'
        || '"detail":"A request with this idempotency key is in progress; retry it later."}';
BEGIN
    IF idempotency_complete.request_id IS NULL OR idempotency_complete.token IS NULL THEN
        RAISE EXCEPTION 'idempotency_complete: %', CASE
            WHEN idempotency_complete.request_id IS NULL THEN 'request_id is NULL'
            ELSE 'token is NULL'
        END
        USING
            ERRCODE = 'null_value_not_allowed',
            DETAIL = 'found: NULL; expected: the key and the token its claim returned';
    END IF;
    IF idempotency_complete.result_payload IS NULL THEN
        RAISE EXCEPTION 'idempotency_complete: result_payload is NULL'
        USING
            ERRCODE = 'null_value_not_allowed',
            DETAIL = 'found: NULL; expected: the result to replay to duplicates (JSON text)';
    END IF;
    IF
        idempotency_complete.status_code = 409
        AND idempotency_complete.result_payload = in_progress_payload
    THEN
        RAISE EXCEPTION 'idempotency_complete: the result is the in-progress placeholder'
        USING
            ERRCODE = 'invalid_parameter_value',
            DETAIL = 'found: status_code 409 with the in-progress problem document; expected: the request''s result',
            HINT = 'To give the key up without a result, call idempotency_release(request_id, token).';
    END IF;
    IF idempotency_complete.ttl IS NULL OR NOT (
        now() + idempotency_complete.ttl > now() AND isfinite(now() + idempotency_complete.ttl)
    ) THEN
        RAISE EXCEPTION 'idempotency_complete: ttl is not a positive, finite interval'
        USING
            ERRCODE = CASE WHEN idempotency_complete.ttl IS NULL THEN '22004' ELSE '22023' END,
            DETAIL = 'found: ' || coalesce(idempotency_complete.ttl::TEXT, 'NULL')
            || '; expected: how long the result is replayed, e.g. INTERVAL ''24 hours''';
    END IF;

    UPDATE idempotency_records AS r
    SET
        result_payload = idempotency_complete.result_payload,
        status_code = idempotency_complete.status_code,
        expires_at = greatest(now(), r.created_at) + idempotency_complete.ttl,
        lease_token = NULL
    WHERE
        r.request_id = idempotency_complete.request_id
        AND r.lease_token = idempotency_complete.token
        AND r.status_code = 409
        AND r.result_payload = in_progress_payload;
    RETURN FOUND;
END
$function$;

COMMENT ON FUNCTION idempotency_complete(UUID, UUID, TEXT, INTEGER, INTERVAL) IS
'Stores result_payload and status_code for the key request_id, replayed for ttl, and ends its lease, if token (from idempotency_claim) still holds the key: true. A caller whose lease was taken over, released, or overwritten gets false and nothing is written. A lease that ran out but nobody took over is still the token''s. Waits at most its lock_timeout (100 ms) for a transaction that writes the key, then fails with 55P03 and writes nothing: call it again. Call it in its own transaction. SECURITY INVOKER.';

-- idempotency_release: give the key up after a failure worth retrying, so that
-- the next claim takes it at once (the record is deleted), only while the token
-- still holds it.
CREATE OR REPLACE FUNCTION idempotency_release(
    request_id UUID,
    token UUID
)
RETURNS BOOLEAN
LANGUAGE plpgsql
VOLATILE
SET lock_timeout = '100ms'
AS $function$
DECLARE
    in_progress_payload CONSTANT TEXT := '{"type":"about:blank","title":"Conflict","status":409,'
        || '"detail":"A request with this idempotency key is in progress; retry it later."}';
BEGIN
    IF idempotency_release.request_id IS NULL OR idempotency_release.token IS NULL THEN
        RAISE EXCEPTION 'idempotency_release: %', CASE
            WHEN idempotency_release.request_id IS NULL THEN 'request_id is NULL'
            ELSE 'token is NULL'
        END
        USING
            ERRCODE = 'null_value_not_allowed',
            DETAIL = 'found: NULL; expected: the key and the token its claim returned';
    END IF;

    DELETE FROM idempotency_records AS r
    WHERE
        r.request_id = idempotency_release.request_id
        AND r.lease_token = idempotency_release.token
        AND r.status_code = 409
        AND r.result_payload = in_progress_payload;
    RETURN FOUND;
END
$function$;

COMMENT ON FUNCTION idempotency_release(UUID, UUID) IS
'Gives the key request_id up, if token (from idempotency_claim) still holds it: deletes its in-progress record, so that the next claim takes the key at once, and returns true; false (nothing deleted) otherwise. For a failure worth retrying. Waits at most its lock_timeout (100 ms), then fails with 55P03. Call it in its own transaction. SECURITY INVOKER.';

-- idempotency_key: a deterministic name-based UUID (RFC 9562 version 8) for a
-- client's key within a scope (a tenant, an account): the first 128 bits of
-- SHA-256 over a fixed namespace and both strings, each as UTF-8 after its
-- length in bytes (4 bytes, big-endian), so that ('a', 'bc') and ('ab', 'c')
-- differ; then the version (8) and variant (10) bits. Built-ins only: sha256()
-- (not md5, refused on FIPS builds), convert_to(), int4send().
CREATE OR REPLACE FUNCTION idempotency_key(
    scope TEXT,
    client_key TEXT
)
RETURNS UUID
LANGUAGE plpgsql
IMMUTABLE
PARALLEL SAFE
AS $function$
DECLARE
    namespace CONSTANT BYTEA := decode('1e71d1276a3c48e297f3dcba64f6255b', 'hex');
    scope_bytes BYTEA;
    key_bytes BYTEA;
    digest BYTEA;
BEGIN
    IF idempotency_key.scope IS NULL OR idempotency_key.client_key IS NULL THEN
        RAISE EXCEPTION 'idempotency_key: % is NULL', CASE
            WHEN idempotency_key.scope IS NULL THEN 'scope'
            ELSE 'client_key'
        END
        USING
            ERRCODE = 'null_value_not_allowed',
            DETAIL = 'found: NULL; expected: the scope (a tenant or account id) and the key the client sent';
    END IF;
    IF idempotency_key.scope = '' OR idempotency_key.client_key = '' THEN
        RAISE EXCEPTION 'idempotency_key: % is empty', CASE
            WHEN idempotency_key.scope = '' THEN 'scope'
            ELSE 'client_key'
        END
        USING
            ERRCODE = 'invalid_parameter_value',
            DETAIL = 'found: an empty string; expected: at least one character';
    END IF;
    scope_bytes := convert_to(idempotency_key.scope, 'UTF8'::NAME);
    key_bytes := convert_to(idempotency_key.client_key, 'UTF8'::NAME);
    digest := substr(
        sha256(
            namespace
            || int4send(octet_length(scope_bytes)) || scope_bytes
            || int4send(octet_length(key_bytes)) || key_bytes
        ),
        1,
        16
    );
    digest := set_byte(digest, 6, (get_byte(digest, 6) & 15) | 128);
    digest := set_byte(digest, 8, (get_byte(digest, 8) & 63) | 128);
    RETURN encode(digest, 'hex')::UUID;
END
$function$;

COMMENT ON FUNCTION idempotency_key(TEXT, TEXT) IS
'The idempotency key (request_id) for the key client_key that a client sent within scope (a tenant, an account): a deterministic name-based UUID (RFC 9562 version 8: the first 128 bits of SHA-256 over a fixed namespace and both strings as length-prefixed UTF-8), so that two scopes sending the same key get different records and the same pair always gets the same UUID. NULL or empty arguments are refused.';

-- Pin each function's search_path to the schema it was created in (the first
-- schema of the current search_path, where 045 created the table), with
-- pg_catalog first and pg_temp last: it then acts on this schema's table
-- whatever search_path its caller has, and a temporary table of the same name
-- cannot stand in for it. The schema name is only known when the file runs,
-- hence EXECUTE.
DO $pin$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    target CONSTANT TEXT := pg_catalog.current_schema();
    signature TEXT;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    FOREACH signature IN ARRAY ARRAY[
        'idempotency_claim(UUID, VARCHAR, BYTEA, INTERVAL)',
        'idempotency_complete(UUID, UUID, TEXT, INTEGER, INTERVAL)',
        'idempotency_release(UUID, UUID)',
        'idempotency_key(TEXT, TEXT)'
    ]
    LOOP
        EXECUTE format('ALTER FUNCTION %1$I.%2$s SET search_path = pg_catalog, %1$I, pg_temp', target, signature);
    END LOOP;
    PERFORM set_config('search_path', saved_path, TRUE);
END
$pin$;
