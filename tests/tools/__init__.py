"""Tests of other migration tools and the export layouts."""
