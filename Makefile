# The two commands README.md opens with: `make demo` and `make test`; `make test-fast` is the
# contributor's inner loop.
# Both create .venv and install avfusion into it (idempotent: re-runs only when
# pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.avfusion-installed

.PHONY: install demo lint test test-fast clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/avfusion demo $(DEMO_ARGS)

# ruff (lint + format) and mypy, configured in pyproject.toml; zero findings.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The inner loop: no Ray, servers or subprocesses (tests/conftest.py enforces it).
test-fast: lint
	AVF_TEST_TIER=fast $(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
