"""Tests of plans, storage and the benchmark."""
