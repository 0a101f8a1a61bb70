# Every target installs what it needs into .venv (CPU torch first, then trl with its test extras).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# pytest-xdist workers; the suite is sized for 2 cores.
WORKERS ?= 2

.PHONY: install quickstart test test-fast lint format bench clean

$(VENV)/.installed: pyproject.toml VERSION
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e ".[test,dev]"
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(PY) scripts/quickstart.py

test: install
	$(PY) -m pytest tests -n $(WORKERS) --dist loadgroup -q -p no:cacheprovider

test-fast: install
	$(PY) -m pytest tests -n $(WORKERS) --dist loadgroup -q -p no:cacheprovider -m "not slow and not distributed"

lint: install
	$(VENV)/bin/ruff check trl tests examples scripts benchmarks
	$(VENV)/bin/ruff format --check trl tests examples scripts benchmarks

format: install
	$(VENV)/bin/ruff check --fix trl tests examples scripts benchmarks
	$(VENV)/bin/ruff format trl tests examples scripts benchmarks

bench: install
	$(PY) benchmarks/run.py --output benchmarks/results/latest.json

clean:
	rm -rf $(VENV) build dist *.egg-info quickstart-output benchmarks/results
