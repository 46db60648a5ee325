"""Tests of applying the files as deployments do."""
