-- The save anchor: the same columns as idempotency_records with only the primary key
-- (no check constraint, no secondary index), created in its own schema.
CREATE TABLE idempotency_records (
    request_id UUID PRIMARY KEY,
    operation VARCHAR(100) NOT NULL,
    result_payload TEXT NOT NULL,
    status_code INTEGER,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL
)
