"""Read and write gpt-rs's safetensors checkpoints (tch VarStore names, one linear layer per head).

gpt-rs stores every attention head's query, key and value as separate linear layers
(``transformer.blocks.{i}.multi_attention_head.heads.{h}.{query,key,value}.{weight,bias}``, weights
``[head_size, embedding_size]``). Our model fuses them into one ``qkv`` layer whose output rows are
``[q_0 .. q_{H-1}, k_0 .. k_{H-1}, v_0 .. v_{H-1}]``, so importing is a concatenation and exporting
a split; every other tensor maps one to one. gpt-rs's files carry no config (it lives in
``transformer_config.ron``), so the caller passes the ``GPTConfig``.

Not here: our own checkpoint format (``gpt_pipeline.training.checkpoint``) or reading gpt-rs's ``.ron`` files.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from gpt_pipeline.training.checkpoint import read_checkpoint
from gpt_pipeline.model.gpt import GPT, GPTConfig

PREFIX = "transformer."


def _renames(config: GPTConfig) -> dict[str, str]:
    """Our parameter name -> gpt-rs's, for everything but the fused q/k/v layers.

    Example:
        >>> _renames(GPTConfig(block_count=1))["blocks.0.feed_forward.input.weight"]
        'transformer.blocks.0.feed_forward.input.weight'
    """
    names = {
        "token_embedding.weight": "token_embedding.weight",
        "position_embedding.weight": "position_embedding.weight",
        "layer_norm.weight": "layer_norm.weight",
        "layer_norm.bias": "layer_norm.bias",
        "linear_head.weight": "linear_head.weight",
    }
    for i in range(config.block_count):
        for kind in ("weight", "bias"):
            names[f"blocks.{i}.layer_norm_1.{kind}"] = f"blocks.{i}.layer_norm_1.{kind}"
            names[f"blocks.{i}.layer_norm_2.{kind}"] = f"blocks.{i}.layer_norm_2.{kind}"
            names[f"blocks.{i}.attention.projection.{kind}"] = (
                f"blocks.{i}.multi_attention_head.projection.{kind}"
            )
            for layer in ("input", "output"):
                names[f"blocks.{i}.feed_forward.{layer}.{kind}"] = f"blocks.{i}.feed_forward.{layer}.{kind}"
    return {ours: PREFIX + theirs for ours, theirs in names.items()}


def _head_name(block: int, head: int, part: str, kind: str) -> str:
    return f"{PREFIX}blocks.{block}.multi_attention_head.heads.{head}.{part}.{kind}"


def expected_names(config: GPTConfig) -> set[str]:
    """Every tensor name a gpt-rs checkpoint of ``config`` holds."""
    names = set(_renames(config).values())
    for i in range(config.block_count):
        for h in range(config.head_count):
            for part in ("query", "key", "value"):
                names |= {_head_name(i, h, part, "weight"), _head_name(i, h, part, "bias")}
    return names


def load_checkpoint(path: str | os.PathLike, config: GPTConfig) -> GPT:
    """A ``GPT`` (CPU, eval mode) holding the weights of gpt-rs checkpoint ``path``.

    Raises ``ValueError`` when the file is not safetensors, or its names or shapes do not match
    ``config``.
    """
    path = Path(path)
    tensors, _ = read_checkpoint(path)
    missing = sorted(expected_names(config) - set(tensors))
    unexpected = sorted(set(tensors) - expected_names(config))
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match a gpt-rs model of this config: missing {missing[:4]} "
            f"({len(missing)}), unexpected {unexpected[:4]} ({len(unexpected)})"
        )
    state = {ours: tensors[theirs] for ours, theirs in _renames(config).items()}
    for i in range(config.block_count):
        for kind in ("weight", "bias"):
            parts = [
                tensors[_head_name(i, h, part, kind)]  # [hs, C] or [hs]
                for part in ("query", "key", "value")
                for h in range(config.head_count)
            ]
            state[f"blocks.{i}.attention.qkv.{kind}"] = torch.cat(parts, dim=0)  # [3C, C] or [3C]
    model = GPT(config)
    expected = model.state_dict()
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(
                f"{path}: {name} has shape {tuple(tensor.shape)}, config expects {tuple(expected[name].shape)}"
            )
    model.load_state_dict({name: tensor.float() for name, tensor in state.items()})
    return model.eval()
