# Two commands on a fresh machine (each makes .venv first if it is missing):
#   make run    the main job on the embedded default (no network, no GPU)
#   make test   the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test bench ovs env

env: $(VENV)/.installed

# torch first, pinned: 2.13.0 is the CPU wheel on this project's machines; a bare "torch" would pull
# a multi-GB CUDA build. constraints.txt holds the versions the suite was last run with.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $@

# The main job: the default study (classic solvers and update rules x NFE 4/6/10/20 on the shipped
# digits model and on gmm64), W&B offline, tables / plots / sample grids under results/default_study.
# Result rows go to runs/default_study; a re-run skips finished runs. One torch thread: on 2 shared
# cores a second thread slowed the small networks down.
run: env
	OMP_NUM_THREADS=1 $(BIN)/optsample-study

# Style (ruff) and the layer contracts (import-linter, pyproject.toml) first, then the suite. PYTHONPATH makes
# lint-imports read this checkout's package even when the venv's editable install points at another one.
test: env
	$(BIN)/ruff check optsample tests benchmarks experiments
	PYTHONPATH=$(CURDIR) $(BIN)/lint-imports --no-cache
	HF_HUB_OFFLINE=1 WANDB_MODE=offline OMP_NUM_THREADS=2 $(BIN)/python -m pytest tests

# The tuned study: every sampler and its Karras schedule tuned with Optuna on seed 1, reported on
# seeds 2-4 (gmm64, digits_empirical, digits; about 21 min on 2 cores).
ovs: env
	OMP_NUM_THREADS=1 $(BIN)/python experiments/optimizer_vs_solvers/run_ovs.py

bench: env
	$(BIN)/python benchmarks/sampler_overhead.py
