# The two commands the README opens with: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS := postgresql,mysql,environ,prometheus
PYTEST_ARGS ?=

.PHONY: test lint typecheck suites pytest-all django-suite django-suite-pgbouncer packaging demo bench-pool bench-leases bench-tagging system-deps clean

## test: lint, type-check, our suite and Django's on PostgreSQL and on MariaDB, packaging.
test: system-deps $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) tools/dbservers.py --postgres --mysql --redis -- $(MAKE) --no-print-directory suites
	$(VENV)/bin/tox -e packaging

# Every run happens (needs the servers' URLs, see tools/dbservers.py); fails if any failed.
suites:
	@rc=0; \
	$(MAKE) --no-print-directory pytest-all || rc=1; \
	$(MAKE) --no-print-directory django-suite || rc=1; \
	$(MAKE) --no-print-directory django-suite-pgbouncer || rc=1; \
	exit $$rc

pytest-all:
	@rc=0; \
	echo "=== pytest on PostgreSQL ==="; \
	DBPOOL_TEST_DATABASE=postgresql $(PY) -m pytest $(PYTEST_ARGS) || rc=1; \
	echo "=== pytest on MariaDB ==="; \
	DBPOOL_TEST_DATABASE=mysql $(PY) -m pytest $(PYTEST_ARGS) || rc=1; \
	exit $$rc

# Modules of Django's own test suite against each of our ENGINEs, with request leases (the
# default) and with transaction leases.
django-suite:
	@rc=0; \
	for lease in request transaction; do \
		$(PY) tools/django_suite.py postgresql --engine django_dbpool.backends.postgresql \
			--lease $$lease || rc=1; \
		$(PY) tools/django_suite.py mysql --engine django_dbpool.backends.mysql \
			--lease $$lease || rc=1; \
	done; \
	exit $$rc

# The same modules through PgBouncer in transaction pooling mode, with the settings the
# README documents. Starts PgBouncer (and PostgreSQL, unless DBPOOL_TEST_POSTGRES_URL is set).
django-suite-pgbouncer:
	$(PY) tools/dbservers.py --pgbouncer -- \
		$(PY) tools/django_suite.py postgresql --engine django_dbpool.backends.postgresql --pgbouncer

## test-faults: the fault suite in full on PostgreSQL and MariaDB; writes benchmarks/results/faults.md.
.PHONY: test-faults
test-faults: system-deps $(STAMP)
	$(PY) tools/dbservers.py --postgres --mysql -- sh -c '\
		rc=0; \
		DBPOOL_FAULTS=full DBPOOL_TEST_DATABASE=postgresql $(PY) -m pytest $(PYTEST_ARGS) tests/faults || rc=1; \
		DBPOOL_FAULTS=full DBPOOL_TEST_DATABASE=mysql $(PY) -m pytest $(PYTEST_ARGS) tests/faults || rc=1; \
		exit $$rc'
	$(PY) -m tests.faults.report

## test-servers: the real-server scenarios in full (uvicorn, gunicorn with uvicorn workers,
## daphne, Celery with Redis) on PostgreSQL and MariaDB; make test runs a short version.
.PHONY: test-servers
test-servers: system-deps $(STAMP)
	$(PY) tools/dbservers.py --postgres --mysql --redis -- sh -c '\
		rc=0; \
		for db in postgresql mysql; do \
			DBPOOL_SERVERS=full DBPOOL_TEST_DATABASE=$$db $(PY) -m pytest $(PYTEST_ARGS) \
				tests/test_asgi_servers.py tests/test_celery_worker.py || rc=1; \
		done; \
		exit $$rc'

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

packaging: $(STAMP)
	$(VENV)/bin/tox -e packaging

## demo: the example project on a throwaway PostgreSQL (or $$DATABASE_URL), served by gunicorn.
demo: system-deps $(STAMP)
	$(PY) example_project/demo.py

## bench: every benchmark against the alternatives, on throwaway servers; writes benchmarks/results/.
bench: system-deps $(STAMP)
	$(PY) -m pip install -q -r benchmarks/requirements.txt
	$(PY) tools/dbservers.py --postgres --mysql -- sh -c '\
		$(PY) benchmarks/django_cycle.py && $(PY) benchmarks/request_cpu.py && \
		$(PY) benchmarks/web.py load jitter'
	$(PY) benchmarks/pool_cycle.py
	$(PY) benchmarks/report.py

## bench-pool: the pool's own overhead against psycopg_pool and SQLAlchemy (no server needed);
## writes benchmarks/results/pool_cycle.json and the README's Overhead table.
bench-pool: $(STAMP)
	$(PY) -m pip install -q -r benchmarks/requirements.txt
	$(PY) benchmarks/pool_cycle.py
	$(PY) benchmarks/report.py

## bench-leases: transaction leases against persistent connections, request leases, Django's
## native pool and django-pg-real-pool (about 14 min); writes benchmarks/results/leases.json and
## the README's Transaction leases tables.
bench-leases: system-deps $(STAMP)
	$(PY) -m pip install -q -r benchmarks/requirements.txt
	$(PY) tools/dbservers.py --postgres --mysql -- $(PY) benchmarks/leases.py
	$(PY) benchmarks/report.py --no-chart

## bench-tagging: per-statement cost of query comments, tagging off and on (no server needed).
bench-tagging: $(STAMP)
	$(PY) benchmarks/tagging.py

# Server binaries and the mysqlclient build dependencies; installed with apt-get when root.
system-deps:
	@$(PYTHON) tools/dbservers.py ensure

$(STAMP): setup.cfg pyproject.toml tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]' -r tests/requirements.txt
	touch $@

clean:
	rm -rf $(VENV) build dist *.egg-info .tox .mypy_cache .ruff_cache .pytest_cache .hypothesis
