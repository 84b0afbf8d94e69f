# stirscope developer entry points. Everything installs into a local .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: system-deps postgres redis demo test check lint typecheck importlint unit fixtures fixtures-check bench install bytecode clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Byte-compile the project's modules (quick when they are current). Where PYTHONDONTWRITEBYTECODE
## is set, as in many container images, Python would otherwise compile them again at every start
## of the CLI, of a test's subprocess or of a Dask worker: ~0.5 s each (measured).
bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q analyzer shaken sip service

## make demo: install and run the main job on bundled fixtures, offline
demo: $(STAMP) bytecode
	@$(BIN)/python fixtures/demo.py

## make test: install with dev extras, run format check, lint, types, layer contracts, tests
test: $(STAMP) system-deps postgres redis lint typecheck importlint fixtures-check unit

## Real peers the tests drive: sipp (Debian's sip-tester) and a headless browser (Debian's
## chromium, driven by Playwright). Installed when we can (root with apt-get, as in CI); the
## tests that need them skip cleanly otherwise.
SYSTEM_TOOLS := sipp:sip-tester chromium:chromium
system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing (Debian packages)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	      || echo "could not install$$missing: the tests that need them will be skipped"; \
	  else echo "not installed:$$missing (needs root and apt-get): their tests will be skipped"; fi; \
	fi

## PostgreSQL for the store tests: started when installed but not running; tests skip otherwise
postgres:
	@if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then \
	  if [ "$$(id -u)" = 0 ] && command -v pg_ctlcluster >/dev/null 2>&1; then \
	    pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start \
	      || echo "PostgreSQL could not be started: its tests will be skipped"; \
	  else echo "PostgreSQL not running: its tests will be skipped"; fi; \
	fi
	@if command -v createdb >/dev/null 2>&1; then createdb -h 127.0.0.1 -U postgres test 2>/dev/null || true; fi

## Redis for the shared-cache tests: started when installed but not running; tests skip otherwise
redis:
	@if command -v redis-server >/dev/null 2>&1 && ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then \
	  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
	    >/dev/null 2>&1 || echo "Redis could not be started: its tests will be skipped"; \
	fi

## make check: the before-commit habit (format, lint, types, layer contracts), no tests
check: lint typecheck importlint

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

importlint: $(STAMP)
	$(BIN)/lint-imports

unit: $(STAMP) bytecode
	$(BIN)/python -m pytest -q -p no:cacheprovider

## regenerate committed fixtures (deterministic: same bytes every time)
fixtures: $(STAMP)
	$(BIN)/python fixtures/generate.py

## CI check: regeneration must change nothing
fixtures-check: $(STAMP)
	$(BIN)/python fixtures/generate.py --check

bench: $(STAMP) bytecode
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
