"""Tests of concurrency and faults."""
