"""Tests on a server shaped like a managed service: no superuser, pg_cron in database postgres."""
