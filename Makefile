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
	$(PIP) install -q -e ".[test,raw]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/qrvae demo $(DEMO_ARGS)

test: install monailabel-env
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

# MONAI Label 0.8.5 (server for 3D Slicer, monailabel/qrvae_app) in its own venv: it needs numpy<2 and
# torch 2.14.1 + torchvision 0.29.1 (installed first, from local wheels); this package goes in editable.
# pydicom<3 (+ the DICOM clients that still accept it): pydicom-seg 0.4.1, imported by monailabel, breaks on 3.x.
MLVENV ?= .venv-monailabel
MLPIP := $(MLVENV)/bin/python -m pip

$(MLVENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(MLVENV)
	$(MLPIP) install -q --upgrade pip
	$(MLPIP) install -q torch==2.14.1 torchvision==0.29.1
	$(MLPIP) install -q monailabel==0.8.5 "pydicom<3" "dicomweb-client<0.60" "pynetdicom<3"
	$(MLPIP) install -q -e ".[raw]" "numpy<2"
	$(MLVENV)/bin/python -c "import numpy, monailabel.app, monai_qrvae; assert numpy.__version__ < '2', numpy.__version__"
	touch $@

monailabel-env: $(MLVENV)/.installed

bench: install
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) outputs .pytest_cache
