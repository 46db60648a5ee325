-- 046_create_idempotency_cleanup_job.down.sql
--
-- Removes what 046_create_idempotency_cleanup_job.sql created: the function
-- cleanup_expired_idempotency_records(), the one its name reaches on the
-- search_path, by its schema-qualified signature. Where pg_cron is installed
-- in this database it first removes the job cleanup-idempotency (the
-- schedule the docs give), so that no job is left calling a function that
-- is gone.
-- Reverse of: 046_create_idempotency_cleanup_job.sql (apply it before 045's)
-- Apply:      psql -v ON_ERROR_STOP=1 --no-psqlrc -1
--             -f sql/046_create_idempotency_cleanup_job.down.sql
--
-- Where pg_cron is installed, run it as a superuser: cron.job shows any other
-- role only its own jobs, so it stops with an error naming what it can see.
-- Without a superuser, once one has made sure that no job of another role
-- calls the function, run it with
-- PGOPTIONS='-c idempotency.cron_jobs_checked=on': it removes the role's own
-- job, if any, and drops the function. Schema cron is used only where it is
-- pg_cron's own (docs/reliability.md, "Rolling back with a pg_cron job").
-- Re-runnable by design: where nothing is left to remove, it changes nothing.
-- Two statements, under the three rules of docs/reliability.md, "How the
-- files are built".

-- 1. Marks this file's checks as not passed in this session (rule 2).
DO $mark$
DECLARE
    this_file CONSTANT TEXT := '046_create_idempotency_cleanup_job.down.sql';
    pending CONSTANT TEXT := pg_catalog.split_part(
        pg_catalog.current_setting('idempotency.pending_guard', TRUE), ' ', 1);
BEGIN
    IF pending OPERATOR(pg_catalog.<>) ALL (ARRAY['', this_file]) THEN
        RAISE EXCEPTION '% stopped: % did not pass its checks earlier in this '
        'session', this_file, pending
        USING ERRCODE = '55000', DETAIL = pg_catalog.format('found: '
            'idempotency.pending_guard = %L; expected: %L', pending, ''),
        HINT = 'Nothing was dropped. Fix what the first error names, then '
        'apply the files again.';
    END IF;
    PERFORM pg_catalog.set_config('idempotency.pending_guard', this_file,
        FALSE);
END
$mark$;

-- 2. The lock and the checks, then the job and the function are removed:
-- one statement, so the job never goes while the function stays, nor the
-- other way round.
DO $drop$
DECLARE
    this_file CONSTANT TEXT := '046_create_idempotency_cleanup_job.down.sql';
    saved_path CONSTANT TEXT := pg_catalog.current_setting('search_path');
    -- Without a superuser: once someone who sees every job has made sure no
    -- other role's job calls the function, this role removes its own.
    without_superuser CONSTANT TEXT := 'Run this file as a superuser; nothing '
    'was dropped. Without one: once a superuser has made sure no other '
    'role''s job calls the function, run it with PGOPTIONS=''-c '
    'idempotency.cron_jobs_checked=on''.';
    resolved REGPROCEDURE;
    cron BOOLEAN;
    superuser BOOLEAN;
    job RECORD;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    -- One deployer at a time, waiting at most lock_timeout (rule 1).
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
        HINT = 'Nothing was dropped. Apply the file again once that deploy '
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
        HINT = 'Nothing was dropped. Fix what the first error names, then '
        'apply the files again.';
    END IF;

    PERFORM set_config('search_path', saved_path, TRUE);
    resolved := pg_catalog.to_regprocedure(
        'cleanup_expired_idempotency_records()');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', TRUE);
    -- Under REPEATABLE READ or SERIALIZABLE, a snapshot taken before the wait
    -- for the lock misses what the previous deployer did.
    IF resolved IS NOT NULL
        AND NOT EXISTS (SELECT FROM pg_proc AS p WHERE p.oid = resolved) THEN
        RAISE EXCEPTION 'cleanup_expired_idempotency_records() changed after '
        'this transaction''s snapshot was taken'
        USING ERRCODE = '40001', DETAIL = format('found: '
            'transaction_isolation %s, and the function created by another '
            'session after the snapshot; expected: a snapshot that shows it',
            current_setting('transaction_isolation')),
        HINT = 'Nothing was dropped: apply the file again, or under READ '
        'COMMITTED (PGOPTIONS=''-c default_transaction_isolation=read\ '
        'committed'').';
    END IF;

    -- pg_extension is readable by every role (to_regclass('cron.job') is
    -- not: 42501 without USAGE on schema cron).
    cron := EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_cron');
    superuser := (SELECT r.rolsuper FROM pg_roles AS r
        WHERE r.rolname = current_user);
    -- pg_cron's script creates schema cron: then it is a member of the
    -- extension. One of that name that another role made is never used.
    IF cron AND NOT EXISTS (
        SELECT FROM pg_depend AS d INNER JOIN pg_extension AS e
            ON d.refobjid = e.oid
        WHERE e.extname = 'pg_cron' AND d.deptype = 'e'
            AND d.classid = 'pg_namespace'::REGCLASS
            AND d.objid = to_regnamespace('cron')
    ) THEN
        RAISE EXCEPTION 'schema cron is not the schema of the extension '
        'pg_cron'
        USING ERRCODE = '42501', DETAIL = format('found: schema cron %s; '
            'expected: the schema pg_cron created', coalesce('owned by '
                || (SELECT pg_get_userbyid(n.nspowner) FROM pg_namespace AS n
                    WHERE n.nspname = 'cron'), 'absent')),
        HINT = 'Nothing was dropped. Find out who made that schema and why; '
        'a superuser can rename it.';
    END IF;
    -- Any other role sees only its own jobs in cron.job (row security): it
    -- cannot rule out a job of another role that calls the function. Where
    -- the function is already gone (a second run), no job can be left
    -- calling it.
    IF cron AND NOT superuser AND resolved IS NOT NULL
        AND current_setting('idempotency.cron_jobs_checked', TRUE)
        IS DISTINCT FROM 'on' THEN
        IF NOT has_schema_privilege('cron', 'USAGE') THEN
            RAISE EXCEPTION 'cannot check for the pg_cron job '
            'cleanup-idempotency as role %', current_user
            USING ERRCODE = '42501', DETAIL = format('pg_cron is installed in '
                'database %s; found: role %s without USAGE on schema cron; '
                'expected: a superuser, who sees and removes the job whoever '
                'owns it.', current_database(), current_user),
            HINT = without_superuser;
        END IF;
        SELECT j.jobid, j.username INTO job FROM cron.job AS j
        WHERE j.jobname = 'cleanup-idempotency' ORDER BY j.jobid LIMIT 1;
        RAISE EXCEPTION 'cannot remove every pg_cron job cleanup-idempotency '
        'as role %', current_user
        USING ERRCODE = '42501', DETAIL = format('found: %s; expected: a '
            'superuser, who sees and removes the job whoever owns it '
            '(cron.job shows role %s only its own jobs).', coalesce(
                format('job cleanup-idempotency (jobid %s) owned by %s',
                    job.jobid, job.username),
                'no job of role ' || current_user
                || ', jobs of other roles unknown'), current_user),
        HINT = without_superuser;
    END IF;
    -- A superuser sees every role's jobs. Jobs under another name that call
    -- the function are not this file's to remove: it stops and names them.
    IF cron AND superuser THEN
        FOR job IN
            SELECT j.jobid, j.jobname, j.username FROM cron.job AS j
            WHERE j.database = current_database()
                AND j.jobname IS DISTINCT FROM 'cleanup-idempotency'
                AND j.command ILIKE '%cleanup_expired_idempotency_records%'
            ORDER BY j.jobid
        LOOP
            RAISE EXCEPTION 'pg_cron job % (jobid %) owned by % calls '
            'cleanup_expired_idempotency_records()', job.jobname, job.jobid,
            job.username
            USING ERRCODE = '2BP01', DETAIL = 'found: a job under another '
            'name than cleanup-idempotency; expected: none.',
            HINT = format('Remove it first (SELECT cron.unschedule(%s)); '
                'nothing was dropped.', job.jobid);
        END LOOP;
    END IF;

    -- The job, by its jobid: a superuser removes it whoever scheduled it;
    -- another role (with idempotency.cron_jobs_checked = on) only its own,
    -- the only one it can see. Then the function.
    IF cron AND (superuser OR resolved IS NOT NULL
        AND has_schema_privilege('cron', 'USAGE')) THEN
        PERFORM cron.unschedule(j.jobid) FROM cron.job AS j
        WHERE j.jobname = 'cleanup-idempotency'
            AND j.database = current_database()
            AND (superuser OR j.username = current_user);
    END IF;
    IF resolved IS NOT NULL THEN
        EXECUTE format('DROP FUNCTION %s', resolved);
    END IF;
    PERFORM set_config('idempotency.pending_guard', '', FALSE);
    PERFORM set_config('search_path', saved_path, TRUE);
END
$drop$;
