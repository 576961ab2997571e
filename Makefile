# hdsr: `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
# -n auto: workers as tests/conftest.py sets; the slowest tests first, one test at a time
PYTEST := $(BIN)/python -m pytest -n auto --dist load --maxschedchunk 1

.DEFAULT_GOAL := help
.PHONY: help venv torch install dev demo test test-fast slurm-up slurm-down lint wheel bench-data bench-speed bench-upscale bench-startup gpu-check docs clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# pip installs torch (its configuration may point at a local build, as the CPU wheel on our
# machines); uv installs the rest, constrained to that torch: from a fresh clone 15 s here
# where pip took 73 s (it fetches and unpacks in parallel and byte-compiles on every core).
# Where uv cannot be had or fails, pip does it.
PIP_INSTALL := $(BIN)/pip install -q
UV_INSTALL  := $(BIN)/uv pip install -q --python $(BIN)/python --compile-bytecode \
	--constraint $(VENV)/torch-constraint.txt

$(BIN)/uv: | $(BIN)/activate
	$(PIP_INSTALL) uv || echo "uv not installed: pip will install hdsr"

torch: $(BIN)/activate $(BIN)/uv
	$(PIP_INSTALL) "$(TORCH)"
	$(BIN)/python -c "from importlib.metadata import version; print('torch==' + version('torch'))" \
		> $(VENV)/torch-constraint.txt

install: torch  ## create .venv and install hdsr with torch (TORCH=torch==2.13.0 by default)
	$(UV_INSTALL) -e . || $(PIP_INSTALL) -e .

dev: torch  ## install hdsr and the test tools
	$(UV_INSTALL) -e ".[test]" || $(PIP_INSTALL) -e ".[test]"

demo: install  ## train HDSRNet x2 on the embedded default data (a few minutes on a CPU)
	$(BIN)/hdsr-train

test: dev  ## install what tests need and run the whole suite (slow tests included), in parallel
	$(BIN)/ruff check src tests experiments
	$(BIN)/lint-imports
	$(PYTEST)

test-fast: dev  ## the suite without the slow end-to-end tests, in parallel
	$(PYTEST) -m "not slow"

slurm-up:  ## as root: start the SLURM test cluster the slurm tests use (installs it if missing)
	tests/cluster/slurm.sh up

slurm-down:  ## stop the SLURM test cluster
	tests/cluster/slurm.sh down

lint: dev  ## ruff and the package's layers (lint-imports)
	$(BIN)/ruff check src tests experiments
	$(BIN)/lint-imports

wheel: dev  ## build the wheel into dist/
	$(BIN)/python -m build --wheel --outdir dist .

bench-data: dev  ## training-data throughput: decoded cache vs PNG per patch (~1 min)
	$(BIN)/python experiments/benchmarks/bench_data.py

bench-speed: dev  ## forward and training speed vs the authors' formulation (~14 min on a CPU)
	mkdir -p runs; for a in default hdsr retain; do \
	  $(BIN)/python experiments/benchmarks/bench_speed.py --allocator $$a --json runs/bench_speed_$$a.json \
	  || exit 1; done

bench-upscale: dev  ## hdsr-upscale wall time and peak RSS: untiled, budget policy, --tile 256 (~5 min)
	$(BIN)/python experiments/benchmarks/bench_upscale.py --repeats 2

bench-startup: dev  ## hdsr-train start to its first training step, by phase, demo and a DIV2K tree (~8 min)
	$(BIN)/python experiments/benchmarks/bench_startup.py --repeats 2

gpu-check: dev  ## on one GPU, <10 min: speed, host syncs per step, compile, cudnn.benchmark, hdsr-eval
	$(BIN)/python experiments/benchmarks/gpu_check.py

docs: dev  ## build the documentation site into site/ (mkdocs, strict)
	$(BIN)/mkdocs build --strict --site-dir site

clean:  ## remove build outputs and runs/ (keeps .venv)
	rm -rf build dist src/*.egg-info runs site .pytest_cache
