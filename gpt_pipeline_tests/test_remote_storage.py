"""Assets in remote storage: the IO manager against a real S3-compatible server (moto's server
in a subprocess on 127.0.0.1), fsspec's memory store, and an endpoint where nothing listens.

Nothing reaches the internet: every S3 client gets an endpoint on 127.0.0.1, credentials come
from scoped environment variables, and the instance-metadata lookup is disabled.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import dagster as dg
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
import torch

from gpt_pipeline.training.checkpoint import load_checkpoint
from gpt_pipeline.defs.assets import ASSETS
from gpt_pipeline.defs.io_manager import AssetFileIOManager
from gpt_pipeline.defs.resources import MLflowResource
from gpt_pipeline.defs.sweeps import DEFAULT_VARIANT, VARIANT_ASSETS
from gpt_pipeline.defs.variants import VARIANTS
from gpt_pipeline.model.gpt import GPT, GPTConfig
from gpt_pipeline.remote import STORAGE_URL_ENV, StorageError
from gpt_pipeline.data.table_file import TableFile
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG, with_default_variant

ASSET_KEYS = ["raw_stories", "bpe_tokenizer", "tokenized_dataset", "trained_model", "sample_generations"]
BUCKET = "gpt-assets"
PREFIX = "runs/one"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3-compatible server in its own process on 127.0.0.1: its endpoint URL."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(f"moto server did not start on 127.0.0.1:{port}") from None
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Test credentials and no AWS config from this machine; no cached S3 clients across tests."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", STORAGE_URL_ENV):
        monkeypatch.delenv(name, raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def bucket(s3_endpoint, aws_env):
    """A fresh bucket on the moto server; its name."""
    name = f"{BUCKET}-{uuid.uuid4().hex[:8]}"
    _client(s3_endpoint).create_bucket(Bucket=name)
    return name


def _client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def _keys(endpoint: str, bucket: str) -> dict[str, int]:
    listing = _client(endpoint).list_objects_v2(Bucket=bucket).get("Contents", [])
    return {item["Key"]: item["Size"] for item in listing}


def _object(endpoint: str, bucket: str, key: str) -> bytes:
    return _client(endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()


def _input_context(key: str, type_: type = object, partition: str | None = None) -> dg.InputContext:
    """An input of asset ``key`` typed ``type_`` (``object``: a type no format names), of the
    sweep variant ``partition`` when given."""
    if partition is None:
        return dg.build_input_context(asset_key=dg.AssetKey(key), dagster_type=dg.PythonObjectDagsterType(type_))
    return dg.build_input_context(asset_key=dg.AssetKey(key), dagster_type=dg.PythonObjectDagsterType(type_),
                                  partition_key=partition, asset_partitions_def=VARIANTS,
                                  instance=with_default_variant(dg.DagsterInstance.ephemeral()))  # dynamic partitions


def _run_config(*keys: str) -> dict:
    """``TINY_RUN_CONFIG`` for the selected assets only."""
    return {"ops": {key: TINY_RUN_CONFIG["ops"][key] for key in keys}}


def _store(manager: AssetFileIOManager, key: str, value) -> dict:
    context = dg.build_output_context(asset_key=dg.AssetKey(key))
    manager.handle_output(context, value)
    return {name: entry.value for name, entry in context.get_logged_metadata().items()}


# --- the whole lineage on S3 ----------------------------------------------------------------------


def test_lineage_stores_every_asset_on_s3_and_reads_inputs_back(
    tmp_path, monkeypatch, isolated_storage, bucket, s3_endpoint
):
    data, _ = isolated_storage
    url = f"s3://{bucket}/{PREFIX}"
    resources = {
        "io_manager": AssetFileIOManager(base_url=url, storage_options={"endpoint_url": s3_endpoint}),
        "mlflow": MLflowResource(),
    }
    first = dg.materialize(ASSETS, resources=resources, run_config=_run_config(*ASSET_KEYS),
                           instance=with_default_variant(dg.DagsterInstance.ephemeral()), partition_key=DEFAULT_VARIANT)
    assert first.success

    stored = _keys(s3_endpoint, bucket)
    model_key, generations_key = (f"{PREFIX}/trained_model/{DEFAULT_VARIANT}.safetensors",
                                  f"{PREFIX}/sample_generations/{DEFAULT_VARIANT}.parquet")
    expected = {f"{PREFIX}/{name}" for name in (
        "raw_stories.parquet", "bpe_tokenizer.json", "bpe_tokenizer.vocab.txt", "tokenized_dataset.parquet")}
    expected |= {model_key, generations_key}  # a variant's asset: <asset>/<variant>.<suffix>
    assert expected <= set(stored), sorted(stored)

    # Only assets and their companions: checkpoints and scratch folders stay local.
    def asset_file(key: str) -> bool:
        parts = key.removeprefix(f"{PREFIX}/").split("/")
        if len(parts) == 2:  # a variant's file
            return parts[0] in VARIANT_ASSETS and parts[1].split(".")[0] == DEFAULT_VARIANT
        return len(parts) == 1 and parts[0].split(".")[0] in ASSET_KEYS and parts[0].split(".")[0] not in VARIANT_ASSETS

    assert all(key.startswith(f"{PREFIX}/") and asset_file(key) for key in stored), sorted(stored)
    assert all(size > 0 for size in stored.values())
    # No asset file went to the local data directory (only checkpoints, scratch and the lock
    # files of this machine's processes, such as the sweep parent run's, stay local).
    local = [p.relative_to(data) for p in data.rglob("*") if p.is_file()]
    assert [p for p in local if p.parts[0] not in ("checkpoints", ".scratch")
            and not (p.parts[0] == ".locks" and p.name == ".lock")] == []
    for event in first.get_asset_materialization_events():
        metadata = event.materialization.metadata
        key = event.asset_key.to_user_string()
        stem = f"{key}/{event.partition}" if key in VARIANT_ASSETS else key
        assert event.partition == (DEFAULT_VARIANT if key in VARIANT_ASSETS else None)
        assert metadata["path"].value.startswith(f"{url}/{stem}."), metadata["path"]
        assert metadata["size_bytes"].value == stored[metadata["path"].value.removeprefix(f"s3://{bucket}/")]

    # A second IO manager (as another process would) loads what the run stored.
    reader = AssetFileIOManager(base_url=url, storage_options={"endpoint_url": s3_endpoint})
    tokenizer = reader.load_input(_input_context("bpe_tokenizer", BPETokenizer))
    body = _object(s3_endpoint, bucket, f"{PREFIX}/bpe_tokenizer.json")
    assert tokenizer.vocab_size == 300 and tokenizer.to_json() == body.decode("utf-8")
    model = reader.load_input(_input_context("trained_model", GPT, DEFAULT_VARIANT))
    model_file = tmp_path / "model.safetensors"
    model_file.write_bytes(_object(s3_endpoint, bucket, model_key))
    expected_model = load_checkpoint(model_file)[0]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), expected_model.state_dict().values()))
    generations = pl.read_parquet(_object(s3_endpoint, bucket, generations_key))
    assert generations["prompt"].to_list() == ["Once", "The dog"]
    dataset = pl.read_parquet(_object(s3_endpoint, bucket, f"{PREFIX}/tokenized_dataset.parquet"))

    # Rematerialize downstream assets from a fresh, empty local data directory: their inputs
    # (raw_stories, bpe_tokenizer, trained_model) can only come from S3. Same seeds, same outputs.
    monkeypatch.setenv("GPT_PIPELINE_DATA_DIR", str(tmp_path / "elsewhere"))
    downstream = ["tokenized_dataset", "sample_generations"]
    again = dg.materialize(ASSETS, selection=downstream, resources=resources, run_config=_run_config(*downstream),
                           instance=with_default_variant(dg.DagsterInstance.ephemeral()), partition_key=DEFAULT_VARIANT)
    assert again.success
    assert sorted(e.asset_key.to_user_string() for e in again.get_asset_materialization_events()) == sorted(downstream)
    regenerated = pl.read_parquet(_object(s3_endpoint, bucket, generations_key))
    assert regenerated.equals(generations)
    assert pl.read_parquet(_object(s3_endpoint, bucket, f"{PREFIX}/tokenized_dataset.parquet")).equals(dataset)

    # Without the stored model the downstream asset has nothing to read: the error names S3.
    _client(s3_endpoint).delete_object(Bucket=bucket, Key=model_key)
    missing = dg.materialize(ASSETS, selection=["sample_generations"], resources=resources,
                             run_config=_run_config("sample_generations"), instance=with_default_variant(dg.DagsterInstance.ephemeral()),
                             raise_on_error=False, partition_key=DEFAULT_VARIANT)
    assert not missing.success
    failure = next(e for e in missing.all_events if e.is_step_failure)
    assert f"no stored file under {url}" in str(failure.step_failure_data.error)


# --- single values ---------------------------------------------------------------------------------


def _table_file(folder: Path, rows: list[int], companion: bytes | None) -> TableFile:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "t.parquet"
    pq.write_table(pa.table({"n": rows}), path)
    companions = {}
    if companion is not None:
        (folder / "t.tokens.bin").write_bytes(companion)
        companions["tokens.bin"] = folder / "t.tokens.bin"
    return TableFile(path, companions)


def test_memory_url_round_trips_every_format(isolated_storage):
    url = f"memory://gpt-tests-{uuid.uuid4().hex[:8]}/assets"
    manager = AssetFileIOManager(base_url=url)
    tokenizer = BPETokenizer.train(["a cat sat", "a bat sat on a mat"], 12)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=12, embedding_size=8, context_length=4, head_count=2, block_count=1,
                          feed_forward_multiplier=2))
    frame = pl.DataFrame({"text": ["one", "two"]})
    table = pa.table({"tokens": [[1, 2], [3]], "split": ["train", "test"]})

    metadata = _store(manager, "frame", frame)
    assert metadata["path"] == f"{url}/frame.parquet"
    assert metadata["size_bytes"] == manager.path_for(dg.AssetKey("frame"), ".parquet").stat().st_size
    _store(manager, "table", table)
    tokenizer_metadata = _store(manager, "tokenizer", tokenizer)
    assert tokenizer_metadata["vocabulary_listing"] == f"{url}/tokenizer.vocab.txt"
    _store(manager, "model", model)

    assert manager.load_input(_input_context("frame", pl.DataFrame)).equals(frame)
    assert manager.load_input(_input_context("table", pa.Table)).equals(table)
    assert manager.load_input(_input_context("tokenizer", BPETokenizer)).to_json() == tokenizer.to_json()
    loaded = manager.load_input(_input_context("model", GPT))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    # A type the formats do not name: the stored file decides (first format whose file exists).
    assert manager.load_input(_input_context("tokenizer")).to_json() == tokenizer.to_json()


def test_table_file_companions_travel_and_stale_ones_go(isolated_storage, tmp_path):
    url = f"memory://gpt-tests-{uuid.uuid4().hex[:8]}/assets"
    manager = AssetFileIOManager(base_url=url)
    token_bytes = np.arange(5, dtype=np.uint16).tobytes()
    metadata = _store(manager, "tokens", _table_file(tmp_path / "one", [1, 2, 3], token_bytes))
    assert metadata["tokens.bin"] == f"{url}/tokens.tokens.bin"

    loaded = manager.load_input(_input_context("tokens", TableFile))
    assert loaded.read().column("n").to_pylist() == [1, 2, 3]
    assert loaded.path.is_file() and set(loaded.companions) == {"tokens.bin"}  # local, memory-mappable
    assert np.array_equal(np.memmap(loaded.companions["tokens.bin"], dtype=np.uint16, mode="r"), np.arange(5))

    # A new version without the companion: the stored companion of the old one is deleted.
    _store(manager, "tokens", _table_file(tmp_path / "two", [7], None))
    reloaded = manager.load_input(_input_context("tokens", TableFile))
    assert reloaded.read().column("n").to_pylist() == [7] and dict(reloaded.companions) == {}
    base = manager.base_dir()
    assert sorted(p.name for p in base.iterdir()) == ["tokens.parquet"]


def test_storage_url_env_and_local_base_url(isolated_storage, tmp_path, monkeypatch):
    data, _ = isolated_storage
    frame = pl.DataFrame({"n": [1, 2]})
    # A local base_url is an ordinary folder with the same files as the data directory.
    local = AssetFileIOManager(base_url=str(tmp_path / "assets"))
    assert _store(local, "frame", frame)["path"] == str(tmp_path / "assets" / "frame.parquet")
    assert pl.read_parquet(tmp_path / "assets" / "frame.parquet").equals(frame)
    assert AssetFileIOManager(base_url=f"file://{tmp_path / 'assets'}").load_input(
        _input_context("frame", pl.DataFrame)).equals(frame)
    # Unconfigured: $GPT_PIPELINE_STORAGE_URL, else the data directory.
    url = f"memory://gpt-tests-{uuid.uuid4().hex[:8]}/env"
    monkeypatch.setenv(STORAGE_URL_ENV, url)
    assert _store(AssetFileIOManager(), "frame", frame)["path"] == f"{url}/frame.parquet"
    monkeypatch.delenv(STORAGE_URL_ENV)
    assert _store(AssetFileIOManager(), "frame", frame)["path"] == str(data / "frame.parquet")


# --- errors ----------------------------------------------------------------------------------------


def test_unreachable_endpoint_fails_fast_naming_the_url(isolated_storage, aws_env):
    endpoint = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    url = f"s3://{BUCKET}/{PREFIX}"
    manager = AssetFileIOManager(base_url=url, storage_options={"endpoint_url": endpoint})
    started = time.monotonic()
    with pytest.raises(dg.Failure) as error:
        _store(manager, "frame", pl.DataFrame({"n": [1]}))
    assert time.monotonic() - started < 15
    message = error.value.description
    assert f"cannot upload to '{url}/frame.parquet'" in message and "\n" not in message, message
    assert isinstance(error.value.__cause__, StorageError)
    started = time.monotonic()
    with pytest.raises(dg.Failure, match=f"cannot check '{url}/frame.parquet'"):
        manager.load_input(_input_context("frame", pl.DataFrame))
    assert time.monotonic() - started < 15


def test_missing_bucket_and_missing_credentials_name_the_url(isolated_storage, s3_endpoint, aws_env, monkeypatch):
    url = "s3://no-such-bucket/assets"
    manager = AssetFileIOManager(base_url=url, storage_options={"endpoint_url": s3_endpoint})
    with pytest.raises(dg.Failure, match="cannot upload to 's3://no-such-bucket/assets/frame.parquet'") as error:
        _store(manager, "frame", pl.DataFrame({"n": [1]}))
    assert "bucket does not exist" in error.value.description and "\n" not in error.value.description

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(dg.Failure, match="s3://no-such-bucket/assets/frame.parquet") as error:
        _store(manager, "frame", pl.DataFrame({"n": [1]}))
    assert "credentials" in error.value.description.lower()


def test_s3_endpoint_from_the_standard_variable(isolated_storage, bucket, s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    manager = AssetFileIOManager(base_url=f"s3://{bucket}/env")
    _store(manager, "frame", pl.DataFrame({"n": [4, 5]}))
    assert set(_keys(s3_endpoint, bucket)) == {"env/frame.parquet"}
    assert manager.load_input(_input_context("frame", pl.DataFrame))["n"].to_list() == [4, 5]


def test_cli_materialize_uses_the_storage_url(isolated_storage, s3_endpoint, aws_env, monkeypatch, tmp_path, capsys):
    import yaml

    from gpt_pipeline.cli import main

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(TINY_RUN_CONFIG))
    url = "s3://no-such-bucket/cli"
    assert main(["materialize", "--config", str(config), "--storage-url", url]) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gpt-pipeline: error:")]
    assert len(error) == 1 and f"cannot upload to '{url}/raw_stories.parquet'" in error[0], error
