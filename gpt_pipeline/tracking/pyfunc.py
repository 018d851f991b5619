"""The trained model as an MLflow ``pyfunc`` model: prompts in, generations out.

``log_pyfunc_model`` turns a checkpoint and a tokenizer file into an MLflow *logged model* (MLflow
3's model entity, linked to the training run as its output), so that

    mlflow.pyfunc.load_model(uri).predict(["Once upon"], params={"token_count": 50})

returns one generation (prompt + continuation) per prompt, and ``mlflow models serve -m <uri>``
answers the same over REST (docs/serving.md). The input is one string column (a DataFrame's
``prompt`` column, or a list of strings); every parameter the model honours is in its signature
(``SIGNATURE``): ``token_count``, ``temperature``, ``top_k``, ``seed`` and ``unknown``.

Bad requests raise :class:`InvalidRequest` (an ``MlflowException`` with
``INVALID_PARAMETER_VALUE``, which MLflow's scoring server answers with HTTP 400) whose body is
the one line naming the problem: an empty prompt, a character the tokenizer never saw, a token
count that is not a positive integer or over the limit, a parameter the signature does not name.
Under ``mlflow models serve`` the model puts ``tracking.serving``'s guard in front of MLflow's
app: it checks every body first (so a wrong type gets our words, not MLflow's), and generation
stops between tokens when the client is gone, the time budget is spent or the server stops.
The limits (``serving_limits.Limits``) are read from ``GPT_PIPELINE_SERVE_*`` when the model loads.

The model's files are:

- ``artifacts/model.safetensors``: the weights only (the training checkpoint's optimizer and
  random-generator state are dropped), written by ``gpt_pipeline.training.checkpoint``;
- ``artifacts/bpe_tokenizer.json``: our tokenizer file (the main file of a tokenizer bundle,
  ``gpt_pipeline.tokenizer.bundle``, which writes and reads it);
- ``gpt_text_generator.py``: three lines naming :class:`GPTTextGenerator` (MLflow's "models from
  code"), so nothing is pickled: loading reads two data files and imports this module;
- ``code/gpt_pipeline/``: the ``gpt_pipeline`` package that logged the model (MLflow's
  ``code_paths``, put first on ``sys.path`` when the model loads), so the model runs without the
  project installed and its environment (``requirements.txt``) names only packages an index has:
  mlflow, torch (pinned to the running build; a CPU build adds PyTorch's CPU index, so that
  no CUDA build is pulled), safetensors, numpy, pandas, polars.

What this module does not do: register versions or move aliases (``tracking.registry``), or
start a server (``make serve``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.models.signature import ModelSignature
from mlflow.protos import databricks_pb2
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

import gpt_pipeline
from gpt_pipeline.model.sampling import generate_text
from gpt_pipeline.model.generations import GenerationConfig
from gpt_pipeline.storage import atomic_write_text
from gpt_pipeline.tokenizer import UNKNOWN_MODES, BPETokenizer
from gpt_pipeline.training.checkpoint import (
    CONFIG_KEY,
    FORMAT_KEY,
    TRAINING_STATE_KEY,
    load_checkpoint,
    save_checkpoint,
)
from gpt_pipeline.tokenizer.bundle import TOKENIZER, read_bundle, write_bundle
from gpt_pipeline.tracking.serving import RequestStopped, attach_to_scoring_server, current_request
from gpt_pipeline.tracking.serving_limits import ENV_PREFIX, Limits, RequestRefused, check_prompts, prompts_in_body

MODEL_NAME = "model"  # name of the logged model inside its run
PROMPT_COLUMN = "prompt"  # the input column of a DataFrame input
CHECKPOINT_ARTIFACT = "checkpoint"  # keys of the pyfunc artifacts
TOKENIZER_ARTIFACT = "tokenizer"
_DEFAULTS = GenerationConfig()
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string")]),
    outputs=Schema([ColSpec("string")]),
    params=ParamSchema(
        [
            ParamSpec("token_count", "long", 64),  # new tokens per generation
            ParamSpec("temperature", "double", _DEFAULTS.temperature),
            ParamSpec("top_k", "long", _DEFAULTS.top_k),  # sample among the k likeliest; None: all
            ParamSpec("seed", "long", _DEFAULTS.seed),  # prompt i samples with seed + i
            ParamSpec("unknown", "string", _DEFAULTS.unknown),  # unseen prompt characters: error|skip
        ]
    ),
)
PARAM_NAMES = frozenset(spec.name for spec in SIGNATURE.params.params)
# The model's code (MLflow "models from code"): loading runs this file, which names our class.
_MODEL_CODE = """\
from mlflow.models import set_model

from gpt_pipeline.tracking.pyfunc import GPTTextGenerator

set_model(GPTTextGenerator())
"""


class InvalidRequest(MlflowException, ValueError):
    """A request the model refuses: HTTP 400 from ``mlflow models serve``, whose JSON body
    (``{"error_code": "INVALID_PARAMETER_VALUE", "message": ...}``) holds this message alone.

    MLflow's scoring server prefixes the message of any ``MlflowException`` with the whole input
    DataFrame; the body keeps the message the model raised.
    """

    def __init__(self, message: str, error_code: str = "INVALID_PARAMETER_VALUE"):
        super().__init__(message, error_code=getattr(databricks_pb2, error_code))
        self.reason = message

    def serialize_as_json(self) -> str:
        return json.dumps({"error_code": self.error_code, "message": self.reason})


# MLflow's warning for params outside the signature (mlflow.models.utils._enforce_params_schema):
# "Unrecognized params ['x'] are ignored for inference. Supported params are: {'seed', ...}."
_UNRECOGNIZED = re.compile(r"^Unrecognized params \[(?P<names>.*?)\] are ignored.*Supported params are: "
                           r"\{(?P<known>.*?)\}", re.DOTALL)


class _UnknownParamsFilter(logging.Filter):
    """Raises :class:`InvalidRequest` on MLflow's "Unrecognized params" warning for a model whose
    parameters are ours, in the thread that is about to predict (other models' warnings pass)."""

    def filter(self, record: logging.LogRecord) -> bool:
        match = _UNRECOGNIZED.match(record.getMessage())
        if match and set(re.findall(r"'([^']*)'", match["known"])) == set(PARAM_NAMES):
            names = ", ".join(sorted(re.findall(r"'([^']*)'", match["names"])))
            raise InvalidRequest(f"unknown parameter(s) {names}: the model takes "
                                 f"{', '.join(sorted(PARAM_NAMES))}")
        return True


def _reject_unknown_params() -> None:
    """Install :class:`_UnknownParamsFilter` on MLflow's schema logger (once per process)."""
    logger = logging.getLogger("mlflow.models.utils")
    if not any(isinstance(f, _UnknownParamsFilter) for f in logger.filters):
        logger.addFilter(_UnknownParamsFilter())


def prompts_of(model_input: Any) -> list[str]:
    """The prompts in a pyfunc input: a DataFrame's ``prompt`` column (or its only column), a
    Series, a list of strings or one string.

    Example:
        >>> prompts_of(pd.DataFrame({"prompt": ["Once", "The dog"]})), prompts_of("Once")
        (['Once', 'The dog'], ['Once'])
    """
    if isinstance(model_input, pd.DataFrame):
        if PROMPT_COLUMN in model_input.columns:
            values = model_input[PROMPT_COLUMN].tolist()
        elif len(model_input.columns) == 1:
            values = model_input.iloc[:, 0].tolist()
        else:
            raise ValueError(f"input has no {PROMPT_COLUMN!r} column: columns {list(model_input.columns)}")
    elif isinstance(model_input, pd.Series):
        values = model_input.tolist()
    elif isinstance(model_input, str):
        values = [model_input]
    elif isinstance(model_input, Sequence):
        values = list(model_input)
    else:
        raise ValueError(f"input must be a DataFrame with a {PROMPT_COLUMN!r} column or a list of "
                         f"strings, got {type(model_input).__name__}")
    for index, value in enumerate(values):
        if not isinstance(value, str) or not value:
            raise ValueError(f"every prompt must be a non-empty string, got {value!r} (prompt {index})")
    if not values:
        raise ValueError("input holds no prompts")
    return values


def _integer(name: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        wanted = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise InvalidRequest(f"{name} must be {wanted}, got {value!r}")
    return int(value)


def generation_settings(params: dict[str, Any] | None, max_tokens: int | None = None) -> dict[str, Any]:
    """The sampling settings of a request: the signature's defaults overridden by ``params``;
    raises :class:`InvalidRequest` for a name outside the signature, a bad value or a token count
    over ``max_tokens`` (the server's limit, ``serving.Limits``).

    Example:
        >>> generation_settings({"top_k": 5})["top_k"], generation_settings(None)["token_count"]
        (5, 64)
    """
    given = dict(params or {})
    if unknown := sorted(set(given) - PARAM_NAMES):
        raise InvalidRequest(f"unknown parameter(s) {', '.join(unknown)}: the model takes "
                             f"{', '.join(sorted(PARAM_NAMES))}")
    settings = {spec.name: spec.default for spec in SIGNATURE.params.params}
    settings.update({k: v for k, v in given.items() if v is not None or k == "top_k"})
    temperature = settings["temperature"]
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
        temperature > 0 and temperature != float("inf")
    ):
        raise InvalidRequest(f"temperature must be a finite number > 0, got {temperature!r}")
    if settings["unknown"] not in UNKNOWN_MODES:
        raise InvalidRequest(f"unknown must be one of {', '.join(UNKNOWN_MODES)}, got {settings['unknown']!r}")
    token_count = _integer("token_count", settings["token_count"], 1)
    if max_tokens is not None and token_count > max_tokens:
        raise InvalidRequest(f"token_count {token_count} is over the limit of {max_tokens} new tokens per "
                             f"prompt ({ENV_PREFIX}MAX_TOKENS)")
    return {
        "token_count": token_count,
        "temperature": float(temperature),
        "top_k": None if settings["top_k"] is None else _integer("top_k", settings["top_k"], 1),
        "seed": _integer("seed", settings["seed"]),
        "unknown": settings["unknown"],
    }


class GPTTextGenerator(PythonModel):
    """Continues prompts with the checkpoint and tokenizer in the model's artifacts."""

    def load_context(self, context) -> None:
        self.model, _ = load_checkpoint(context.artifacts[CHECKPOINT_ARTIFACT])
        self.tokenizer = read_bundle(context.artifacts[TOKENIZER_ARTIFACT])
        if self.model.config.vocab_size != self.tokenizer.vocab_size:
            raise ValueError(
                f"checkpoint vocab_size {self.model.config.vocab_size} does not match the "
                f"tokenizer's {self.tokenizer.vocab_size} tokens"
            )
        self.model.eval()
        _reject_unknown_params()
        self.limits = Limits.from_environment()
        # under `mlflow models serve`: bodies checked before MLflow parses them, work stopped when
        # nobody waits (tracking.serving)
        self.served = attach_to_scoring_server(self.check_body, self.limits)

    def check_body(self, body: Any) -> None:
        """Refuse a parsed JSON request body before any work (``serving.RequestGuard``)."""
        prompts, params = prompts_in_body(body, self.limits)
        try:
            self.settings_and_prompts(prompts, params)
        except InvalidRequest as error:
            raise RequestRefused(error.reason) from None

    def settings_and_prompts(self, model_input: Any, params: dict[str, Any] | None) -> tuple[dict, list[str]]:
        try:
            settings = generation_settings(params, self.limits.max_tokens)
            prompts = check_prompts(prompts_of(model_input), self.limits)
            for index, prompt in enumerate(prompts):  # every prompt checked before any sampling
                if not self.tokenizer.encode(prompt, unknown=settings["unknown"]):
                    raise ValueError(f"prompt {index} ({prompt!r}) encodes to no tokens")
        except InvalidRequest:
            raise
        except ValueError as error:
            raise InvalidRequest(str(error)) from None
        return settings, prompts

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        """One generation (prompt + ``token_count`` new tokens) per prompt; prompt i is sampled
        with ``seed + i``, as ``generate_samples`` does. Served, the request's state is checked
        between tokens (``serving.RequestState``: client gone, time budget spent, server stopping)."""
        settings, prompts = self.settings_and_prompts(model_input, params)
        request = current_request()
        if self.served and request is None:  # fail closed: the guard did not get into the server
            raise MlflowException("the server's request guard is missing", error_code=INTERNAL_ERROR)
        seed = settings.pop("seed")
        try:
            return [generate_text(self.model, self.tokenizer, prompt, seed=seed + index,
                                  between_tokens=request and request.check, **settings)[0]
                    for index, prompt in enumerate(prompts)]
        except RequestStopped as stopped:
            raise InvalidRequest(str(stopped), stopped.code) from None


def pip_requirements() -> list[str]:
    """What loading the model needs, pinned to this environment. ``gpt_pipeline`` itself travels
    with the model (``code/``). torch is pinned to the running build, local label included: a
    ``2.13.0+cpu`` build adds PyTorch's CPU index (``+cu126``: its CUDA 12.6 index), where that
    build lives, so that building the environment pulls this build and no other (a bare
    ``torch==2.13.0`` from PyPI is the multi-GB CUDA build on Linux).

    Example:
        >>> any(r.startswith("torch==") for r in pip_requirements())
        True
    """
    from importlib.metadata import PackageNotFoundError, version

    pinned = []
    for name in ["mlflow", "torch", "safetensors", "numpy", "pandas", "polars"]:
        try:
            found = version(name)
        except PackageNotFoundError:
            pinned.append(name)
            continue
        if name == "torch" and "+" in found:
            pinned.insert(0, f"--extra-index-url {TORCH_INDEX}/{found.split('+', 1)[1]}")
        pinned.append(f"{name}=={found}")
    return pinned


TORCH_INDEX = "https://download.pytorch.org/whl"  # + /cpu, /cu126, ...: PyTorch's own indexes


def _package_copy(directory: Path) -> Path:
    """A clean copy of the ``gpt_pipeline`` package (no caches, no compiled kernels) under
    ``directory``, for ``code_paths``."""
    source = Path(gpt_pipeline.__file__).resolve().parent
    target = directory / "gpt_pipeline"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.o"))
    return target


def _example_prompt(tokenizer: BPETokenizer) -> str:
    """``Once`` when the tokenizer knows its characters, else its first character."""
    return "Once" if set("Once") <= set(tokenizer.alphabet) else tokenizer.alphabet[0]


def save_pyfunc_model(
    path: str | os.PathLike,
    checkpoint_path: str | os.PathLike,
    tokenizer_path: str | os.PathLike,
    mlflow_model: Model | None = None,
) -> Path:
    """Write the pyfunc model directory ``path`` (which must not exist) from a checkpoint (a
    training checkpoint is fine: only the weights are kept) and a tokenizer bundle (its folder or
    its ``bpe_tokenizer.json``)."""
    path = Path(path)
    model, metadata = load_checkpoint(checkpoint_path)
    tokenizer = read_bundle(tokenizer_path)
    if model.config.vocab_size != tokenizer.vocab_size:
        raise ValueError(
            f"checkpoint {os.fspath(checkpoint_path)!r} has vocab_size {model.config.vocab_size} but "
            f"tokenizer {os.fspath(tokenizer_path)!r} has {tokenizer.vocab_size} tokens"
        )
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        kept = {k: v for k, v in metadata.items() if k not in (CONFIG_KEY, FORMAT_KEY, TRAINING_STATE_KEY)}
        weights = save_checkpoint(staging / "model.safetensors", model, kept)
        tokenizer_file = write_bundle(tokenizer, staging / "tokenizer")[TOKENIZER]
        code = atomic_write_text(staging / "gpt_text_generator.py", _MODEL_CODE)
        package = _package_copy(staging / "code")
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=str(code),
            artifacts={CHECKPOINT_ARTIFACT: str(weights), TOKENIZER_ARTIFACT: str(tokenizer_file)},
            signature=SIGNATURE,
            input_example=pd.DataFrame({PROMPT_COLUMN: [_example_prompt(tokenizer)]}),
            pip_requirements=pip_requirements(),
            code_paths=[str(package)],
            mlflow_model=mlflow_model,
        )
    return path


def log_pyfunc_model(
    run,
    checkpoint_path: str | os.PathLike,
    tokenizer_path: str | os.PathLike,
    name: str = MODEL_NAME,
    step: int = 0,
) -> str:
    """Log the pyfunc model as a logged model of ``run`` (anything with ``client`` and ``run_id``,
    such as ``tracking.TrackedRun``); return its URI ``models:/<model id>``.

    Uses only ``run.client`` (no global MLflow state): the model goes to the run's experiment
    and is recorded as the run's output at ``step``. A failure marks the logged model FAILED.
    """
    client = run.client
    experiment_id = getattr(run, "experiment_id", None) or client.get_run(run.run_id).info.experiment_id
    logged = client.create_logged_model(experiment_id, name=name, source_run_id=run.run_id)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            mlflow_model = Model(
                artifact_path=logged.artifact_location,
                model_uuid=logged.model_id,
                run_id=run.run_id,
                model_id=logged.model_id,
            )
            local = save_pyfunc_model(Path(tmp) / "model", checkpoint_path, tokenizer_path, mlflow_model)
            client.log_model_artifacts(logged.model_id, str(local))
        client.log_outputs(run.run_id, [LoggedModelOutput(logged.model_id, step=step)])
    except BaseException:
        with contextlib.suppress(Exception):  # keep the original error, not a second one
            client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return f"models:/{logged.model_id}"
