-- 046_create_idempotency_cleanup_job.down.sql
--
-- Removes what 046_create_idempotency_cleanup_job.sql created: the function
-- cleanup_expired_idempotency_records(). Where pg_cron is installed in this
-- database and a job named cleanup-idempotency exists (the schedule the docs
-- give), it unschedules that job first, so no job is left calling a function
-- that is gone. Where pg_cron or the job is absent, that step does nothing.
-- Reverse of: 046_create_idempotency_cleanup_job.sql
-- Apply:      psql -v ON_ERROR_STOP=1 --no-psqlrc -1 -f sql/046_create_idempotency_cleanup_job.down.sql
-- Apply it before 045_create_idempotency_records.down.sql.
--
-- Re-runnable by design (DROP ... IF EXISTS, guarded unschedule): running it
-- twice, or where 046 never ran, succeeds and changes nothing.

DO $unschedule$
BEGIN
    -- Two separate IFs: the inner query names cron.job, which only parses
    -- where pg_cron is installed.
    IF to_regclass('cron.job') IS NOT NULL THEN
        IF EXISTS (
            SELECT 1
            FROM cron.job
            WHERE jobname = 'cleanup-idempotency'
        ) THEN
            PERFORM cron.unschedule('cleanup-idempotency');
        END IF;
    END IF;
END
$unschedule$;

DROP FUNCTION IF EXISTS cleanup_expired_idempotency_records();
