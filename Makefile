# lorasweep: every target sets itself up first (`make setup`), so each works as a first command.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
CONF  ?= rank_alpha
ARGS  ?=
SWEEP ?=
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: setup trial sweep test bench ui estimate report clean

setup: $(VENV)/.installed

# CPU torch from this disk unless CUDA is present; then the project, editable, with test extras (and, with CUDA,
# nvidia-ml-py for GPU system metrics).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		$(PY) -m pip install -q torch && $(PY) -m pip install -q -e '.[test,gpu]'; else \
		$(PY) -m pip install -q torch==2.13.0 && $(PY) -m pip install -q -e '.[test]'; fi
	touch $@

trial: setup
	$(OFFLINE) $(VENV)/bin/lorasweep trial $(ARGS)

sweep: setup
	$(OFFLINE) $(VENV)/bin/lorasweep sweep sweep=$(CONF) $(ARGS)

estimate: setup
	$(OFFLINE) $(VENV)/bin/lorasweep estimate $(ARGS)

report: setup
	$(OFFLINE) $(VENV)/bin/lorasweep report $(SWEEP) $(ARGS)

test: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(OFFLINE) $(PY) -m pytest -q --durations=15 tests $(ARGS)

# CPU benchmarks; each prints ratios measured side by side and writes benchmarks/results/. The GPU ones
# (bench_gpu.py, bench_packing.sh) run on a lent accelerator machine: see their headers.
bench: setup
	for b in bench_spectra.py bench_trial_overhead.py bench_sweep.py bench_vs_script.py calibrate_estimate.py; do \
		echo "== $$b"; $(OFFLINE) $(PY) benchmarks/$$b || exit 1; done

# The MLflow UI over a store (the default local one, or STORE=... as a sweep's last lines print it), on loopback
# only, served the lean way the sweep's own log server is: one process, no job runner or task consumers.
STORE ?= $(or $(MLFLOW_TRACKING_URI),sqlite:///mlflow.db)
PORT  ?= 5000
ui: setup
	$(PY) -m lorasweep.logserver ui $(STORE) $(PORT)

clean:
	rm -rf $(VENV) mlruns mlflow.db
