"""Tests of other roles: grants, and code another role plants."""
