# ep-core: `make demo` and `make test` set up .venv on first use (a few minutes), then run.
PYTHON ?= python3
VENV ?= .venv
# PyPI's torch 2.14.1 is a CUDA build; override (e.g. TORCH_PINS=) to keep a torch you already have.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin

.PHONY: setup test lint demo unlock demo-run gradcheck bench-tta gpu-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(if $(strip $(TORCH_PINS)),$(BIN)/pip install --quiet $(TORCH_PINS))
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

lint: setup
	$(BIN)/ruff check ep_core tests workflow/scripts
	$(BIN)/ruff format --check ep_core tests workflow/scripts
	$(BIN)/lint-imports
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/

test: lint
	$(BIN)/python -m pytest -q --durations=10 tests

# The whole pipeline at demo scale (digits, CPU): every run, table, figure, MLflow, and the report.
# --rerun-incomplete: after Ctrl-C, `make demo` again resumes (interrupted training jobs from their checkpoints).
demo: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores 2 --rerun-incomplete --configfile configs/pipeline_demo.yaml
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores 2 --configfile configs/pipeline_demo.yaml \
		--report results/report.html
	$(BIN)/ep-core attach results/report.html

# After the driver was killed (kill -9, a lost terminal): release its lock, then `make demo` resumes.
unlock: setup
	$(BIN)/snakemake --unlock --cores 1 --configfile configs/pipeline_demo.yaml
	@echo
	@echo "Results: $(CURDIR)/results (tables/, figures/, runs/; report.html)"
	@echo "MLflow UI: $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/results/mlflow/mlflow.db --host 127.0.0.1"

# One training run on digits, without the pipeline.
demo-run: setup
	$(BIN)/ep-core train --config configs/demo_digits.yaml --out runs/demo

# Time to accuracy by a fixed protocol (docs/benchmarks.md, "Time to accuracy: the protocol"): authors, fast
# and the equal-compute control authors@fast-time on digits and mnist5k, seeds 1-5 paired, run order rotated,
# training time apart from evaluation, every network tested with the authors' 120 sweeps; ~45 min on 2 quiet
# CPU cores. Writes $(TTA_OUT)/{digits,mnist5k}.{json,md,png}; the same command resumes a stopped run.
# TTA_ARGS adds flags (ep-core bench-tta --help). The documented run (48 min) added auto:
# make bench-tta TTA_OUT=docs/bench-tta TTA_ARGS="--recipe authors --recipe fast --recipe auto:train.fidelity_every=50"
TTA_OUT ?= results/benchmarks/tta
bench-tta: setup
	$(BIN)/ep-core bench-tta --out $(TTA_OUT) $(TTA_ARGS)

# GPU readiness in one script that can fail (~10 min on one CUDA GPU; never needed for CI): scripts/gpu-check.sh.
# Writes only under OUT (default results/benchmarks/gpu).
gpu-check: setup
	BIN=$(BIN) bash scripts/gpu-check.sh

gradcheck: setup
	$(BIN)/ep-core gradcheck --arch hopfield_resnet13 --width 0.0625 --estimator cep --beta 0.001 --dtype float64

clean:
	rm -rf runs .pytest_cache .ruff_cache .snakemake logs
	find results -mindepth 1 ! -name README.md -delete
