"""Concurrency with real processes: two whole runs at once, and the MLflow store's first creation.

- Two ``train_gpt_job`` runs (``gpt-pipeline materialize``) started together, sharing the data
  directory, the Dagster home and a brand-new MLflow SQLite store: both succeed, every stored file
  is complete and loadable, and MLflow holds both runs' asset runs, FINISHED, in one experiment,
  with both trainings nested under one sweep parent run (never two for the same sweep and data).
- Four processes that open ``gpt_pipeline.tracking.tracker.Tracker`` on a store that does not exist yet,
  released at the same instant: all four succeed and agree on one experiment.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import polars as pl
import pyarrow.parquet as pq
from mlflow.tracking import MlflowClient

from gpt_pipeline.defs.sweeps import DEFAULT_VARIANT
from gpt_pipeline.tracking.parents import PARENT_TAG, ROLE_TAG
from gpt_pipeline.training.checkpoint import load_checkpoint, read_checkpoint
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline_tests.reliability_support import (
    kill_running,
    child_env,
    race_trackers,
    mlflow_runs,
    temp_files,
    write_run_config,
)
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG

# every asset of train_gpt_job that logs an MLflow run (stories_source is only observed)
ASSET_KEYS = ["raw_stories", "bpe_tokenizer", "tokenized_dataset", "trained_model", "sample_generations",
              "model_evaluation", "champion_model", "champion_generations", "champion_evaluation"]


def test_two_jobs_at_once_share_data_and_mlflow(tmp_path):
    data, home = tmp_path / "data", tmp_path / "dagster_home"
    home.mkdir()
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"  # created by the two runs themselves
    config = write_run_config(tmp_path / "run.yaml", TINY_RUN_CONFIG)
    env = child_env(GPT_PIPELINE_DATA_DIR=str(data), MLFLOW_TRACKING_URI=uri, DAGSTER_HOME=str(home))
    logs = [tmp_path / f"run{i}.log" for i in range(2)]
    processes = []
    for log in logs:
        with open(log, "w") as out:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "gpt_pipeline", "materialize", "--config", str(config)],
                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env,
            ))
    try:
        codes = [process.wait(timeout=300) for process in processes]
    finally:
        kill_running(*processes)
    for code, log in zip(codes, logs):
        assert code == 0, f"{log.name} exited {code}: {log.read_text()[-3000:]}"

    # Every stored file is complete and loadable; no temporary file is left.
    assert temp_files(data) == []
    stories = pl.read_parquet(data / "raw_stories.parquet")
    assert len(stories) == 200
    tokenizer = BPETokenizer.load(data / "bpe_tokenizer.json")
    assert tokenizer.vocab_size == 300
    table = pq.read_table(data / "tokenized_dataset.parquet")
    assert table.num_rows == 200
    model, _ = load_checkpoint(data / "trained_model" / f"{DEFAULT_VARIANT}.safetensors")
    assert model.config.vocab_size == 300
    champion, _ = load_checkpoint(data / "champion_model.safetensors")
    assert champion.config == model.config  # the only variant is the champion
    for generations_file in (data / "sample_generations" / f"{DEFAULT_VARIANT}.parquet",
                             data / "champion_generations.parquet"):
        generations = pl.read_parquet(generations_file)
        assert generations["prompt"].to_list() == ["Once", "The dog"]
    for path in (data / "checkpoints").rglob("*.safetensors"):
        read_checkpoint(path)

    # MLflow: one experiment, both Dagster runs with one FINISHED run per asset.
    client = MlflowClient(tracking_uri=uri)
    experiments = [e.name for e in client.search_experiments()]
    assert experiments.count("gpt-pipeline") == 1
    everything = mlflow_runs(uri)
    # the sweep's parent run (no asset: its children carry the work), found or created under a
    # lock: one for both runs, whose data are the same
    parents = [r for r in everything if r.data.tags.get(ROLE_TAG) == "sweep"]
    runs = [r for r in everything if "dagster.asset_key" in r.data.tags]
    assert len(parents) + len(runs) == len(everything), [r.data.tags for r in everything]
    assert [p.info.status for p in parents] == ["FINISHED"], [p.data.tags for p in parents]
    assert Counter(r.info.status for r in runs) == Counter({"FINISHED": 2 * len(ASSET_KEYS)}), [
        (r.data.tags.get("dagster.asset_key"), r.info.status) for r in runs
    ]
    by_dagster_run = Counter(r.data.tags["dagster.run_id"] for r in runs)
    assert sorted(by_dagster_run.values()) == [len(ASSET_KEYS)] * 2
    for dagster_run in by_dagster_run:
        keys = sorted(r.data.tags["dagster.asset_key"] for r in runs if r.data.tags["dagster.run_id"] == dagster_run)
        assert keys == sorted(ASSET_KEYS)
    training = [r for r in runs if r.data.tags["dagster.asset_key"] == "trained_model"]
    assert [r.data.tags.get(PARENT_TAG) for r in training] == [parents[0].info.run_id] * 2
    for run in training:
        history = client.get_metric_history(run.info.run_id, "test_loss")
        assert sorted(m.step for m in history) == [0, 20, 40], run.info.run_id


def test_four_processes_create_the_mlflow_store_at_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    outcomes = race_trackers(uri, 4, tmp_path)
    for code, _, err in outcomes:
        assert code == 0, err[-3000:]
    experiment_ids = {out.strip().splitlines()[-1] for _, out, _ in outcomes}
    assert len(experiment_ids) == 1
    experiments = [e.name for e in MlflowClient(tracking_uri=uri).search_experiments()]
    assert experiments.count("gpt-pipeline") == 1
