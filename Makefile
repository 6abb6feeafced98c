# Entry points: `make study` runs the default study, `make test` runs the test suite,
# `make notebooks` opens the analysis notebooks in JupyterLab on a study's results.
# Each creates the virtual environment in .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.raycl-installed
NOTEBOOKS_STAMP := $(VENV)/.raycl-notebooks
STUDY ?= studies/ewc_vs_si.py
STUDY_ARGS ?=
# The study the notebooks open: <storage>/<study name> (a path or a URI).
STUDY_DIR ?= results/ewc_vs_si
# More options for `jupyter lab` (e.g. --no-browser --port 8890 on a remote machine).
JUPYTER_ARGS ?=

.PHONY: study test lint bench venv clean notebooks gpu-check

$(STAMP): pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh $(VENV)
	touch $(STAMP)

venv: $(STAMP)

study: $(STAMP)
	$(PY) -m raycl.study $(STUDY) $(STUDY_ARGS)

# JupyterLab is the `notebooks` extra, installed on first use only (the test install skips it).
$(NOTEBOOKS_STAMP): $(STAMP) pyproject.toml
	$(VENV)/bin/pip install --quiet -e ".[notebooks]"
	touch $(NOTEBOOKS_STAMP)

notebooks: $(NOTEBOOKS_STAMP)
	@case "$(STUDY_DIR)" in *://*) ;; *) test -e "$(STUDY_DIR)/trials.parquet" || { \
	    echo "raycl: error: no study results in $(STUDY_DIR) (run make study, or pass" \
	        "STUDY_DIR=<storage>/<study name>)" >&2; exit 2; } ;; esac
	RAYCL_STUDY_DIR="$(STUDY_DIR)" $(VENV)/bin/jupyter lab analysis/ $(JUPYTER_ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check raycl tests studies bench scripts
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) bench/bench_engine.py

# On a machine with CUDA: the CUDA tests, the benchmarks on cuda and a study at one and at four
# trials per GPU, in under 8 minutes, one summary (scripts/gpu_check.py; exit 2: no CUDA).
GPU_CHECK_ARGS ?=
gpu-check: $(STAMP)
	$(PY) scripts/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
