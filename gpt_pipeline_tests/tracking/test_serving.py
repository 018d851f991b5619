"""``mlflow models serve`` on the registry's ``champion``, end to end: a tiny model is trained,
logged and registered in a real SQLite store under ``tmp_path`` and made the champion with
``set_champion`` (as the ``champion_model`` asset does), the scoring server is started
on 127.0.0.1 (a free port, ``--env-manager local``, as ``make serve`` does) and answers REST
requests; the texts must be what our own generator produces with the same seeds, and bad
requests must get HTTP 400 with a one-line message. The server is stopped in a ``finally`` and
no process it started may outlive the test (the helpers of ``test_servers_e2e``).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import uuid

import pytest

from gpt_pipeline.model.generation import generate_text
from gpt_pipeline.tracking.registry import CHAMPION_ALIAS, MODEL_NAME, champion, register_training, set_champion
from gpt_pipeline.tracking.tracker import Tracker
from gpt_pipeline.training.checkpoint import load_checkpoint
from gpt_pipeline_tests.server_processes import (
    BIN,
    MARKER,
    _free_port,
    _start,
    _stop,
    _tail,
    _wait_all_exited,
    _wait_for,
)
from gpt_pipeline_tests.tracking_helpers import GOOD_LR, log_training, tiny_data

START_SECONDS = 120  # the server loads the model from the registry; seconds on an idle machine


def _post(port: int, payload) -> tuple[int, str]:
    """(status, body) of a POST to ``/invocations``; an HTTP error is an answer too."""
    data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _predictions(port: int, payload) -> list[str]:
    status, body = _post(port, payload)
    assert status == 200, body
    return json.loads(body)["predictions"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A registered tiny model and ``mlflow models serve -m models:/gpt-pipeline@champion``."""
    directory = tmp_path_factory.mktemp("serving")
    tracking_uri = f"sqlite:///{directory}/mlflow.db"
    data = tiny_data(directory)
    training = log_training(Tracker(tracking_uri), data, GOOD_LR, directory)
    version = register_training(training.run, training.result.test_loss)
    assert champion(training.run.client) is None  # registering elects nothing: champion_model does
    set_champion(training.run.client, version.version)
    assert champion(training.run.client).version == version.version
    token = uuid.uuid4().hex
    env = {**os.environ, MARKER: token, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONUNBUFFERED": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # uvicorn, as `make serve` does
    port, log = _free_port(), directory / "serve.log"
    server = _start([str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}@{CHAMPION_ALIAS}",
                     "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], env, log, directory)
    try:
        def ping() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as response:
                return response.status == 200

        _wait_for("mlflow models serve answers /ping", ping, time.monotonic() + START_SECONDS, server, log)
        model, _ = load_checkpoint(training.checkpoint)
        yield port, model, data.tokenizer, log
    finally:
        stopped = _stop(server)
        left = _wait_all_exited(token)
        assert stopped and not left, f"server left running: {left}\n{_tail(log)}"


def test_a_batch_of_prompts_is_what_our_generator_samples(served):
    port, model, tokenizer, _ = served
    prompts = ["Once", "The dog", "Once upon a"]
    params = {"token_count": 12, "temperature": 0.9, "top_k": 5, "seed": 3}
    texts = _predictions(port, {"inputs": prompts, "params": params})
    expected = [generate_text(model, tokenizer, p, 12, temperature=0.9, top_k=5, seed=3 + i)[0]
                for i, p in enumerate(prompts)]
    assert texts == expected
    assert all(t.startswith(p) and len(t) > len(p) and set(t) <= set(tokenizer.alphabet)
               for t, p in zip(texts, prompts))
    # the DataFrame form and the signature's defaults (64 tokens, temperature 0.7, seed 1234)
    split = {"dataframe_split": {"columns": ["prompt"], "data": [[p] for p in prompts[:2]]}}
    assert _predictions(port, split) == [generate_text(model, tokenizer, p, 64, seed=1234 + i)[0]
                                         for i, p in enumerate(prompts[:2])]


def test_seeds_reproduce_and_top_k_is_honoured(served):
    port, model, tokenizer, _ = served
    request = {"inputs": ["Once", "Once"], "params": {"token_count": 20, "seed": 11}}
    first = _predictions(port, request)
    assert _predictions(port, request) == first
    assert first[0] != first[1]  # prompt i samples with seed + i
    other = _predictions(port, {**request, "params": {"token_count": 20, "seed": 12}})
    assert other[0] == first[1] and other != first
    greedy = _predictions(port, {"inputs": ["Once"], "params": {"token_count": 20, "top_k": 1, "seed": 1}})
    assert greedy == [generate_text(model, tokenizer, "Once", 20, top_k=1)[0]]  # arg-max: any seed
    assert _predictions(port, {"inputs": ["Once"], "params": {"token_count": 20, "top_k": 1, "seed": 2}}) == greedy


@pytest.mark.parametrize("payload, message", [
    ({"inputs": ["Once", ""]}, "every prompt must be a non-empty string, got '' (prompt 1)"),
    ({"inputs": ["Once \u00e9t\u00e9"]},
     "1 characters never seen in training: '\u00e9' (U+00E9) at 5, 7 (unknown='skip' drops them)"),
    ({"inputs": ["Once"], "params": {"token_count": 0}}, "token_count must be an integer >= 1, got 0"),
    ({"inputs": ["Once"], "params": {"token_count": -3}}, "token_count must be an integer >= 1, got -3"),
    ({"inputs": ["Once"], "params": {"top_k": 0}}, "top_k must be an integer >= 1, got 0"),
    ({"inputs": ["Once"], "params": {"temperature": 0.0}}, "temperature must be a finite number > 0, got 0.0"),
    ({"inputs": ["Once"], "params": {"unknown": "drop"}}, "unknown must be one of error, skip, got 'drop'"),
    ({"inputs": ["Once"], "params": {"top_p": 0.9, "token_count": 5}},
     "unknown parameter(s) top_p: the model takes seed, temperature, token_count, top_k, unknown"),
])
def test_a_bad_request_is_a_400_with_one_line(served, payload, message):
    port = served[0]
    status, body = _post(port, payload)
    assert status == 400, body
    assert "\n" not in body.strip() and "Traceback" not in body
    answer = json.loads(body)
    assert answer == {"error_code": "INVALID_PARAMETER_VALUE", "message": message}


def test_a_value_of_the_wrong_type_is_refused_by_the_signature(served):
    """MLflow checks the types against the signature before the model runs: a 400 naming the
    parameter and the value (MLflow's message, which it prefixes with the input)."""
    port = served[0]
    for value in ["ten", 2.5]:
        status, body = _post(port, {"inputs": ["Once"], "params": {"token_count": value}})
        assert status == 400, body
        answer = json.loads(body)
        assert answer["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "token_count" in answer["message"] and str(value) in answer["message"]
        assert "Traceback" not in body
    status, body = _post(port, "not json")
    assert status == 400 and "valid JSON" in json.loads(body)["message"]


def test_the_server_ran_the_model_from_the_registry(served):
    log = served[3].read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert "POST /invocations HTTP/1.1\" 400" in log and "POST /invocations HTTP/1.1\" 200" in log
