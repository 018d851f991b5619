"""Model and training checkpoints as single safetensors files.

A checkpoint is one safetensors file (written atomically, so a reader never sees half of one):

- the model's ``state_dict`` tensors under their PyTorch names (``blocks.0.attention.qkv.weight``);
- metadata ``gpt_config``: the ``GPTConfig`` as JSON, and ``format``: ``gpt_pipeline/1``;
- ``gpt_pipeline.provenance``: what the model was made from, when the model carries it
  (``gpt_pipeline.provenance``); ``load_checkpoint`` sets it back on the model;
- any caller metadata (string to string).

A *training* checkpoint adds what resuming needs: the AdamW state of every parameter
(``optimizer.<parameter name>.<exp_avg|exp_avg_sq|step>``), random-generator states
(``rng.<name>``, uint8) and a JSON ``training_state`` metadata entry (step, configs, losses so far).
Model loaders ignore those extra tensors, so every training checkpoint is also a model file.

``fingerprint`` names a configuration's checkpoint folder: a short stable hash of what keys it.

This module never unpickles anything. It does not read gpt-rs's files (``interop/gpt_rs.py`` does).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from gpt_pipeline.model.gpt import GPT, GPTConfig
from gpt_pipeline.storage import atomic_write

logger = logging.getLogger(__name__)

FORMAT = "gpt_pipeline/1"
FINAL_CHECKPOINT = "final.safetensors"  # a training run's last checkpoint; the others: <step>.safetensors
_STEP_CHECKPOINT = re.compile(r"^(\d+)\.safetensors$")
CONFIG_KEY = "gpt_config"
FORMAT_KEY = "format"
TRAINING_STATE_KEY = "training_state"
PROVENANCE_KEY = "gpt_pipeline.provenance"  # a model's ``provenance`` attribute (gpt_pipeline.provenance)
OPTIMIZER_PREFIX = "optimizer."
RNG_PREFIX = "rng."


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (dataclasses included), for naming checkpoint folders.

    Example:
        >>> fingerprint({"a": 1}) == fingerprint({"a": 1}), fingerprint({"a": 1}) == fingerprint({"a": 2})
        (True, False)
    """

    def plain(value: Any) -> Any:
        if hasattr(value, "__dataclass_fields__"):
            return asdict(value)
        return value

    payload = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _write(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    needed = sum(t.numel() * t.element_size() for t in tensors.values())  # for a full disk's message
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), needed=needed)


def _model_metadata(model: GPT, metadata: dict[str, str] | None) -> dict[str, str]:
    metadata = dict(metadata or {})
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"checkpoint metadata must map str to str, got {key!r}: {value!r}")
    reserved = sorted({CONFIG_KEY, FORMAT_KEY} & set(metadata))
    if reserved:
        raise ValueError(f"checkpoint metadata keys {reserved} are reserved")
    metadata[CONFIG_KEY] = model.config.to_json()
    metadata[FORMAT_KEY] = FORMAT
    if getattr(model, "provenance", None) and PROVENANCE_KEY not in metadata:
        metadata[PROVENANCE_KEY] = json.dumps(model.provenance, sort_keys=True)
    return metadata


def save_checkpoint(path: str | os.PathLike, model: GPT, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model`` (weights + config) to the safetensors file ``path``, atomically."""
    return _write(path, model.state_dict(), _model_metadata(model, metadata))


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and metadata of a safetensors file; ``ValueError`` if it is not a valid one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise ValueError(f"{path} is not a readable safetensors file (truncated?): {error}") from None
    return tensors, metadata


def _config_from_metadata(path: Path, metadata: dict[str, str]) -> GPTConfig:
    if CONFIG_KEY not in metadata:
        raise ValueError(
            f"{path} has no '{CONFIG_KEY}' metadata: not a gpt_pipeline checkpoint "
            "(for a gpt-rs file use gpt_pipeline.interop.gpt_rs.load_checkpoint)"
        )
    try:
        return GPTConfig.from_json(metadata[CONFIG_KEY])
    except ValueError as error:
        raise ValueError(f"{path} has an invalid '{CONFIG_KEY}' metadata entry: {error}") from None


def add_checkpoint_metadata(path: str | os.PathLike, entries: dict[str, str]) -> Path:
    """Rewrite checkpoint ``path`` (atomically) with ``entries`` added to its metadata."""
    tensors, metadata = read_checkpoint(path)
    return _write(path, tensors, {**metadata, **entries})


def read_checkpoint_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a safetensors file, reading only its header."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise ValueError(f"{path} is not a readable safetensors file (truncated?): {error}") from None


def model_from_tensors(path: Path, config: GPTConfig, tensors: dict[str, torch.Tensor]) -> GPT:
    """A ``GPT`` holding ``tensors`` (extra ``optimizer.``/``rng.`` entries are ignored)."""
    model = GPT(config)
    expected = model.state_dict()
    weights = {k: v for k, v in tensors.items() if not k.startswith((OPTIMIZER_PREFIX, RNG_PREFIX))}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(
                f"{path}: tensor {name} has shape {tuple(tensor.shape)}, the config expects "
                f"{tuple(expected[name].shape)}"
            )
    model.load_state_dict(weights, strict=True)
    return model


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[GPT, dict[str, str]]:
    """The model in checkpoint ``path`` (on ``device``, in eval mode) and the file's metadata."""
    path = Path(path)
    tensors, metadata = read_checkpoint(path)
    model = model_from_tensors(path, _config_from_metadata(path, metadata), tensors)
    if PROVENANCE_KEY in metadata:
        model.provenance = json.loads(metadata[PROVENANCE_KEY])
    return model.to(device).eval(), metadata


# --- training checkpoints -----------------------------------------------------------------------


def _parameter_names(model: GPT, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's parameters in its own index order (``state_dict`` numbering)."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def save_training_checkpoint(
    path: str | os.PathLike,
    model: GPT,
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
    training_state: dict,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Model + AdamW state + generator states + ``training_state`` (JSON-able) in one file."""
    tensors = dict(model.state_dict())
    state = optimizer.state_dict()["state"]
    for index, name in enumerate(_parameter_names(model, optimizer)):
        for key, value in state.get(index, {}).items():
            tensors[f"{OPTIMIZER_PREFIX}{name}.{key}"] = torch.as_tensor(value)
    for name, generator in generators.items():
        tensors[f"{RNG_PREFIX}{name}"] = generator.get_state()
    metadata = _model_metadata(model, metadata)
    metadata[TRAINING_STATE_KEY] = json.dumps(training_state, sort_keys=True)
    return _write(path, tensors, metadata)


def training_state_of(path: Path, metadata: dict[str, str]) -> dict:
    """The ``training_state`` JSON of a training checkpoint; ``ValueError`` when absent or bad."""
    if TRAINING_STATE_KEY not in metadata:
        raise ValueError(f"{path} is a model checkpoint without training state: cannot resume from it")
    try:
        state = json.loads(metadata[TRAINING_STATE_KEY])
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} has invalid training_state metadata: {error}") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ValueError(f"{path} has training_state metadata without an integer 'step'")
    return state


def load_training_checkpoint(
    path: str | os.PathLike,
    model: GPT,
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
) -> dict:
    """Restore ``model``, ``optimizer`` and ``generators`` in place from ``path``; return its
    ``training_state``. Raises ``ValueError`` (leaving the objects untouched) on any mismatch."""
    path = Path(path)
    tensors, metadata = read_checkpoint(path)
    config = _config_from_metadata(path, metadata)
    if config != model.config:
        raise ValueError(f"{path} holds a model with config {config}, expected {model.config}")
    state = training_state_of(path, metadata)
    loaded = model_from_tensors(path, config, tensors)
    optimizer_state: dict[int, dict[str, torch.Tensor]] = {}
    for index, name in enumerate(_parameter_names(model, optimizer)):
        entries = {
            key: tensors[f"{OPTIMIZER_PREFIX}{name}.{key}"]
            for key in ("step", "exp_avg", "exp_avg_sq")
            if f"{OPTIMIZER_PREFIX}{name}.{key}" in tensors
        }
        if entries and len(entries) != 3:
            raise ValueError(f"{path}: incomplete optimizer state for parameter {name}")
        if entries:
            optimizer_state[index] = entries
    missing_rng = sorted(f"{RNG_PREFIX}{n}" for n in generators if f"{RNG_PREFIX}{n}" not in tensors)
    if missing_rng:
        raise ValueError(f"{path} lacks random-generator states {missing_rng}")
    model.load_state_dict(loaded.state_dict())
    optimizer.load_state_dict(
        {"state": optimizer_state, "param_groups": optimizer.state_dict()["param_groups"]}
    )
    for name, generator in generators.items():
        generator.set_state(tensors[f"{RNG_PREFIX}{name}"])
    return state


def step_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of the ``<step>.safetensors`` files in ``directory``, latest first."""
    found = []
    for path in Path(directory).glob("*.safetensors"):
        match = _STEP_CHECKPOINT.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def training_checkpoints(directory: str | os.PathLike) -> list[tuple[Path, dict]]:
    """The training checkpoints in ``directory`` (``final.safetensors`` and ``<step>.safetensors``)
    with their ``training_state``, latest step first; unreadable ones are skipped with a warning."""
    directory = Path(directory)
    found = []
    for path in [directory / FINAL_CHECKPOINT] + [path for _, path in step_checkpoints(directory)]:
        if not path.is_file():
            continue
        try:
            found.append((path, training_state_of(path, read_checkpoint_metadata(path))))
        except ValueError as error:
            logger.warning("skipping unusable checkpoint %s: %s", path, error)
    return sorted(found, key=lambda item: item[1]["step"], reverse=True)
