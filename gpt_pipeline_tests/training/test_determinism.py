"""Same seed and config on CPU, same results: two whole runs, two directories, two processes.

The two ``gpt-pipeline materialize`` runs differ in everything that should not matter (data
directory, Dagster home, MLflow store, ``PYTHONHASHSEED``, so set and dict order of strings) and
must agree on everything that should: the stories, tokenizer and dataset files byte for byte,
every loss, the trained weights and the generations.
"""

from __future__ import annotations

import subprocess
import sys

import polars as pl
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from gpt_pipeline_tests.reliability_support import child_env, fresh_mlflow_store, mlflow_runs, write_run_config
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG

BYTE_IDENTICAL = [
    "raw_stories.parquet",
    "bpe_tokenizer.json",
    "bpe_tokenizer.vocab.txt",
    "tokenized_dataset.parquet",
]


def _losses(uri: str) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient(tracking_uri=uri)
    (run,) = [r for r in mlflow_runs(uri) if r.data.tags.get("dagster.asset_key") == "trained_model"]
    return {
        name: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
        for name in ("train_loss", "test_loss")
    }


def test_two_runs_with_one_seed_give_identical_files_and_losses(tmp_path):
    config = write_run_config(tmp_path / "run.yaml", TINY_RUN_CONFIG)
    runs = []
    for name, hash_seed in (("a", "1"), ("b", "2")):
        root = tmp_path / name
        (root / "dagster_home").mkdir(parents=True)
        uri = fresh_mlflow_store(root / "mlruns")
        env = child_env(
            GPT_PIPELINE_DATA_DIR=str(root / "data"), MLFLOW_TRACKING_URI=uri,
            DAGSTER_HOME=str(root / "dagster_home"), PYTHONHASHSEED=hash_seed,
        )
        log = open(root / "materialize.log", "w")
        process = subprocess.Popen(
            [sys.executable, "-m", "gpt_pipeline", "materialize", "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env,
        )
        runs.append((root, uri, process, log))
    try:
        for root, _, process, log in runs:
            code = process.wait(timeout=300)
            log.close()
            assert code == 0, (root / "materialize.log").read_text()[-3000:]
    finally:
        for _, _, process, log in runs:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
    (a, uri_a, _, _), (b, uri_b, _, _) = runs

    for name in BYTE_IDENTICAL:
        assert (a / "data" / name).read_bytes() == (b / "data" / name).read_bytes(), name
    hf_a, hf_b = a / "data" / "bpe_tokenizer.hf.json", b / "data" / "bpe_tokenizer.hf.json"
    assert hf_a.exists() == hf_b.exists()
    if hf_a.exists():
        assert hf_a.read_bytes() == hf_b.read_bytes()

    losses_a, losses_b = _losses(uri_a), _losses(uri_b)
    assert [step for step, _ in losses_a["test_loss"]] == [0, 20, 40]
    assert losses_a == losses_b

    for model in ("trained_model/default.safetensors", "champion_model.safetensors"):
        weights_a = load_file(str(a / "data" / model))
        weights_b = load_file(str(b / "data" / model))
        assert weights_a.keys() == weights_b.keys()
        assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a), model

    for generations in ("sample_generations/default.parquet", "champion_generations.parquet"):
        generations_a = pl.read_parquet(a / "data" / generations)
        generations_b = pl.read_parquet(b / "data" / generations)
        assert generations_a.equals(generations_b), generations
