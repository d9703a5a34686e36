# Every target sets itself up from nothing: a fresh clone needs only `make test` or `make demo`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0

.PHONY: setup test test-slow demo lint format bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first and pinned (a CPU wheel on this machine); the project then asks for torch>=2.6,
# which the pinned wheel satisfies, so nothing else is fetched.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e ".[train,test,dev]"
	touch $(STAMP)

setup: $(STAMP)

# One BLAS/OpenMP thread per process: the suite runs 2 xdist workers that spawn 2-rank gloo jobs
# on 2 cores, and oversubscribed OpenMP threads spin-wait each other into 50x slowdowns.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --timeout 600

test-slow: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m slow --timeout 1800

demo: $(STAMP)
	$(BIN)/vlscale models
	$(BIN)/vlscale params ViT-L-14
	$(BIN)/vlscale flops EVA02-L-14 --mask-ratio 0.5
	$(BIN)/vlscale memory ViT-L-14 --local-batch 256 --shard-degree 64 --checkpointing --device H100
	$(BIN)/vlscale plan
	$(BIN)/vlscale compare --model ViT-SO400M-14-SigLIP --devices 1024 --global-batch 1048576 --checkpointing
	$(BIN)/python -m trainer.train --model tiny-clip --recipe clip --global-batch 32 --steps 20 --out runs/demo --overwrite
	$(BIN)/vlscale papers
	$(BIN)/vlscale report --out reports/demo.html

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/cold_start.py
	$(BIN)/python benchmarks/sim_step.py
	$(BIN)/python benchmarks/calibrate_published.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
