# Two set-up commands for a fresh machine (see README.md):
#   make demo   installs into .venv and runs the main job on the embedded default data
#   make test   installs into .venv and runs the whole test suite (unit + slow integration tests)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEMO_ARGS ?=
# The versions the figures were measured with: `pip install -c` of constraints.txt (.venv) and
# constraints-monailabel.txt (.venv-monailabel), a `pip freeze` of fresh installs (`make lock` rewrites both).
# `make install CONSTRAINTS=` (or `make test CONSTRAINTS=`) installs without them: the newest releases that
# pyproject.toml and the lines below allow. An existing venv is kept: `make clean` first to reinstall.
CONSTRAINTS ?= constraints.txt
ML_CONSTRAINTS ?= $(if $(CONSTRAINTS),constraints-monailabel.txt)
C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
MLC := $(if $(ML_CONSTRAINTS),-c $(ML_CONSTRAINTS))

.PHONY: install demo test test-fast test-slow lint format bench monailabel-env lock clean

# tools/pip_check.py: `pip check` (after repairing itk's malformed installed WHEEL tag, on which pip check crashes).
# EDITABLE_QUIET: setuptools' notice "Editable installation. Please be careful with folders in your working directory
# with the same name as your package" (printed for every flat-layout editable install) is silenced.
EDITABLE_QUIET := PYTHONWARNINGS="ignore:Editable installation"
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(C) --upgrade pip
	$(PIP) install -q $(C) torch==2.13.0
	$(EDITABLE_QUIET) $(PIP) install -q $(C) -e ".[test,raw,dicom,bids]"
	$(PY) tools/pip_check.py
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/qrvae demo $(DEMO_ARGS)

test: install monailabel-env
	$(PY) -m pytest -q --durations=15 tests

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
# jsonschema<4: pydicom-seg 0.4.1 requires it (this package's jsonschema>=3.2, for monai.bundle verify_metadata, is
# satisfied by 3.2).
MLVENV ?= .venv-monailabel
MLPIP := $(MLVENV)/bin/python -m pip

$(MLVENV)/.installed: pyproject.toml $(ML_CONSTRAINTS)
	$(PYTHON) -m venv $(MLVENV)
	$(MLPIP) install -q $(MLC) --upgrade pip
	$(MLPIP) install -q $(MLC) torch==2.14.1 torchvision==0.29.1
	$(MLPIP) install -q $(MLC) monailabel==0.8.5 "pydicom<3" "dicomweb-client<0.60" "pynetdicom<3" "jsonschema<4"
	$(EDITABLE_QUIET) $(MLPIP) install -q $(MLC) -e ".[raw]" "numpy<2"
	$(MLVENV)/bin/python -c "import numpy, monailabel.app, monai_qrvae; assert numpy.__version__ < '2', numpy.__version__"
	$(MLVENV)/bin/python tools/pip_check.py
	touch $@

monailabel-env: $(MLVENV)/.installed

bench: install
	$(PY) -m benchmarks.run_all

# Rewrites constraints.txt and constraints-monailabel.txt from fresh installs without constraints (the newest releases
# allowed). The figures (docs/benchmarks.md, pinned tests) were measured with the old set: re-measure them after.
lock:
	rm -rf .venv-lock .venv-lock-ml
	$(MAKE) install VENV=.venv-lock CONSTRAINTS=
	echo "# pip freeze of a fresh 'make install CONSTRAINTS=' (make lock); 'make install' uses it" > constraints.txt
	.venv-lock/bin/python -m pip freeze --all --exclude monai-qrvae | sed 's/+cpu$$//' >> constraints.txt
	$(MAKE) monailabel-env MLVENV=.venv-lock-ml CONSTRAINTS=
	echo "# pip freeze of a fresh 'make monailabel-env CONSTRAINTS=' (make lock); 'make monailabel-env' uses it" \
		> constraints-monailabel.txt
	.venv-lock-ml/bin/python -m pip freeze --all --exclude monai-qrvae | sed 's/+cpu$$//' >> constraints-monailabel.txt
	rm -rf .venv-lock .venv-lock-ml

clean:
	rm -rf $(VENV) $(MLVENV) outputs .pytest_cache
