# The only commands anyone needs. Every target sets up .venv/ first when it must.
#   make up     start the local mesh (etcd, router, Python runtime, example models)
#   make test   run every test, then the linters
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION ?= 0.13.9
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.meshserve-installed

.PHONY: venv examples system-deps up test lint protos lock bench

venv: $(STAMP)

# Rebuilt only when the lock or the project metadata changes.
$(STAMP): requirements.lock pyproject.toml
	@if [ ! -x $(BIN)/python ]; then \
		$(PYTHON) -m venv $(VENV) || { \
			echo "python3 -m venv failed: installing python3-venv"; rm -rf $(VENV); \
			apt-get update && apt-get install -y python3-venv && $(PYTHON) -m venv $(VENV); }; \
	fi
	@[ -x $(BIN)/uv ] || $(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"
	$(BIN)/uv pip install --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	@touch $@

examples: venv
	$(BIN)/python scripts/build_examples.py

up: venv examples
	$(BIN)/meshserve up

# PostgreSQL for the audit store's tests: Debian's package, installed when missing (as root).
system-deps:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing PostgreSQL (Debian package postgresql) for the audit store tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; \
	else echo "PostgreSQL is missing and this is not root: the PostgreSQL audit tests will be skipped"; fi

test: venv examples system-deps
	$(BIN)/pytest tests
	$(MAKE) lint

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code
	$(BIN)/python scripts/gen_protos.py --check

protos: venv
	$(BIN)/python scripts/gen_protos.py

lock: venv
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

bench: venv examples
	$(BIN)/python bench/run.py
	$(BIN)/python -m meshserve.services.audit.bench --events 50000
