"""Tests of the harness itself: host safety, the docs runner, the record factory."""
