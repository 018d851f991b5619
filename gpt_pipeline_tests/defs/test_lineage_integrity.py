"""Stored assets that do not belong together are refused, through Dagster and the CLI; data
versions follow content; a full disk during an asset write fails in one line and leaves the
stored files as they were.

Real Dagster instance, real files, real MLflow SQLite store, a real tmpfs for the full disk.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from gpt_pipeline.definitions import defs
from gpt_pipeline.defs.assets import ASSETS as ASSET_DEFS
from gpt_pipeline.defs.io_manager import AssetFileIOManager
from gpt_pipeline.defs.resources import MLflowResource
from gpt_pipeline.provenance import PROVENANCE_KEY
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline.training.checkpoint import read_checkpoint_metadata
from gpt_pipeline_tests.reliability_support import (
    child_env,
    error_chain,
    mounted_tmpfs,
    step_failures,
    temp_files,
    tree_digest,
    write_run_config,
)
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG, with_default_variant

ASSETS = ["raw_stories", "bpe_tokenizer", "tokenized_dataset", "trained_model", "sample_generations"]
PARTITIONED = {"trained_model", "sample_generations"}  # by the sweep's variants: here the one, "default"
JOB = defs.resolve_job_def("train_gpt_job")


def _new_corpus_config(**dataset_config) -> dict:
    """TINY_RUN_CONFIG on another corpus (other seed, more stories)."""
    config = copy.deepcopy(TINY_RUN_CONFIG)
    config["ops"]["raw_stories"]["config"].update(seed=4, num_stories=300)
    config["ops"]["tokenized_dataset"]["config"].update(dataset_config)
    return config


def _run(instance, config: dict, select: list[str] | None = None):
    """The job (every asset, or ``select``); the ``default`` partition when a variant's asset runs."""
    ops = {k: v for k, v in config["ops"].items() if select is None or k in select}
    return JOB.execute_in_process(
        run_config={"ops": ops}, instance=with_default_variant(instance), raise_on_error=False,
        asset_selection=None if select is None else [dg.AssetKey(k) for k in select],
        partition_key="default" if select is None or PARTITIONED & set(select) else None,
    )


def _instance(tmp_path: Path):
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    return dg.instance_for_test(temp_dir=str(home))


def _metadata(instance, asset: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _data_version(instance, asset: str) -> str:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    return event.asset_materialization.tags["dagster/data_version"]


def _failure_line(result) -> tuple[str, str]:
    (failure,) = step_failures(result)
    error = failure.step_failure_data.error
    return failure.step_key, error.message.strip().splitlines()[0].removeprefix("dagster._core.definitions.events.Failure: ")


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpt_pipeline.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def _stored(data: Path) -> dict[str, str]:
    """Digests of the stored asset files, the partitions' too (not checkpoints, scratch or temporary files)."""
    return {k: v for k, v in tree_digest(data).items() if not k.startswith(".")
            and ("/" not in k or k.split("/")[0] in PARTITIONED)}


def test_a_partial_failure_is_refused_downstream_until_the_dataset_is_rematerialized(tmp_path, isolated_storage):
    data, mlruns = isolated_storage
    with _instance(tmp_path) as instance:
        assert _run(instance, TINY_RUN_CONFIG).success
        first = {a: _data_version(instance, a) for a in ASSETS}
        old_tokenizer = _metadata(instance, "bpe_tokenizer")["content_digest"]
        assert first["bpe_tokenizer"] == old_tokenizer
        assert _metadata(instance, "tokenized_dataset")["made_from.bpe_tokenizer"] == old_tokenizer
        assert _metadata(instance, "trained_model")["made_from.tokenized_dataset"] == first["tokenized_dataset"]
        assert _metadata(instance, "sample_generations")["made_from.trained_model"] == first["trained_model"]
        # ... and in the files themselves.
        assert BPETokenizer.load(data / "bpe_tokenizer.json").provenance["inputs"] == {"raw_stories": first["raw_stories"]}
        footer = pq.read_metadata(data / "tokenized_dataset.parquet").metadata
        assert json.loads(footer[PROVENANCE_KEY.encode()])["inputs"]["bpe_tokenizer"] == old_tokenizer
        model_record = json.loads(read_checkpoint_metadata(data / "trained_model" / "default.safetensors")[PROVENANCE_KEY])
        assert model_record["digest"] == first["trained_model"]
        assert model_record["inputs"] == {"bpe_tokenizer": old_tokenizer, "tokenized_dataset": first["tokenized_dataset"]}
        generations = pq.read_metadata(data / "sample_generations" / "default.parquet").metadata
        assert json.loads(generations[PROVENANCE_KEY.encode()])["digest"] == first["sample_generations"]

        # The same inputs again: the same content, so the same data versions, and downstream
        # assets record upstream data versions that are still current (not stale).
        assert _run(instance, TINY_RUN_CONFIG).success
        assert {a: _data_version(instance, a) for a in ASSETS} == first
        event = instance.get_latest_materialization_event(dg.AssetKey("trained_model"))
        assert event.asset_materialization.tags["dagster/input_data_version/tokenized_dataset"] == first["tokenized_dataset"]
        assert event.asset_materialization.tags["dagster/input_data_version/bpe_tokenizer"] == first["bpe_tokenizer"]

        # A run on a new corpus in which tokenized_dataset fails after bpe_tokenizer succeeded.
        # (0.001 passes the config schema: 300 stories leave the train split empty, found by the step)
        failed = _run(instance, _new_corpus_config(training_percentage=0.001))
        assert not failed.success
        assert _failure_line(failed)[0] == "tokenized_dataset"
        new_tokenizer = _data_version(instance, "bpe_tokenizer")
        assert new_tokenizer != old_tokenizer
        stored_before = tree_digest(data)

        # Materializing the downstream assets alone is refused before any work, in one line.
        refused = _run(instance, TINY_RUN_CONFIG, select=["trained_model", "sample_generations"])
        assert not refused.success
        expected = (
            f"trained_model refused: tokenized_dataset was encoded by bpe_tokenizer {old_tokenizer[:12]}, "
            f"but the stored bpe_tokenizer is {new_tokenizer[:12]}: rematerialize tokenized_dataset, then trained_model"
        )
        step, line = _failure_line(refused)
        assert (step, line) == ("trained_model", expected), error_chain(step_failures(refused)[0].step_failure_data.error)
        alone = _run(instance, TINY_RUN_CONFIG, select=["sample_generations"])
        assert _failure_line(alone) == ("sample_generations", (
            f"sample_generations refused: trained_model was trained with bpe_tokenizer {old_tokenizer[:12]}, "
            f"but the stored bpe_tokenizer is {new_tokenizer[:12]}: rematerialize trained_model, then sample_generations"
        ))
        assert tree_digest(data) == stored_before  # nothing written: no checkpoint, no asset file

        # The CLI's "materialize selected" says the same line, last.
        config_file = write_run_config(tmp_path / "run.yaml", TINY_RUN_CONFIG)
        env = child_env(GPT_PIPELINE_DATA_DIR=str(data), MLFLOW_TRACKING_URI=f"sqlite:///{mlruns / 'mlflow.db'}")
        env.pop("DAGSTER_HOME", None)
        cli = _cli(["materialize", "--config", str(config_file), "--select", "trained_model,sample_generations"],
                   env, tmp_path)
        assert cli.returncode == 2, cli.stderr[-3000:]
        assert cli.stderr.strip().splitlines()[-1] == f"gpt-pipeline: error: job train_gpt_job failed: {expected}"
        assert tree_digest(data) == stored_before

        # After rematerializing tokenized_dataset, the same selection succeeds.
        assert _run(instance, _new_corpus_config(), select=["tokenized_dataset"]).success
        assert _metadata(instance, "tokenized_dataset")["made_from.bpe_tokenizer"] == new_tokenizer
        assert _run(instance, TINY_RUN_CONFIG, select=["trained_model", "sample_generations"]).success
        assert _metadata(instance, "trained_model")["made_from.bpe_tokenizer"] == new_tokenizer
        assert _metadata(instance, "sample_generations")["made_from.trained_model"] == _data_version(instance, "trained_model")


# --- a full disk --------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs at ``tmp_path/disk`` (skipped where tmpfs cannot be mounted: not root)."""
    with mounted_tmpfs(tmp_path / "disk", "16m") as disk:
        yield disk


def _fill(disk: Path, leave: int) -> Path:
    """A ballast file that leaves about ``leave`` bytes free on ``disk``."""
    ballast = disk / "ballast"
    free = shutil.disk_usage(disk).free
    with open(ballast, "wb") as handle:
        handle.write(b"\0" * max(0, free - leave))
    return ballast


def test_a_full_disk_during_tokenized_dataset_fails_in_one_line_and_keeps_the_stored_files(
    tmp_path, monkeypatch, small_disk
):
    data = small_disk / "data"
    mlruns = tmp_path / "mlruns"  # MLflow's store is not on the full disk
    monkeypatch.setenv("GPT_PIPELINE_DATA_DIR", str(data))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{mlruns / 'mlflow.db'}")
    upstream = ["raw_stories", "bpe_tokenizer", "tokenized_dataset"]
    new_corpus = _new_corpus_config()
    with _instance(tmp_path) as instance:
        assert _run(instance, TINY_RUN_CONFIG, select=upstream).success
        assert _run(instance, new_corpus, select=["raw_stories", "bpe_tokenizer"]).success
    stored = _stored(data)
    ballast = _fill(small_disk, leave=8 * 1024)

    config_file = write_run_config(tmp_path / "run.yaml", new_corpus)
    env = child_env(GPT_PIPELINE_DATA_DIR=str(data), MLFLOW_TRACKING_URI=f"sqlite:///{mlruns / 'mlflow.db'}")
    env.pop("DAGSTER_HOME", None)
    cli = _cli(["materialize", "--config", str(config_file), "--select", "tokenized_dataset"], env, tmp_path)
    assert cli.returncode == 2, cli.stderr[-3000:]
    last = cli.stderr.strip().splitlines()[-1]
    prefix = "gpt-pipeline: error: job train_gpt_job failed: tokenized_dataset: cannot write "
    assert last.startswith(prefix), last
    path = last[len(prefix):].split(":")[0]
    assert path.startswith(str(data)) and "tokenized_dataset" in path, last
    assert ": no space left on device (" in last and f"free on {small_disk}" in last, last
    # The stored files are those of before, and the failed write left nothing behind.
    assert _stored(data) == stored
    assert temp_files(data) == []
    assert not any((data / ".scratch").iterdir())

    # With space again, the dataset is made; trained_model would have refused the old one.
    ballast.unlink()
    with _instance(tmp_path) as instance:
        assert _run(instance, new_corpus, select=["tokenized_dataset"]).success


def test_a_file_size_limit_during_tokenized_dataset_fails_in_one_line_and_keeps_the_stored_files(
    tmp_path, isolated_storage
):
    """The same as a full disk where no tmpfs can be mounted: the CLI's process may write no file
    past 3 MiB (RLIMIT_FSIZE, SIGXFSZ ignored: writes past it fail with EFBIG); the new corpus's
    token arrays need more, the MLflow store and every other file less."""
    import resource
    import signal

    data, mlruns = isolated_storage
    big_corpus = copy.deepcopy(TINY_RUN_CONFIG)
    big_corpus["ops"]["raw_stories"]["config"].update(seed=5, num_stories=8000)
    with _instance(tmp_path) as instance:
        assert _run(instance, TINY_RUN_CONFIG, select=["raw_stories", "bpe_tokenizer", "tokenized_dataset"]).success
        assert _run(instance, big_corpus, select=["raw_stories", "bpe_tokenizer"]).success
    stored = _stored(data)
    limit = 3 << 20
    assert (mlruns / "mlflow.db").stat().st_size < limit - (1 << 20)

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    config_file = write_run_config(tmp_path / "run.yaml", big_corpus)
    env = child_env(GPT_PIPELINE_DATA_DIR=str(data), MLFLOW_TRACKING_URI=f"sqlite:///{mlruns / 'mlflow.db'}",
                    PYTHONDONTWRITEBYTECODE="1")
    env.pop("DAGSTER_HOME", None)
    cli = subprocess.run(
        [sys.executable, "-m", "gpt_pipeline.cli", "materialize", "--config", str(config_file),
         "--select", "tokenized_dataset"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, preexec_fn=limited,
    )
    assert cli.returncode == 2, cli.stderr[-3000:]
    last = cli.stderr.strip().splitlines()[-1]
    prefix = f"gpt-pipeline: error: job train_gpt_job failed: tokenized_dataset: cannot write {data / '.scratch'}/"
    assert last.startswith(prefix), last
    assert "tokenized_dataset.parquet: file too large (the file size limit is reached) (" in last, last
    assert last.endswith(" free on " + last.split(" free on ")[-1]) and "\n" not in last
    assert _stored(data) == stored
    assert temp_files(data) == []
    assert not any((data / ".scratch").iterdir())


def test_a_vanished_data_directory_fails_the_step_in_one_line(tmp_path, isolated_storage):
    data, _ = isolated_storage  # never created: the data directory is not there
    result = dg.materialize(
        ASSET_DEFS, selection=["tokenized_dataset"], instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
        resources={"io_manager": AssetFileIOManager(), "mlflow": MLflowResource()},
    )
    step, line = _failure_line(result)
    assert step == "tokenized_dataset"
    assert line in {f"cannot load {name!r}: the data directory {data} does not exist (vanished?)"
                    for name in ("raw_stories", "bpe_tokenizer")}
