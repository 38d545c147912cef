# Mosaic developer entry points. `make test` is what CI runs (through .ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: help venv install viewer run test lint typecheck pytest system-deps clean distclean

help:
	@echo "make install      create $(VENV) (python >= 3.11), install mosaic[test] (editable) and the viewer"
	@echo "make viewer       fetch OHIF (@ohif/app, npm) and prepare build/viewer for /viewer/ (needs node+npm)"
	@echo "make run ARGS=…   install, then run '$(BIN)/mosaic serve ARGS'"
	@echo "make test         system packages, install, ruff, mypy, pytest"
	@echo "make lint         ruff, mypy and the import layering (.importlinter) only"
	@echo "make clean        remove caches and build artefacts (keeps $(VENV); 'make distclean' drops it)"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else \
		"Mosaic needs Python >= 3.11, $(PYTHON) is " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)

# Re-install only when the project's metadata changed (or the venv is new).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

venv: $(STAMP)

# The OHIF viewer served at /viewer/ (build/viewer); a no-op when already prepared (stamp keyed on the version).
viewer: $(STAMP)
	VIEWER_PYTHON=$(BIN)/python scripts/install-viewer.sh

install: $(STAMP) viewer

system-deps:
	scripts/install-system-deps.sh

run:
	scripts/install-system-deps.sh runtime
	$(MAKE) --no-print-directory install
	$(BIN)/mosaic serve $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

# No xdist: 2 cores, and the suite shares one PostgreSQL and one S3 server per session.
pytest: $(STAMP) viewer
	$(BIN)/pytest -q $(PYTEST_ARGS)

test: system-deps
	$(MAKE) --no-print-directory install
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory pytest

clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache src/*.egg-info $(STAMP)
	find src tests $(wildcard bench) -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
