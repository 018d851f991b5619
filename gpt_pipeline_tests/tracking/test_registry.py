"""The model registry against a real MLflow SQLite store: a version per training, idempotent and
safe when processes register at the same time; registration never moves ``champion``, only
``set_champion`` does (the ``champion_model`` asset elects)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from mlflow.tracking import MlflowClient

from gpt_pipeline.tracking.tracker import Tracker
from gpt_pipeline.tracking.registry import (
    CHAMPION_ALIAS,
    MODEL_NAME,
    champion,
    model_versions,
    register_training,
    retrying,
    set_champion,
)
from gpt_pipeline_tests.tracking_helpers import BAD_LR, GOOD_LR, log_training, tiny_data


def _bare_model(tracker: Tracker, name: str = "model"):
    """A run with an (empty) logged model: enough to register, nothing to load."""
    with tracker.run("bare") as run:
        logged = tracker.client.create_logged_model(tracker.experiment_id, name=name, source_run_id=run.run_id)
    return run, f"models:/{logged.model_id}"


def test_two_trainings_registered_and_the_champion_set_is_served(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri)
    data = tiny_data(tmp_path)
    better = log_training(tracker, data, GOOD_LR, tmp_path)
    worse = log_training(tracker, data, BAD_LR, tmp_path)
    assert better.result.test_loss < worse.result.test_loss - 0.1

    first = register_training(better.run, better.result.test_loss)  # the run's logged model by default
    second = register_training(worse.run, worse.result.test_loss, worse.model_uri)
    assert (int(first.version), int(second.version)) == (1, 2)
    assert first.tags["test_loss"] == repr(better.result.test_loss)
    assert first.tags["run_id"] == better.run.run_id
    assert first.tags["model_id"] == better.model_uri.removeprefix("models:/")
    assert champion(tracker.client) is None  # registering elects nothing: champion_model does

    assert set_champion(tracker.client, first.version).version == first.version
    assert champion(tracker.client).version == first.version

    again = register_training(better.run, better.result.test_loss, better.model_uri)
    assert again.version == first.version and len(model_versions(tracker.client)) == 2
    assert champion(tracker.client).version == first.version
    logged = tracker.client.get_logged_model(better.model_uri.removeprefix("models:/"))
    assert json.loads(logged.tags["mlflow.modelVersions"]) == [{"name": MODEL_NAME, "version": 1}]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{CHAMPION_ALIAS}")
    text = model.predict(["Once"], params={"token_count": 10})[0]
    assert text.startswith("Once") and len(text) > len("Once")
    assert model.metadata.run_id == better.run.run_id


def test_registration_never_moves_the_alias_only_set_champion_does(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    assert champion(tracker.client) is None
    for loss in [3.0, 2.0]:
        run, uri = _bare_model(tracker)
        register_training(run, loss, uri)
        assert champion(tracker.client) is None  # not even the best version so far
    chosen = set_champion(tracker.client, 1)  # any version, not necessarily the lowest loss
    assert int(chosen.version) == 1 and float(chosen.tags["test_loss"]) == 3.0
    champions_after_each = []
    for loss in [2.5, 2.0, 1.0]:  # lower losses registered after: the alias stays where it was set
        run, uri = _bare_model(tracker)
        register_training(run, loss, uri)
        champions_after_each.append(int(champion(tracker.client).version))
    assert champions_after_each == [1, 1, 1]
    run, uri = _bare_model(tracker)
    register_training(run, 9.0, uri)  # version 6, then the same model again (returns version 6)
    assert int(register_training(SimpleNamespace(client=tracker.client, run_id=run.run_id), 9.0, uri).version) == 6
    assert int(champion(tracker.client).version) == 1 and len(model_versions(tracker.client)) == 6
    assert int(set_champion(tracker.client, "5").version) == 5
    assert int(champion(tracker.client).version) == 5 and float(champion(tracker.client).tags["test_loss"]) == 1.0


def test_rejects_bad_input(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    run, uri = _bare_model(tracker)
    for loss in (float("nan"), float("inf"), "2.0", True):
        with pytest.raises(ValueError, match="test_loss must be a finite number"):
            register_training(run, loss, uri)
    with pytest.raises(ValueError, match="registered model name"):
        register_training(run, 1.0, uri, model_name="bad'name")
    with pytest.raises(ValueError, match="logged model URI"):
        register_training(run, 1.0, f"runs:/{run.run_id}/model")
    with pytest.raises(ValueError, match="has no logged model named 'model'"):
        register_training(_bare_model(tracker, name="other")[0], 1.0)
    assert model_versions(tracker.client) == []


def test_retrying_gives_up_at_once_on_errors_retries_cannot_fix():
    calls = []

    def missing():
        calls.append(1)
        raise MlflowException("no such model", error_code=RESOURCE_DOES_NOT_EXIST)

    with pytest.raises(MlflowException, match="no such model"):
        retrying(missing, first_wait=0)
    assert len(calls) == 1

    def always_locked():
        calls.append(1)
        raise MlflowException("database is locked")

    with pytest.raises(MlflowException, match="locked"):
        retrying(always_locked, attempts=3, first_wait=0)
    assert len(calls) == 1 + 3


_REGISTER_IN_A_PROCESS = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from types import SimpleNamespace
    from mlflow.tracking import MlflowClient
    from gpt_pipeline.tracking.registry import register_training

    client = MlflowClient(sys.argv[1])
    client.search_registered_models()  # connect before the start line
    barrier = Path(sys.argv[2])
    (barrier / sys.argv[3]).touch()
    while len(list(barrier.iterdir())) < 2:  # both processes start registering together
        time.sleep(0.005)
    for pair in sys.argv[4:]:
        run_id, uri, loss = pair.split(",")
        register_training(SimpleNamespace(client=client, run_id=run_id), float(loss), uri)
""")


def test_two_processes_registering_at_once(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri)
    losses = [5.0, 4.0, 6.0, 3.5, 4.5, 3.0, 7.0, 3.25]
    models = [(*_bare_model(tracker), loss) for loss in losses]
    pairs = [f"{run.run_id},{model_uri},{loss}" for run, model_uri, loss in models]
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    workers = [
        subprocess.Popen([sys.executable, "-c", _REGISTER_IN_A_PROCESS, uri, str(barrier), str(i), *pairs[i::2]],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err[-3000:]
    # A third registration of the same models from here changes nothing: each has its version.
    client = MlflowClient(uri)
    register_training(SimpleNamespace(client=client, run_id=models[0][0].run_id), losses[0], models[0][1])
    versions = model_versions(client)
    assert sorted(int(v.version) for v in versions) == list(range(1, len(losses) + 1))
    assert sorted(v.tags["model_id"] for v in versions) == sorted(m[1].removeprefix("models:/") for m in models)
    loss_of_model = {model_uri.removeprefix("models:/"): loss for _, model_uri, loss in models}
    assert all(float(v.tags["test_loss"]) == loss_of_model[v.tags["model_id"]] for v in versions)
    assert all(v.tags["run_id"] == run.run_id for v in versions for run, model_uri, _ in models
               if model_uri.removeprefix("models:/") == v.tags["model_id"])
    assert champion(client) is None  # concurrent registrations elect nothing


def test_the_same_weights_are_registered_once(tmp_path):
    import torch

    from gpt_pipeline.provenance import weights_digest  # the one digest of weights, provenance's too
    from gpt_pipeline.tracking.registry import WEIGHTS_DIGEST_TAG, log_and_register

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri)
    data = tiny_data(tmp_path / "data")
    trained = log_training(tracker, data, GOOD_LR, tmp_path)
    weights = trained.result.model.state_dict()
    logged_before = len(tracker.client.search_logged_models([tracker.experiment_id]))

    def materialize(state_dict):
        with tracker.run("trained_model") as run:
            uri_, version, reused = log_and_register(
                run, trained.checkpoint, data.tokenizer_path, state_dict, trained.result.test_loss,
                {"learning_rate": GOOD_LR}, {"test_bits_per_character": 1.5}, step=30)
        return run, uri_, version, reused

    first_run, first_uri, first, reused = materialize(weights)
    assert not reused and first.tags[WEIGHTS_DIGEST_TAG] == weights_digest(weights)
    again_run, again_uri, again, reused = materialize({k: v.clone() for k, v in weights.items()})
    assert reused and again.version == first.version and again_uri == first_uri
    assert len(model_versions(tracker.client)) == 1
    assert len(tracker.client.search_logged_models([tracker.experiment_id])) == logged_before + 1
    outputs = tracker.client.get_run(again_run.run_id).outputs.model_outputs
    assert [o.model_id for o in outputs] == [first_uri.removeprefix("models:/")]
    assert tracker.client.get_run(again_run.run_id).data.metrics == {"test_bits_per_character": 1.5}

    changed = {k: v + 1e-3 if v.is_floating_point() else v for k, v in weights.items()}
    _, changed_uri, other, reused = materialize(changed)
    assert not reused and other.version != first.version and changed_uri != first_uri
    assert len(model_versions(tracker.client)) == 2
    assert champion(tracker.client) is None  # log_and_register, reused or not, leaves the alias alone
    assert weights_digest(changed) != weights_digest(weights) == weights_digest(
        {k: v.to(torch.float32) for k, v in weights.items()})
