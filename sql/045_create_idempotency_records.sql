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
-- Re-runnable by design: pipelines re-apply files, and a run cut off part way
-- must complete when applied again. Hence IF NOT EXISTS on every CREATE, and
-- COMMENT ON, which simply overwrites. IF NOT EXISTS only checks the name, so
-- the guard after CREATE TABLE refuses a pre-existing table of another shape
-- instead of silently building on it.

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
-- name. Stop with a clear error if that table lacks the six columns this file
-- describes (name, type, nullability). Columns a project added in its own later
-- migrations are left alone, so re-running this file stays safe after them.
DO $guard$
DECLARE
    found_shape TEXT;
    wanted_shape CONSTANT TEXT :=
    'created_at timestamp with time zone not null, '
    || 'expires_at timestamp with time zone not null, '
    || 'operation character varying(100) not null, '
    || 'request_id uuid not null, '
    || 'result_payload text not null, '
    || 'status_code integer null';
BEGIN
    SELECT
        string_agg(
            format(
                '%s %s %s',
                a.attname,
                format_type(a.atttypid, a.atttypmod),
                CASE WHEN a.attnotnull THEN 'not null' ELSE 'null' END
            ),
            ', ' ORDER BY a.attname
        )
    INTO found_shape
    FROM pg_catalog.pg_attribute AS a
    WHERE
        a.attrelid = to_regclass(format('%I.idempotency_records', current_schema()))
        AND a.attname IN (
            'request_id', 'operation', 'result_payload',
            'status_code', 'created_at', 'expires_at'
        )
        AND NOT a.attisdropped;

    IF found_shape IS DISTINCT FROM wanted_shape THEN
        RAISE EXCEPTION 'table %.idempotency_records already exists with other columns', current_schema()
        USING
            ERRCODE = 'duplicate_table',
            DETAIL = format('found: %s; expected: %s', found_shape, wanted_shape),
            HINT = 'Rename or drop the existing table, or apply the migration in another schema.';
    END IF;
END
$guard$;

-- Cleanup: DELETE ... WHERE expires_at <= now() is a range scan on this index.
CREATE INDEX IF NOT EXISTS idx_idempotency_expires
ON idempotency_records USING btree (expires_at);

-- Monitoring and analytics: counts and filters by operation.
CREATE INDEX IF NOT EXISTS idx_idempotency_operation
ON idempotency_records USING btree (operation);

COMMENT ON TABLE idempotency_records IS
'Stores idempotency records for duplicate request prevention: the stored result of each request, replayed when the same request_id is seen again before expires_at.';

COMMENT ON COLUMN idempotency_records.request_id IS
'Unique request identifier (idempotency key) sent by the client.';

COMMENT ON COLUMN idempotency_records.operation IS
'Name of the operation the request performed, e.g. payment or transfer (at most 100 characters).';

COMMENT ON COLUMN idempotency_records.result_payload IS
'Result of the first execution, replayed to duplicates (JSON text).';

COMMENT ON COLUMN idempotency_records.status_code IS
'HTTP status code of the first execution; NULL when not applicable.';

COMMENT ON COLUMN idempotency_records.created_at IS
'When the record was stored.';

COMMENT ON COLUMN idempotency_records.expires_at IS
'End of the record''s lifetime: it is no longer replayed after this instant and cleanup deletes it (must be later than created_at).';
