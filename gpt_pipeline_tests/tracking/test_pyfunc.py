"""The pyfunc model against a real MLflow SQLite store: what it predicts, what it refuses, what
it stores (no pickles, weights only, our package bundled, installable requirements) and how it
is linked to its run. Serving over REST: test_serving.py."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pandas as pd
import pytest
from safetensors import safe_open

from gpt_pipeline.training.checkpoint import load_checkpoint
from gpt_pipeline.model.sampling import generate_text
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline.tokenizer.bundle import write_bundle
from gpt_pipeline.tracking.tracker import Tracker
from gpt_pipeline.tracking.pyfunc import (
    SIGNATURE,
    InvalidRequest,
    generation_settings,
    pip_requirements,
    prompts_of,
    save_pyfunc_model,
)
from gpt_pipeline_tests.tracking_helpers import GOOD_LR, log_training, tiny_data


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pyfunc")
    uri = f"sqlite:///{directory}/mlflow.db"
    tracker = Tracker(uri)
    data = tiny_data(directory)
    return uri, tracker, data, log_training(tracker, data, GOOD_LR, directory)


@pytest.fixture
def tracking_env(logged, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged[0])
    return logged


def test_predict_matches_generate_text(tracking_env):
    _, _, data, training = tracking_env
    model = mlflow.pyfunc.load_model(training.model_uri)
    prompts = ["Once", "The dog"]
    got = model.predict(pd.DataFrame({"prompt": prompts}), params={"token_count": 12, "seed": 3})
    # the same sampling from the original checkpoint: prompt i is sampled with seed + i
    original, _ = load_checkpoint(training.checkpoint)
    expected = [generate_text(original, data.tokenizer, p, 12, temperature=0.7, seed=3 + i)[0]
                for i, p in enumerate(prompts)]
    assert got == expected
    assert all(text.startswith(prompt) and len(text) > len(prompt) for text, prompt in zip(got, prompts))
    assert model.predict(prompts, params={"token_count": 12, "seed": 3}) == expected  # a list works too
    longer = model.predict(["Once"], params={"token_count": 40, "seed": 3})[0]
    assert longer == generate_text(original, data.tokenizer, "Once", 40, temperature=0.7, seed=3)[0]
    # the same draws, 28 tokens further (re-encoding the text may merge tokens, so compare texts)
    assert longer.startswith(got[0]) and len(longer) > len(got[0])


def test_signature_and_defaults(tracking_env):
    model = mlflow.pyfunc.load_model(tracking_env[3].model_uri)
    assert model.metadata.signature.to_dict() == SIGNATURE.to_dict()
    defaults = {p.name: p.default for p in model.metadata.signature.params.params}
    assert defaults == {"token_count": 64, "temperature": 0.7, "top_k": None, "seed": 1234, "unknown": "error"}
    with pytest.raises(Exception, match="not in the vocabulary|never seen|unseen|unknown"):
        model.predict(["\u00e9t\u00e9"])  # characters the tokenizer never saw, unknown="error"
    assert model.predict(["Once \u00e9"], params={"unknown": "skip", "token_count": 3})[0].startswith("Once \u00e9")


def test_top_k_is_honoured(tracking_env):
    _, _, data, training = tracking_env
    model = mlflow.pyfunc.load_model(training.model_uri)
    original, _ = load_checkpoint(training.checkpoint)
    got = model.predict(["Once", "The dog"], params={"token_count": 15, "top_k": 3, "seed": 8})
    assert got == [generate_text(original, data.tokenizer, p, 15, top_k=3, seed=8 + i)[0]
                   for i, p in enumerate(["Once", "The dog"])]
    greedy = model.predict(["Once"], params={"token_count": 15, "top_k": 1, "seed": 8})
    assert greedy == [generate_text(original, data.tokenizer, "Once", 15, top_k=1)[0]]
    assert model.predict(["Once"], params={"token_count": 15, "seed": 8}) != greedy  # all tokens


def test_bad_requests_raise_invalid_request_with_one_line(tracking_env):
    model = mlflow.pyfunc.load_model(tracking_env[3].model_uri)
    for prompts, params, message in [
        (["Once"], {"bogus": 1, "token_count": 3}, "unknown parameter(s) bogus: the model takes seed, "
         "temperature, token_count, top_k, unknown"),
        (["Once"], {"token_count": 0}, "token_count must be an integer >= 1, got 0"),
        (["Once"], {"top_k": -1}, "top_k must be an integer >= 1, got -1"),
        (["Once"], {"temperature": float("nan")}, "temperature must be a finite number > 0, got nan"),
        (["Once", ""], {}, "every prompt must be a non-empty string, got '' (prompt 1)"),
        (["O\u00e9"], {}, "1 characters never seen in training: '\u00e9' (U+00E9) at 1"),
        (["\u00e9"], {"unknown": "skip"}, "prompt 0 ('\u00e9') encodes to no tokens"),
    ]:
        with pytest.raises(InvalidRequest) as caught:
            model.predict(prompts, params=params)
        assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
        assert caught.value.reason.startswith(message) and "\n" not in caught.value.reason
        assert caught.value.get_http_status_code() == 400
    assert model.predict(["Once"], params={"token_count": 2})  # nothing left behind: it still works


def test_generation_settings_defaults_and_refusals():
    assert generation_settings(None) == {"token_count": 64, "temperature": 0.7, "top_k": None,
                                         "seed": 1234, "unknown": "error"}
    assert generation_settings({"top_k": 2, "token_count": 5})["top_k"] == 2
    for params, message in [({"top_p": 1}, "unknown parameter"), ({"token_count": True}, "token_count"),
                            ({"seed": 1.5}, "seed must be an integer"), ({"temperature": "hot"}, "temperature")]:
        with pytest.raises(InvalidRequest, match=message):
            generation_settings(params)


def test_requirements_pin_an_installable_environment():
    requirements = pip_requirements()
    assert not [r for r in requirements if r.startswith("gpt_pipeline")]  # bundled, not required
    torch_pin = next(r for r in requirements if r.startswith("torch=="))
    import torch

    assert torch_pin == f"torch=={torch.__version__}"
    if torch.__version__.endswith("+cpu"):  # the CPU build, from PyTorch's CPU index, never CUDA's
        assert requirements.index("--extra-index-url https://download.pytorch.org/whl/cpu") < \
            requirements.index(torch_pin)
    assert {r.split("==")[0] for r in requirements if "==" in r} == {
        "mlflow", "torch", "safetensors", "numpy", "pandas", "polars"}


def test_logged_model_is_weights_and_json_without_pickles(tracking_env):
    _, tracker, _, training = tracking_env
    model_id = training.model_uri.removeprefix("models:/")
    logged = tracker.client.get_logged_model(model_id)
    assert logged.experiment_id == tracker.experiment_id  # not MLflow's default experiment
    assert logged.source_run_id == training.run.run_id
    assert str(logged.status).endswith("READY")
    run = tracker.client.get_run(training.run.run_id)
    assert [o.model_id for o in run.outputs.model_outputs] == [model_id]

    root = Path(urlparse(logged.artifact_location).path)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pt", ".pth", ".joblib"))], files
    assert {"MLmodel", "gpt_text_generator.py", "artifacts/model.safetensors",
            "artifacts/bpe_tokenizer.json", "requirements.txt", "code/gpt_pipeline/__init__.py",
            "code/gpt_pipeline/tracking/pyfunc.py", "code/gpt_pipeline/model/sampling.py"} <= set(files)
    assert not [f for f in files if "__pycache__" in f or f.endswith((".pyc", ".so"))], files
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in (root / "MLmodel").read_text()
    assert "code: code" in (root / "MLmodel").read_text()  # put on sys.path when the model loads
    assert (root / "requirements.txt").read_text().splitlines() == pip_requirements()
    with safe_open(str(root / "artifacts/model.safetensors"), "pt") as weights, \
            safe_open(str(training.checkpoint), "pt") as checkpoint:
        assert set(weights.keys()) == {k for k in checkpoint.keys() if not k.startswith(("optimizer.", "rng."))}
        assert "training_state" not in (weights.metadata() or {})
    assert BPETokenizer.load(root / "artifacts/bpe_tokenizer.json") == tracking_env[2].tokenizer


def test_prompts_of_accepts_and_rejects():
    assert prompts_of(pd.DataFrame({"x": ["a"]})) == ["a"]  # one column of any name
    assert prompts_of(pd.Series(["a", "b"])) == ["a", "b"]
    for bad, message in [
        (pd.DataFrame({"x": ["a"], "y": ["b"]}), "no 'prompt' column"),
        ([], "no prompts"),
        (["a", ""], "non-empty string"),
        ([3], "non-empty string"),
        (42, "got int"),
    ]:
        with pytest.raises(ValueError, match=message):
            prompts_of(bad)


def test_save_rejects_a_tokenizer_of_another_size(logged, tmp_path):
    _, _, data, training = logged
    other = tmp_path / "other.json"
    write_bundle(BPETokenizer.train(["abcabc abd"], 6), other)
    with pytest.raises(ValueError, match="vocab_size 120 but tokenizer"):
        save_pyfunc_model(tmp_path / "model", training.checkpoint, other)
    assert not (tmp_path / "model").exists()
