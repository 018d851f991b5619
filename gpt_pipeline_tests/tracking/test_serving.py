"""``mlflow models serve`` on the registry's ``champion``, end to end: a tiny model is trained,
logged and registered in a real SQLite store under ``tmp_path`` and made the champion with
``set_champion`` (as the ``champion_model`` asset does), the scoring server is started
on 127.0.0.1 (a free port, ``--env-manager local``, as ``make serve`` does) and answers REST
requests; the texts must be what our own generator produces with the same seeds, and bad
requests must get HTTP 400 with a one-line message. The server is stopped in a ``finally`` and
no process it started may outlive the test (the helpers of ``test_servers_e2e``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
import uuid

import psutil
import pytest

from gpt_pipeline.model.sampling import generate_text
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


def _post(port: int, payload, headers: dict | None = None) -> tuple[int, str]:
    """(status, body) of a POST to ``/invocations`` with ``headers`` (default: a JSON content
    type; ``{}``: none at all, which ``http.client`` leaves so)."""
    data = payload if isinstance(payload, bytes) else payload.encode() if isinstance(payload, str) else \
        json.dumps(payload).encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", "/invocations", body=data,
                           headers={"Content-Type": "application/json"} if headers is None else headers)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def _predictions(port: int, payload) -> list[str]:
    status, body = _post(port, payload)
    assert status == 200, body
    return json.loads(body)["predictions"]


# The served model's limits (tracking.serving.Limits) in these tests: long requests are possible
# (a token of the tiny model costs microseconds), the rest small enough to go over cheaply.
LIMITS = {"GPT_PIPELINE_SERVE_MAX_TOKENS": "5000000", "GPT_PIPELINE_SERVE_MAX_PROMPTS": "8",
          "GPT_PIPELINE_SERVE_MAX_PROMPT_CHARS": "100", "GPT_PIPELINE_SERVE_MAX_BODY_BYTES": "100000",
          "GPT_PIPELINE_SERVE_SECONDS": "6"}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A tiny model trained, logged and registered in a SQLite store, made the champion."""
    directory = tmp_path_factory.mktemp("serving")
    tracking_uri = f"sqlite:///{directory}/mlflow.db"
    data = tiny_data(directory)
    training = log_training(Tracker(tracking_uri), data, GOOD_LR, directory)
    version = register_training(training.run, training.result.test_loss)
    assert champion(training.run.client) is None  # registering elects nothing: champion_model does
    set_champion(training.run.client, version.version)
    assert champion(training.run.client).version == version.version
    return directory, tracking_uri, training, data


@contextlib.contextmanager
def model_server(directory, tracking_uri: str, name: str):
    """``mlflow models serve -m models:/gpt-pipeline@champion`` as ``make serve`` runs it (one
    torch thread), with ``LIMITS``: yields (server process, port, log, marker token); stopped and
    waited on afterwards, no process of it left."""
    token = uuid.uuid4().hex
    env = {**os.environ, MARKER: token, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1", **LIMITS,
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # uvicorn, as `make serve` does
    port, log = _free_port(), directory / f"{name}.log"
    server = _start([str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}@{CHAMPION_ALIAS}",
                     "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], env, log, directory)
    try:
        _wait_for("mlflow models serve answers /ping", lambda: _ping(port), time.monotonic() + START_SECONDS,
                  server, log)
        _predictions(port, {"inputs": ["Once"], "params": {"token_count": 2}})  # builds the C kernel, if not yet
        yield server, port, log, token
    finally:
        stopped = _stop(server)
        left = _wait_all_exited(token)
        assert stopped and not left, f"server left running: {left}\n{_tail(log)}"


def _ping(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as response:
        return response.status == 200


@pytest.fixture(scope="module")
def served(registry):
    directory, tracking_uri, training, data = registry
    with model_server(directory, tracking_uri, "serve") as (server, port, log, _):
        model, _ = load_checkpoint(training.checkpoint)
        yield port, model, data.tokenizer, log, server


def test_a_batch_of_prompts_is_what_our_generator_samples(served):
    port, model, tokenizer = served[:3]
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
    port, model, tokenizer = served[:3]
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


DEEP = "[" * 40_000 + "]" * 40_000  # 80 kB, under the body limit, deeper than Python's JSON parser recurses


@pytest.mark.parametrize("payload, headers, message", [
    ({"inputs": ["Once"], "params": {"token_count": "ten"}}, None, "token_count must be an integer >= 1, got 'ten'"),
    ({"inputs": ["Once"], "params": {"token_count": 2.5}}, None, "token_count must be an integer >= 1, got 2.5"),
    ({"inputs": ["Once"], "params": {"seed": [1]}}, None, "seed must be an integer, got [1]"),
    ({"inputs": ["Once"], "params": {"token_count": 10**19}}, None,
     "token_count 10000000000000000000 is over the limit of 5000000 new tokens per prompt "
     "(GPT_PIPELINE_SERVE_MAX_TOKENS)"),
    ({"inputs": ["Once"] * 9}, None, "9 prompts is over the limit of 8 per request (GPT_PIPELINE_SERVE_MAX_PROMPTS)"),
    ({"inputs": ["Once", "a" * 101]}, None,
     "prompt 1 has 101 characters, over the limit of 100 (GPT_PIPELINE_SERVE_MAX_PROMPT_CHARS)"),
    ({"inputs": []}, None, "inputs holds no prompts: give at least one"),
    ({"inputs": "Once"}, None, "inputs must be a list of prompts (strings), got a string: 'Once'"),
    ({"inputs": [3]}, None, "every prompt must be a non-empty string, got 3 (prompt 0)"),
    ({"inputs": ["Once"], "prompt": "x"}, None,
     "unknown field(s) 'prompt': a request holds inputs (or instances, dataframe_split, dataframe_records) "
     "and params"),
    ({"params": {}}, None,
     "a request holds exactly one of inputs, instances, dataframe_split, dataframe_records, got none"),
    ({"inputs": ["Once"], "params": [1]}, None, "params must be an object, got a list: [1]"),
    (["Once"], None, "the body must be a JSON object with inputs (a list of prompts) and optional params, got a list"),
    ({"dataframe_split": {"columns": ["prompt"], "data": ["Once"]}}, None,
     'every row of dataframe_split\'s data must hold one prompt, e.g. ["Once"]'),
    ("not json", None, "the body is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
    (DEEP, None, "the body nests JSON too deeply"),
    ({"inputs": ["Once"]}, {}, "Content-Type must be application/json (UTF-8), got none"),
    ({"inputs": ["Once"]}, {"Content-Type": "text/csv"}, "Content-Type must be application/json (UTF-8), got 'text/csv'"),
    ({"inputs": ["Once"]}, {"Content-Type": "application/json; charset=latin-1"},
     "Content-Type must be application/json (UTF-8), got 'application/json; charset=latin-1'"),
    (b'{"inputs": ["Once' + b"x" * 10_000_000 + b'"]}', None,
     "the body has 10000020 bytes, over the limit of 100000 (GPT_PIPELINE_SERVE_MAX_BODY_BYTES)"),
])
def test_every_malformed_or_oversized_request_is_our_400(served, payload, headers, message):
    """Our one line for each (the value named, never echoed whole), before MLflow parses the body;
    the server answers /ping after each."""
    port = served[0]
    status, body = _post(port, payload, headers)
    assert status == 400, body
    assert len(body) < 400 and "\n" not in body.strip() and "Traceback" not in body
    assert json.loads(body)["message"] == message
    assert _ping(port)


LONG = {"inputs": ["Once"], "params": {"token_count": 5_000_000}}  # minutes of work, unbounded before


def _send(port: int, payload) -> socket.socket:
    """A socket that has sent a whole POST to ``/invocations`` and reads nothing yet."""
    body = json.dumps(payload).encode()
    client = socket.create_connection(("127.0.0.1", port), timeout=30)
    client.sendall(b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return client


def _scoring_process(server) -> psutil.Process:
    """The uvicorn process that ``mlflow models serve`` started (it runs the model)."""
    found = [p for p in psutil.Process(server.pid).children(recursive=True) if "uvicorn" in " ".join(p.cmdline())]
    assert len(found) == 1, found
    return found[0]


def _cpu_seconds(process: psutil.Process, seconds: float) -> float:
    """CPU time ``process`` uses over the next ``seconds``."""
    before = sum(process.cpu_times()[:2])
    time.sleep(seconds)
    return sum(process.cpu_times()[:2]) - before


def _timed(port: int, payload) -> float:
    start = time.monotonic()
    _predictions(port, payload)
    return time.monotonic() - start


def test_an_abandoned_request_stops_using_cpu_within_2_s(served):
    port, server = served[0], served[4]
    process = _scoring_process(server)
    client = _send(port, LONG)
    assert _cpu_seconds(process, 1.0) > 0.1  # generating
    client.close()  # the client gives up
    time.sleep(2.0)
    assert _cpu_seconds(process, 1.0) < 0.1  # idle again (it went on for minutes before)
    assert _ping(port)


def test_six_abandoned_requests_do_not_delay_a_small_one(served):
    port = served[0]
    small = {"inputs": ["Once"], "params": {"token_count": 8}}
    alone = min(_timed(port, small) for _ in range(3))
    clients = [_send(port, LONG) for _ in range(6)]  # as many as the server's threads on 2 cores
    time.sleep(0.5)
    for client in clients:
        client.close()
    assert _timed(port, small) < alone + 1.0


def test_a_request_past_its_time_budget_is_stopped_with_a_504(served):
    port = served[0]
    start = time.monotonic()
    status, body = _post(port, LONG)
    took = time.monotonic() - start
    assert status == 504 and json.loads(body) == {
        "error_code": "DEADLINE_EXCEEDED",
        "message": "the request ran past its time budget of 6 s (GPT_PIPELINE_SERVE_SECONDS)"}
    assert 6 <= took < 9


def test_sigterm_with_a_long_request_in_flight_stops_the_server_within_5_s(registry):
    directory, tracking_uri = registry[:2]
    with model_server(directory, tracking_uri, "sigterm") as (server, port, log, token):
        process = _scoring_process(server)
        client = _send(port, LONG)
        assert _cpu_seconds(process, 1.0) > 0.1  # generating
        start = time.monotonic()
        server.send_signal(signal.SIGTERM)  # `mlflow models serve`; it passes SIGTERM to uvicorn
        left = _wait_all_exited(token, timeout=5.0)
        assert not left, f"still running {time.monotonic() - start:.1f} s after SIGTERM: {left}\n{_tail(log)}"
        answer = client.recv(4096).decode()  # the request in flight got its answer
        assert answer.startswith("HTTP/1.1 503") and "the server is shutting down" in answer, answer
        client.close()


def test_the_server_ran_the_model_from_the_registry(served):
    log = served[3].read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert "POST /invocations HTTP/1.1\" 400" in log and "POST /invocations HTTP/1.1\" 200" in log
