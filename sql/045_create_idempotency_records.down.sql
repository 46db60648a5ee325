-- 045_create_idempotency_records.down.sql
--
-- Removes what 045_create_idempotency_records.sql created, in reverse order:
-- the two indexes, then the table idempotency_records with its primary key,
-- chk_expires_at and comments. Every stored record is deleted with it.
-- Reverse of: 045_create_idempotency_records.sql
-- Apply:      psql -v ON_ERROR_STOP=1 --no-psqlrc -1 -f sql/045_create_idempotency_records.down.sql
-- Apply 046_create_idempotency_cleanup_job.down.sql first.
--
-- Re-runnable by design (DROP ... IF EXISTS): running it twice, or on a
-- database where 045 never ran, succeeds and changes nothing. No CASCADE: if
-- another object depends on the table (a view, a foreign key), the drop stops
-- with an error naming it rather than removing it silently.

DROP INDEX IF EXISTS idx_idempotency_operation;

DROP INDEX IF EXISTS idx_idempotency_expires;

DROP TABLE IF EXISTS idempotency_records;
