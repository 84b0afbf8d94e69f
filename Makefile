# stirscope developer entry points. Everything installs into a local .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: system-deps demo test check lint typecheck importlint unit fixtures fixtures-check bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## make demo: install and run the main job on bundled fixtures, offline
demo: $(STAMP)
	@$(BIN)/python fixtures/demo.py

## make test: install with dev extras, run format check, lint, types, layer contracts, tests
test: $(STAMP) system-deps lint typecheck importlint fixtures-check unit

## Real protocol peers the tests drive (sipp from Debian's sip-tester). Installed when we can
## (root with apt-get, as in CI); the tests that need them skip cleanly otherwise.
system-deps:
	@if ! command -v sipp >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing sipp (Debian sip-tester)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sip-tester >/dev/null) \
	      || echo "sipp could not be installed: its tests will be skipped"; \
	  else echo "sipp not installed (needs root and apt-get): its tests will be skipped"; fi; \
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

unit: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

## regenerate committed fixtures (deterministic: same bytes every time)
fixtures: $(STAMP)
	$(BIN)/python fixtures/generate.py

## CI check: regeneration must change nothing
fixtures-check: $(STAMP)
	$(BIN)/python fixtures/generate.py --check

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
