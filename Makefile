# prefgame: two commands for a fresh machine.
#   make quickstart   install into .venv and run the whole pipeline on the embedded arena
#   make test         install into .venv (with the dev extra) and run the default test suite
# and one for developers:
#   make test-min     the default test suite in .venv-min, against the oldest releases that
#                     pyproject.toml declares (tests/constraints-min.txt)
#
# TORCH_SPEC picks the PyTorch build pip installs first; the pinned release resolves to the CPU build
# where a local wheel exists and to the regular (CUDA) build from PyPI on a GPU machine. Override it
# for another CUDA version, e.g. make quickstart TORCH_SPEC="torch==2.13.0 --index-url <your index>".

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
VENV_MIN ?= .venv-min
MIN_CONSTRAINTS := tests/constraints-min.txt

.PHONY: install install-dev quickstart test test-min test-all lint clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install $(TORCH_SPEC)
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

quickstart: install
	$(VENV)/bin/prefgame quickstart

test: install-dev
	$(PY) -m pytest

# A fresh venv each time the constraints change: pip must not keep newer releases from an earlier install.
$(VENV_MIN)/.installed: pyproject.toml $(MIN_CONSTRAINTS)
	rm -rf $(VENV_MIN)
	$(PYTHON) -m venv $(VENV_MIN)
	$(VENV_MIN)/bin/python -m pip --disable-pip-version-check install -c $(MIN_CONSTRAINTS) -e ".[dev]"
	touch $@

# PREFGAME_MIN_VERSIONS makes tests/test_dependencies.py check that the oldest releases are the ones installed
test-min: $(VENV_MIN)/.installed
	PREFGAME_MIN_VERSIONS=1 $(VENV_MIN)/bin/python -m pytest

test-all: install-dev
	$(PY) -m pytest -m ""

lint: install-dev
	$(VENV)/bin/ruff check prefgame evaluation tests benchmarks

clean:
	rm -rf runs .pytest_cache $(VENV_MIN)
