"""Tests of the verification script, tests/test_idempotency_migrations.sql."""
