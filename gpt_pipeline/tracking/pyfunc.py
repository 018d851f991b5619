"""The trained model as an MLflow ``pyfunc`` model: prompts in, generations out.

``log_pyfunc_model`` turns a checkpoint and a tokenizer file into an MLflow *logged model* (MLflow
3's model entity, linked to the training run as its output), so that

    mlflow.pyfunc.load_model(uri).predict(["Once upon"], params={"token_count": 50})

returns one generation (prompt + continuation) per prompt. The input is one string column (a
DataFrame's ``prompt`` column, or a list of strings); the params ``token_count``, ``temperature``,
``seed`` and ``unknown`` are in the model's signature (see ``SIGNATURE``). The model's files are:

- ``artifacts/model.safetensors``: the weights only (the training checkpoint's optimizer and
  random-generator state are dropped), written by ``gpt_pipeline.training.checkpoint``;
- ``artifacts/bpe_tokenizer.json``: our tokenizer file (the main file of a tokenizer bundle,
  ``gpt_pipeline.tokenizer.bundle``, which writes and reads it);
- ``gpt_text_generator.py``: three lines naming :class:`GPTTextGenerator` (MLflow's "models from
  code"), so nothing is pickled: loading reads two data files and imports this module.

Loading needs ``gpt_pipeline`` importable (the project installed): the model's code is this
module, not a copy. What this module does not do: register versions or move aliases
(``tracking_registry``), or serve the model.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.models import Model
from mlflow.models.signature import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from gpt_pipeline.training.checkpoint import (
    CONFIG_KEY,
    FORMAT_KEY,
    TRAINING_STATE_KEY,
    load_checkpoint,
    save_checkpoint,
)
from gpt_pipeline.model.sampling import GenerationConfig, generate_samples
from gpt_pipeline.storage import atomic_write_text
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline.tokenizer.bundle import TOKENIZER, read_bundle, write_bundle

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
            ParamSpec("seed", "long", _DEFAULTS.seed),  # prompt i samples with seed + i
            ParamSpec("unknown", "string", _DEFAULTS.unknown),  # unseen prompt characters: error|skip
        ]
    ),
)
# The model's code (MLflow "models from code"): loading runs this file, which names our class.
_MODEL_CODE = """\
from mlflow.models import set_model

from gpt_pipeline.tracking.pyfunc import GPTTextGenerator

set_model(GPTTextGenerator())
"""


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
    for value in values:
        if not isinstance(value, str) or not value:
            raise ValueError(f"every prompt must be a non-empty string, got {value!r}")
    if not values:
        raise ValueError("input holds no prompts")
    return values


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

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        """One generation (prompt + ``token_count`` new tokens) per prompt."""
        params = {**{spec.name: spec.default for spec in SIGNATURE.params.params}, **(params or {})}
        config = GenerationConfig(
            prompts=tuple(prompts_of(model_input)),
            token_count=int(params["token_count"]),
            temperature=float(params["temperature"]),
            seed=int(params["seed"]),
            unknown=str(params["unknown"]),
        )
        return generate_samples(self.model, self.tokenizer, config)["text"].to_list()


def pip_requirements() -> list[str]:
    """What loading the model needs, pinned to this environment (the project itself included)."""
    from importlib.metadata import PackageNotFoundError, version

    names = ["mlflow", "torch", "safetensors", "numpy", "pandas", "polars", "gpt_pipeline"]
    pinned = []
    for name in names:
        try:
            pinned.append(f"{name}=={version(name).split('+')[0]}")  # torch 2.13.0+cpu -> 2.13.0
        except PackageNotFoundError:
            pinned.append(name)
    return pinned


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
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=str(code),
            artifacts={CHECKPOINT_ARTIFACT: str(weights), TOKENIZER_ARTIFACT: str(tokenizer_file)},
            signature=SIGNATURE,
            input_example=pd.DataFrame({PROMPT_COLUMN: [_example_prompt(tokenizer)]}),
            pip_requirements=pip_requirements(),
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
