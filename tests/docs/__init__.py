"""Tests of the docs: every block runs, every claim holds."""
