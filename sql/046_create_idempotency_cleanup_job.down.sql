-- 046_create_idempotency_cleanup_job.down.sql
--
-- Removes what 046_create_idempotency_cleanup_job.sql created: the function
-- cleanup_expired_idempotency_records(). Where pg_cron is installed in this
-- database it first removes the job named cleanup-idempotency (the schedule the
-- docs give), so that no job is left calling a function that is gone.
-- Reverse of: 046_create_idempotency_cleanup_job.sql
-- Apply:      psql -v ON_ERROR_STOP=1 --no-psqlrc -1 -f sql/046_create_idempotency_cleanup_job.down.sql
-- Apply it before 045_create_idempotency_records.down.sql.
--
-- Who may run it where pg_cron is installed: a superuser. pg_cron names jobs
-- per user and cron.job shows every other role only its own jobs (row
-- security), so only a superuser can see, and remove by its jobid, a job
-- whoever scheduled it. Run by another role, the file stops with an error
-- naming the job and its owner as far as that role can see them, before it
-- drops anything. Where no superuser is at hand (a managed service), a
-- superuser-free rollback is possible once someone who can see every job has
-- made sure no other role's job calls the function: run the file with
-- PGOPTIONS='-c idempotency.cron_jobs_checked=on'; the role then removes its own
-- cleanup-idempotency job, if any, and drops the function. Where pg_cron is
-- absent from this database, any role that owns the function may run it (a
-- pg_cron installed in another database, cron.database_name, cannot be seen
-- from here: unschedule its job there first).
--
-- Re-runnable by design (DROP ... IF EXISTS, a job removed only when present):
-- running it twice, or where 046 never ran, succeeds and changes nothing.

DO $unschedule$
DECLARE
    job RECORD;
BEGIN
    -- pg_extension is readable by every role; to_regclass('cron.job') is not
    -- (SQLSTATE 42501 without USAGE on schema cron).
    IF NOT EXISTS (
        SELECT FROM pg_catalog.pg_extension
        WHERE extname = 'pg_cron'
    ) THEN
        RETURN;
    END IF;

    IF NOT (
        SELECT rolsuper
        FROM pg_catalog.pg_roles
        WHERE rolname = current_user
    ) THEN
        -- Already dropped (a second run): no job can be left calling it.
        IF to_regprocedure('cleanup_expired_idempotency_records()') IS NULL THEN
            RETURN;
        END IF;
        -- The deployer states that no other role's job calls the function:
        -- remove this role's own job, if it can see any, and go on to the drop.
        IF current_setting('idempotency.cron_jobs_checked', TRUE) = 'on' THEN
            IF has_schema_privilege('cron', 'USAGE') THEN
                PERFORM cron.unschedule(jobid)
                FROM cron.job
                WHERE
                    jobname = 'cleanup-idempotency'
                    AND username = current_user
                    AND database = current_database();
            END IF;
            RETURN;
        END IF;
        IF NOT has_schema_privilege('cron', 'USAGE') THEN
            RAISE EXCEPTION 'cannot check for the pg_cron job cleanup-idempotency as role %', current_user
            USING
                ERRCODE = 'insufficient_privilege',
                DETAIL = format(
                    'pg_cron is installed in database %s; found: role %s without USAGE on schema cron; '
                    || 'expected: a superuser, who sees and removes the job whoever owns it.',
                    current_database(), current_user
                ),
                HINT = 'Run this file as a superuser; nothing was dropped. Without one: once a superuser has made sure '
                || 'no other role''s job calls the function, run it with PGOPTIONS=''-c idempotency.cron_jobs_checked=on''.';
        END IF;
        -- This role sees only its own jobs: it cannot rule out one of another role.
        SELECT jobid, username INTO job
        FROM cron.job
        WHERE jobname = 'cleanup-idempotency'
        ORDER BY jobid
        LIMIT 1;
        RAISE EXCEPTION 'cannot remove every pg_cron job cleanup-idempotency as role %', current_user
        USING
            ERRCODE = 'insufficient_privilege',
            DETAIL = format(
                'found: %s; expected: a superuser, who sees and removes the job whoever owns it '
                || '(cron.job shows role %s only its own jobs).',
                coalesce(
                    format('job cleanup-idempotency (jobid %s) owned by %s', job.jobid, job.username),
                    'no job of role ' || current_user || ', jobs of other roles unknown'
                ),
                current_user
            ),
            HINT = 'Run this file as a superuser; nothing was dropped. Without one: once a superuser has made sure '
            || 'no other role''s job calls the function, run it with PGOPTIONS=''-c idempotency.cron_jobs_checked=on''.';
    END IF;

    -- A superuser sees every role's jobs. Jobs under another name that call the
    -- function are not this file's to remove: stop and name them.
    FOR job IN
        SELECT jobid, jobname, username
        FROM cron.job
        WHERE
            database = current_database()
            AND jobname IS DISTINCT FROM 'cleanup-idempotency'
            AND command ILIKE '%cleanup_expired_idempotency_records%'
        ORDER BY jobid
    LOOP
        RAISE EXCEPTION 'pg_cron job % (jobid %) owned by % calls cleanup_expired_idempotency_records()',
        job.jobname, job.jobid, job.username
        USING
            ERRCODE = 'dependent_objects_still_exist',
            DETAIL = 'found: a job under another name than cleanup-idempotency; expected: none.',
            HINT = format('Remove it first (SELECT cron.unschedule(%s)); nothing was dropped.', job.jobid);
    END LOOP;

    PERFORM cron.unschedule(jobid)
    FROM cron.job
    WHERE
        jobname = 'cleanup-idempotency'
        AND database = current_database();
END
$unschedule$;

DROP FUNCTION IF EXISTS cleanup_expired_idempotency_records();
