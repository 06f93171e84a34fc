# make quickstart : set up .venv and run the quickstart sweep (local Ray, embedded MLflow store)
# make test       : set up .venv, install the programs the tests drive (scripts/test-tools.sh), run the suite
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Real MNIST: the shared offline copy when it is there, else ./data (downloaded by torchvision).
export CLCORE_DATA_DIR ?= $(if $(wildcard ../shared/datasets/MNIST),$(abspath ../shared/datasets),$(abspath data))

.PHONY: setup tools test quickstart
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

# Compose plugin, headless Chromium, PostgreSQL: installed when missing and possible, else reported
# (the tests that need them skip, saying how to install them).
tools: setup
	PYTHON=$(abspath $(PY)) scripts/test-tools.sh

test: setup tools
	$(PY) -m pytest -q

quickstart: setup
	$(VENV)/bin/clsweep run search_spaces/quickstart.yaml
