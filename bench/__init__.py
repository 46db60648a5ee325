"""The benchmark: pgbench scripts and SQL for every hot path (bench/*.sql), the pgbench driver
(pgbench.py), the scratch database (database.py), one module per phase (lookup, save, cleanup,
floor, storage), the report and plot; `make bench` runs bench/run.py."""
