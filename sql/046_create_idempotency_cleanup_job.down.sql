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
-- It acts on the install's function only: the one the name reaches on the
-- search_path (functions are never looked up in pg_temp), removed by its
-- schema-qualified signature.
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
-- from here: unschedule its job there first). Schema cron is used only when
-- pg_cron is installed here and the schema is the extension's own: one of that
-- name that another role created is never read or called.
--
-- Re-runnable by design (nothing to remove is no error): running it twice, or
-- where 046 never ran, succeeds and changes nothing.
--
-- The blocks follow the three rules numbered in 045's header: one deployer at a
-- time (the advisory lock 7594306390479384566, shared with the up files; a wait
-- bounded by lock_timeout, 2 s where the deployer set none, SQLSTATE 55P03
-- naming the pid waited for); a refused check stops the rest, also under plain
-- psql -f (the session setting idempotency.pending_guard, so the statements run
-- in one session, in order); another role's code never runs here (search_path
-- pg_catalog, pg_temp, the caller's only to see what the function's name
-- resolves to).

-- The check below has not passed yet in this session (045's rule 2). A refusal
-- that another file left pending in this session stops this file too.
DO $begin$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    pending TEXT;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    pending := coalesce(current_setting('idempotency.pending_guard', TRUE), '');
    IF pending <> '' AND split_part(pending, ' ', 1) <> '046_create_idempotency_cleanup_job.down.sql' THEN
        RAISE EXCEPTION '046_create_idempotency_cleanup_job.down.sql stopped: % did not pass its checks earlier in this session',
        split_part(pending, ' ', 1)
        USING
            ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('found: idempotency.pending_guard = %L; expected: %L', pending, ''),
            HINT = 'Nothing of this file was dropped. Fix what the first error names, then apply the files again.';
    END IF;
    PERFORM set_config('idempotency.pending_guard', '046_create_idempotency_cleanup_job.down.sql guard', FALSE);
    PERFORM set_config('search_path', saved_path, TRUE);
END
$begin$;

-- Guard: no pg_cron job is left calling the function once it is gone.
DO $guard$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    resolved REGPROCEDURE;
    job RECORD;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    -- Rule 1: take turns with any other deployer, waiting at most lock_timeout.
    IF current_setting('lock_timeout') IN ('0', '0ms') THEN
        PERFORM set_config('lock_timeout', '2s', TRUE);
    END IF;
    BEGIN
        PERFORM pg_advisory_xact_lock(7594306390479384566);
    EXCEPTION WHEN lock_not_available THEN
        RAISE EXCEPTION 'timed out waiting for another deployer of idempotency_records'
        USING
            ERRCODE = 'lock_not_available',
            DETAIL = format('found: advisory lock 7594306390479384566 held by pid %s past lock_timeout %s; '
                || 'expected: free', (
                    SELECT string_agg(l.pid::TEXT, ', ') FROM pg_locks AS l
                    WHERE l.locktype = 'advisory' AND l.classid = 1768187245 AND l.objid = 45046 AND l.granted
                ), current_setting('lock_timeout')),
            HINT = 'Nothing more was dropped. Apply the file again once that deploy has ended, or with a '
            || 'longer lock_timeout.';
    END;
    PERFORM FROM pg_seclabel WHERE FALSE;
    -- Rule 2: only in its turn among the checks.
    IF current_setting('idempotency.pending_guard', TRUE)
        IS DISTINCT FROM '046_create_idempotency_cleanup_job.down.sql guard' THEN
        RAISE EXCEPTION '046_create_idempotency_cleanup_job.down.sql stopped: a check before this statement did not pass'
        USING
            ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('found: idempotency.pending_guard = %L; expected: %L',
                current_setting('idempotency.pending_guard', TRUE), '046_create_idempotency_cleanup_job.down.sql guard'),
            HINT = 'Nothing more was dropped. Fix what the first error names, then apply the files again.';
    END IF;

    PERFORM set_config('search_path', saved_path, TRUE);
    resolved := pg_catalog.to_regprocedure('cleanup_expired_idempotency_records()');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    -- 045's rule 1, under REPEATABLE READ or SERIALIZABLE: the snapshot shows it.
    IF resolved IS NOT NULL AND NOT EXISTS (SELECT FROM pg_proc AS p WHERE p.oid = resolved::OID) THEN
        RAISE EXCEPTION 'cleanup_expired_idempotency_records() changed after this transaction''s snapshot was taken'
        USING
            ERRCODE = 'serialization_failure',
            DETAIL = format(
                'found: transaction_isolation %s, and the function created by another session after the snapshot; '
                || 'expected: a snapshot that shows it', current_setting('transaction_isolation')
            ),
            HINT = 'Nothing was dropped: apply the file again, or under READ COMMITTED '
            || '(PGOPTIONS=''-c default_transaction_isolation=read\ committed'').';
    END IF;

    <<checks>>
    BEGIN
        -- pg_extension is readable by every role; to_regclass('cron.job') is not
        -- (SQLSTATE 42501 without USAGE on schema cron).
        IF NOT EXISTS (
            SELECT FROM pg_catalog.pg_extension
            WHERE extname = 'pg_cron'
        ) THEN
            EXIT checks;
        END IF;
        -- pg_cron's script creates schema cron, so the schema is a member of the
        -- extension; its owner is the superuser who created the extension.
        IF NOT EXISTS (
            SELECT
            FROM pg_depend AS d
            INNER JOIN pg_extension AS e ON d.refobjid = e.oid
            WHERE
                e.extname = 'pg_cron'
                AND d.classid = 'pg_catalog.pg_namespace'::REGCLASS::OID
                AND d.objid = to_regnamespace('cron')::OID
                AND d.deptype = 'e'
        ) THEN
            RAISE EXCEPTION 'schema cron is not the schema of the extension pg_cron'
            USING
                ERRCODE = 'insufficient_privilege',
                DETAIL = format('found: schema cron %s; expected: the schema pg_cron created',
                    coalesce('owned by ' || (
                        SELECT pg_get_userbyid(n.nspowner) FROM pg_namespace AS n WHERE n.nspname = 'cron'
                    ), 'absent')),
                HINT = 'Nothing was dropped. Find out who made that schema and why; a superuser can rename it.';
        END IF;

        IF NOT (
            SELECT rolsuper
            FROM pg_catalog.pg_roles
            WHERE rolname = current_user
        ) THEN
            -- Already dropped (a second run): no job can be left calling it.
            IF resolved IS NULL THEN
                EXIT checks;
            END IF;
            -- The deployer states that no other role's job calls the function:
            -- the next statement removes this role's own job, if it can see any.
            IF current_setting('idempotency.cron_jobs_checked', TRUE) = 'on' THEN
                EXIT checks;
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
    END checks;
    PERFORM set_config('idempotency.pending_guard', '', FALSE);
    PERFORM set_config('search_path', saved_path, TRUE);
END
$guard$;

-- The job cleanup-idempotency, then the function, in one statement: with or
-- without -1, the job is never removed while the function stays, nor the other
-- way round.
DO $drop$
DECLARE
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    resolved REGPROCEDURE;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    -- Rule 1: take turns with any other deployer, waiting at most lock_timeout.
    IF current_setting('lock_timeout') IN ('0', '0ms') THEN
        PERFORM set_config('lock_timeout', '2s', TRUE);
    END IF;
    BEGIN
        PERFORM pg_advisory_xact_lock(7594306390479384566);
    EXCEPTION WHEN lock_not_available THEN
        RAISE EXCEPTION 'timed out waiting for another deployer of idempotency_records'
        USING
            ERRCODE = 'lock_not_available',
            DETAIL = format('found: advisory lock 7594306390479384566 held by pid %s past lock_timeout %s; '
                || 'expected: free', (
                    SELECT string_agg(l.pid::TEXT, ', ') FROM pg_locks AS l
                    WHERE l.locktype = 'advisory' AND l.classid = 1768187245 AND l.objid = 45046 AND l.granted
                ), current_setting('lock_timeout')),
            HINT = 'Nothing more was dropped. Apply the file again once that deploy has ended, or with a '
            || 'longer lock_timeout.';
    END;
    PERFORM FROM pg_seclabel WHERE FALSE;
    -- Rule 2: only once every check before this statement has passed.
    IF current_setting('idempotency.pending_guard', TRUE) IS DISTINCT FROM '' THEN
        RAISE EXCEPTION '046_create_idempotency_cleanup_job.down.sql stopped: a check before this statement did not pass'
        USING
            ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('found: idempotency.pending_guard = %L; expected: %L',
                current_setting('idempotency.pending_guard', TRUE), ''),
            HINT = 'Nothing more was dropped. Fix what the first error names, then apply the files again.';
    END IF;

    PERFORM set_config('search_path', saved_path, TRUE);
    resolved := pg_catalog.to_regprocedure('cleanup_expired_idempotency_records()');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);

    IF EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
            -- By jobid: a superuser removes the job whoever scheduled it.
            PERFORM cron.unschedule(jobid)
            FROM cron.job
            WHERE
                jobname = 'cleanup-idempotency'
                AND database = current_database();
        ELSIF resolved IS NOT NULL AND has_schema_privilege('cron', 'USAGE') THEN
            -- Only with idempotency.cron_jobs_checked = on (the check above): this
            -- role's own job, the only one it can see.
            PERFORM cron.unschedule(jobid)
            FROM cron.job
            WHERE
                jobname = 'cleanup-idempotency'
                AND username = current_user
                AND database = current_database();
        END IF;
    END IF;

    IF resolved IS NOT NULL THEN
        EXECUTE format('DROP FUNCTION %s', resolved);
    END IF;
    PERFORM set_config('search_path', saved_path, TRUE);
END
$drop$;
