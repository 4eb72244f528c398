# The only commands anyone needs. Every target sets up .venv/ first when it must.
#   make up     start the local mesh (etcd, NATS, audit, router, Python, R and Triton runtimes, examples)
#   make test   run every test, then the linters
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION ?= 0.13.9
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.meshserve-installed

.PHONY: venv examples system-deps bench-deps up test lint protos lock bench

venv: $(STAMP)

# Rebuilt only when the lock or the project metadata changes.
$(STAMP): requirements.lock requirements-triton.lock pyproject.toml
	@if [ ! -x $(BIN)/python ]; then \
		$(PYTHON) -m venv $(VENV) || { \
			echo "python3 -m venv failed: installing python3-venv"; rm -rf $(VENV); \
			apt-get update && apt-get install -y python3-venv && $(PYTHON) -m venv $(VENV); }; \
	fi
	@[ -x $(BIN)/uv ] || $(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"
	$(BIN)/uv pip install --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	$(BIN)/uv pip install --python $(BIN)/python --no-deps --require-hashes \
		--target $(VENV)/opt/pytriton -r requirements-triton.lock
	@touch $@

examples: venv system-deps
	$(BIN)/python scripts/build_examples.py

up: venv examples
	$(BIN)/meshserve up

# Debian packages: R and randomForest for the R runtime, PostgreSQL for the audit store's
# tests, Python 3.11 with numpy 1 for Triton's Python-backend stub (see meshserve/local/triton.py).
# Installed when missing, when running as root (CRAN is not used: Debian has them).
R_PACKAGES := r-base-core r-cran-randomforest
system-deps:
	@missing=""; \
	command -v Rscript >/dev/null || missing="$(R_PACKAGES)"; \
	[ -z "$$missing" ] && ! Rscript -e 'quit(status = !requireNamespace("randomForest", quietly = TRUE))' \
		>/dev/null 2>&1 && missing="r-cran-randomforest"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing postgresql"; \
	[ -d /usr/lib/python3/dist-packages/numpy ] && ls /usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0 >/dev/null 2>&1 \
		|| missing="$$missing libpython3.11 python3-numpy"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "missing Debian packages ($$missing) and not root: the tests that need them will be skipped"; fi

# Triton's tests fail rather than skip here: make installs everything they need.
test: venv system-deps examples
	MESHSERVE_REQUIRE_TRITON=1 $(BIN)/pytest tests
	$(MAKE) lint

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code
	$(BIN)/python scripts/gen_protos.py --check
	$(BIN)/python scripts/gen_config_docs.py --check

protos: venv
	$(BIN)/python scripts/gen_protos.py

lock: venv
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

# h2load (Debian's nghttp2-client): a C load generator for the latency figures.
bench-deps:
	@command -v h2load >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nghttp2-client; } || \
		echo "h2load is missing and cannot be installed: the benchmarks fall back to the Python load generator"

bench: venv examples bench-deps
	$(BIN)/python bench/run.py
	$(BIN)/python bench/r_runtime.py
	$(BIN)/python bench/triton.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/auth.py
	$(BIN)/python bench/tls.py
	$(BIN)/python bench/tracing.py
	$(BIN)/python bench/coldstart.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/sizing.py
	$(BIN)/python -m meshserve.services.audit.bench --events 50000
	$(BIN)/python bench/report.py
