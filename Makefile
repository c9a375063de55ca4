# Two set-up commands for a fresh machine (see README.md):
#   make demo   installs into .venv and runs the main job on the embedded default data
#   make test   installs into .venv and runs the whole test suite (unit + slow integration tests)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEMO_ARGS ?=

.PHONY: install demo test test-fast test-slow lint format bench monailabel-env clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/qrvae demo $(DEMO_ARGS)

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

test-slow: install
	$(PY) -m pytest -q -m slow tests

lint: install
	$(VENV)/bin/ruff check monai_qrvae tests benchmarks
	$(VENV)/bin/black --check monai_qrvae tests benchmarks
	$(VENV)/bin/isort --check-only monai_qrvae tests benchmarks

format: install
	$(VENV)/bin/isort monai_qrvae tests benchmarks
	$(VENV)/bin/black monai_qrvae tests benchmarks

bench: install
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) outputs .pytest_cache
