"""Tests of the catalog and the migration files themselves."""
