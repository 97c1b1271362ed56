# qk_sniffer developer targets. Every target uses the virtual environment in $(VENV).
# TORCH_SPEC picks the PyTorch build: the default is the CPU wheel; on a GPU box use e.g.
#   make install TORCH_SPEC="torch==2.9.1"      (or any CUDA build pip can reach)
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run test test-fast lint format bench clean test-compat sweep

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[dev,cluster]"
	touch $@

install: $(VENV)/.installed ## Create .venv and install qk_sniffer (editable) with its dev tools

run: install ## Run the embedded default (offline, seconds); outputs go under outputs/
	$(PY) -m qk_sniffer

# One pytest worker per CPU (pytest-xdist); each test file stays on one worker, so its module fixtures (a
# capture, a set of checkpoints) are built once. TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= auto
test: install ## Run the whole test suite (unit + integration, CPU, one worker per core)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: install ## Unit tests only
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

lint: install ## ruff (lint + format check), mypy, and the import contracts (layers, no cycles)
	$(VENV)/bin/ruff check qk_sniffer tests
	$(VENV)/bin/ruff format --check qk_sniffer tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: install ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix qk_sniffer tests
	$(VENV)/bin/ruff format qk_sniffer tests

bench: install ## Capture overhead benchmark (prints a table, then one JSON line)
	$(PY) -m qk_sniffer.bench $(BENCH_ARGS)

# The transformers releases at both ends of pyproject's range; each is installed on its own (no deps) into
# $(VENV)/compat/ and put in front of the venv's copy, then the architecture and exactness tests run against it.
TRANSFORMERS_COMPAT ?= 5.23.0 5.24.0
test-compat: install ## Architecture + exactness tests on the oldest and newest supported transformers
	@set -e; for v in $(TRANSFORMERS_COMPAT); do \
	  $(PIP) install --quiet --no-deps --target $(VENV)/compat/transformers-$$v "transformers==$$v"; \
	  echo "== transformers $$v"; \
	  PYTHONPATH=$(VENV)/compat/transformers-$$v $(PY) -m pytest -q -p no:cacheprovider \
	    tests/unit/test_compat.py tests/integration/test_architectures.py tests/integration/test_exactness.py \
	    $(PYTEST_ARGS); \
	done

clean: ## Remove caches (keeps .venv and outputs/)
	rm -rf .pytest_cache .mypy_cache .ruff_cache build *.egg-info

sweep: install ## Measure every decoder family; rewrite the support matrix, docs/families.md, README table
	$(PY) -m qk_sniffer.families sweep=true write=true
