-- The save anchor: the same columns as idempotency_records (those of the migrated table in
-- schema save, with their types, NOT NULL and defaults) with only the primary key (no check
-- constraint, no secondary index), created in its own schema.
CREATE TABLE idempotency_records (
    LIKE save.idempotency_records INCLUDING DEFAULTS,
    PRIMARY KEY (request_id)
)
