"""Tests of the recipes of docs/patterns.md, and scaling."""
