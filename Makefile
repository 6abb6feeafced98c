# Two entry points: `make study` runs the default study, `make test` runs the test suite.
# Each creates the virtual environment in .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.raycl-installed
STUDY ?= studies/ewc_vs_si.py
STUDY_ARGS ?=

.PHONY: study test lint bench venv clean

$(STAMP): pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh $(VENV)
	touch $(STAMP)

venv: $(STAMP)

study: $(STAMP)
	$(PY) -m raycl.study $(STUDY) $(STUDY_ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check raycl tests studies bench
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) bench/bench_engine.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
