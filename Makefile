# Dousell Immo API. `make dev` serves the API locally; `make test` runs every test.
# Each target sets up what it needs: a Python 3.12 virtualenv (with the pinned valkey-server) and
# the pinned Vercel CLI. Prerequisites: python3.12, node/npm, PostgreSQL 15's binaries.

SHELL := /bin/bash
# The first Python 3.12 that runs, whatever the shell prefers (a pyenv or asdf shim that another
# choice turns away is skipped); PYTHON=/path/to/python3.12 overrides.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell for p in python3.12 python3 $$HOME/.pyenv/versions/3.12*/bin/python3.12 \
	/usr/local/bin/python3.12 /usr/bin/python3.12; do \
	$$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && { command -v $$p; break; }; done)
endif
VENV := .venv
PY := $(VENV)/bin/python
VERCEL_VERSION := 58.10.0
VERCEL := .tools/node_modules/.bin/vercel
STATE := .devstack

.PHONY: dev dakar stop redis-stop redis-start test test-fast lint bench drills venv tools clean

dev: venv tools ## run the whole API locally on http://127.0.0.1:3000
	$(PY) -m devstack up

dakar: venv ## the API as the Dakar server runs it (host/, Valkey over TCP) on http://127.0.0.1:3100
	$(PY) -m devstack dakar

stop: venv ## stop everything `make dev` or `make dakar` started
	$(PY) -m devstack stop

redis-stop: venv ## drill: stop only the Redis behind the Upstash stand-in
	$(PY) -m devstack redis-stop

redis-start: venv ## drill: start it again
	$(PY) -m devstack redis-start

test: venv tools ## every test, on real PostgreSQL, Valkey and the Vercel CLI
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest $(PYTEST_ARGS)

# Every test that needs no PostgreSQL, no local stack and no Vercel CLI (markers set by tests/conftest.py
# from the fixtures a test uses); Valkey, started by the tests from the pinned wheel, is in.
test-fast: venv ## the tests that need no PostgreSQL, stack or Vercel CLI (a few minutes)
	$(PY) -m pytest -m "not postgres and not stack and not vercel_cli" $(PYTEST_ARGS)

lint: venv ## ruff on everything, mypy strict on lib/, api/ and host/, the layer contract (.importlinter)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

bench: venv tools ## benchmarks against the local stack; prints a table
	$(PY) -m bench

drills: venv tools ## fault drills against the local stack; prints a table
	$(PY) -m drills

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@test -n "$(PYTHON)" || { echo "Python 3.12 is required and none was found: install it (pyenv install 3.12, apt install python3.12) or set PYTHON=/path/to/python3.12" >&2; exit 1; }
	@command -v npm >/dev/null || { echo "node and npm are required (the Vercel CLI is an npm package): apt install nodejs npm" >&2; exit 1; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { echo "PostgreSQL 15's binaries are required (initdb, pg_ctl, postgres): apt install postgresql" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

tools: $(VERCEL)

$(VERCEL):
	@command -v npm >/dev/null || { echo "node and npm are required (the Vercel CLI is an npm package): apt install nodejs npm" >&2; exit 1; }
	mkdir -p .tools
	npm install --prefix .tools --no-audit --no-fund --loglevel=error vercel@$(VERCEL_VERSION)

clean:
	rm -rf $(VENV) .tools $(STATE) .pytest_cache
