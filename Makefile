# `make demo` and `make test` each create .venv if absent, install the project, then run.
# `make test` = lint (ruff), layer contracts (import-linter), then every test.
# `make quick` = the same checks and the fast tests only (not marked slow), on 2 processes: the loop to run while
# working. `make test` stays serial, as CI runs it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test quick install bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/realdpo demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q tests

quick: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -n 2 -m "not slow" tests

bench: $(STAMP)
	$(PY) bench/curate.py
	$(PY) bench/dpo_step.py
	$(PY) bench/negatives.py

clean:
	rm -rf $(VENV) build *.egg-info
