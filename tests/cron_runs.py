"""pg_cron's runs of a job as the tests see them in cron.job_run_details: waiting for the finished
runs of a job scheduled every minute, and the guide's failed-runs alert as it printed it before
(kept as the counter-example: a run that could not connect has no start_time in pg_cron before
1.6.3, so it counted none)."""

from __future__ import annotations

import time

import psycopg

FIRE_TIMEOUT = 75.0  # seconds: an every-minute job fires within 60 s of being scheduled
OLD_FAILED_RUNS = """
SELECT count(*) AS failed_runs
FROM cron.job_run_details AS d
JOIN cron.job AS j ON j.jobid = d.jobid
WHERE j.jobname = 'cleanup-idempotency'
  AND d.status = 'failed'
  AND d.start_time > now() - INTERVAL '2 hours'
"""


def finished_runs(conn: psycopg.Connection, jobid: int, timeout: float = FIRE_TIMEOUT) -> list[tuple[str, str | None]]:
    """The finished runs of a job (status, return_message), first run first, as soon as there is
    one; none if there is none within `timeout` seconds. `conn` must see the job's runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = conn.execute(
            "SELECT status, return_message FROM cron.job_run_details "
            "WHERE jobid = %s AND status IN ('succeeded', 'failed') ORDER BY runid",
            (jobid,),
        ).fetchall()
        if runs:
            return runs
        time.sleep(1)
    return []
