"""Tests of using the table: get, save, cleanup, and scheduling it."""
