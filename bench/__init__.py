"""The benchmark: pgbench scripts for every hot path and the driver that runs them (bench/run.py)."""
