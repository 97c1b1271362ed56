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

# The transformers releases `make test-compat` checks: the oldest pyproject accepts, two in the middle (5.17 is
# the GPU bench machine's) and the newest. Each gets a venv of its own under $(COMPAT_VENVS)/<release>, with
# the pip resolution that release asks for: an overlay on .venv is not enough, since what a newer
# transformers pulled in (kernels, a newer tokenizers or huggingface_hub) breaks an older one's import.
TRANSFORMERS_COMPAT ?= 5.0.0 5.10.4 5.17.0 5.25.0
COMPAT_VENVS ?= .venv-compat
COMPAT_TESTS := tests/unit/test_compat.py tests/unit/test_backend_facts.py tests/unit/test_matrices.py \
	tests/integration/test_architectures.py tests/integration/test_exactness.py tests/integration/test_releases.py

$(COMPAT_VENVS)/%/.installed: pyproject.toml
	$(PYTHON) -m venv $(COMPAT_VENVS)/$*
	$(COMPAT_VENVS)/$*/bin/python -m pip install --quiet --upgrade pip
	$(COMPAT_VENVS)/$*/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	$(COMPAT_VENVS)/$*/bin/python -m pip install --quiet -e ".[dev]" "transformers==$*"
	touch $@

test-compat: $(foreach v,$(TRANSFORMERS_COMPAT),$(COMPAT_VENVS)/$(v)/.installed) ## Architecture, exactness and release tests on each of TRANSFORMERS_COMPAT, one venv each
	@set -e; for v in $(TRANSFORMERS_COMPAT); do \
	  echo "== transformers $$v"; \
	  $(COMPAT_VENVS)/$$v/bin/python -m pytest -q -p no:cacheprovider $(COMPAT_TESTS) $(PYTEST_ARGS); \
	done

clean: ## Remove caches (keeps .venv and outputs/)
	rm -rf .pytest_cache .mypy_cache .ruff_cache build *.egg-info

# TRANSFORMERS=<release> measures that release in its compat venv, into resources/families/<release>.json.
SWEEP_DEPS := $(if $(TRANSFORMERS),$(COMPAT_VENVS)/$(TRANSFORMERS)/.installed,install)
SWEEP_PY := $(if $(TRANSFORMERS),$(COMPAT_VENVS)/$(TRANSFORMERS)/bin/python,$(PY))
sweep: $(SWEEP_DEPS) ## Measure every decoder family; rewrite the support matrix, docs/families.md, README table (TRANSFORMERS=5.10.4: that release's matrix)
	$(SWEEP_PY) -m qk_sniffer.families sweep=true write=true
