# Dousell Immo API. `make dev` serves the API locally; `make test` runs every test.
# Each target sets up what it needs: a Python 3.12 virtualenv and the pinned Vercel CLI.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.12 2>/dev/null || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
VERCEL_VERSION := 58.10.0
VERCEL := .tools/node_modules/.bin/vercel
STATE := .devstack

.PHONY: dev stop redis-stop redis-start test test-fast lint bench drills venv tools clean

dev: venv tools ## run the whole API locally on http://127.0.0.1:3000
	$(PY) -m devstack up

stop: venv ## stop everything `make dev` started
	$(PY) -m devstack stop

redis-stop: venv ## drill: stop only the Redis behind the Upstash stand-in
	$(PY) -m devstack redis-stop

redis-start: venv ## drill: start it again
	$(PY) -m devstack redis-start

test: venv tools ## every test, on real PostgreSQL, redis-server and the Vercel CLI
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

bench: venv tools ## benchmarks against the local stack; prints a table
	$(PY) -m bench

drills: venv tools ## fault drills against the local stack; prints a table
	$(PY) -m drills

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 12), "Python 3.12 is required (found " + sys.version.split()[0] + "): install it or set PYTHON=/path/to/python3.12"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

tools: $(VERCEL)

$(VERCEL):
	mkdir -p .tools
	npm install --prefix .tools --no-audit --no-fund --loglevel=error vercel@$(VERCEL_VERSION)

clean:
	rm -rf $(VENV) .tools $(STATE) .pytest_cache
