"""Export our model and tokenizer as a Hugging Face ``transformers`` GPT-2 directory.

gpt-rs's transformer is GPT-2's architecture with three differences that GPT-2's config can
state: ReLU instead of GELU (``activation_function: "relu"``), an untied, bias-free output head
(``tie_word_embeddings: false``; GPT-2's ``lm_head`` has no bias either) and LayerNorm eps 1e-5.
So ``export`` writes, into ``out_dir``:

- ``config.json``: a ``GPT2Config`` (``model_type: "gpt2"``, ``n_positions = context_length``,
  ``n_inner = embedding_size * feed_forward_multiplier``, no BOS/EOS ids) with our ``GPTConfig``
  kept under ``gpt_pipeline_config``;
- ``model.safetensors``: our tensors under GPT-2's names. GPT-2's linear layers are ``Conv1D``,
  weights ``[in, out]``, so ours (``[out, in]``) are transposed; our fused ``qkv`` rows
  ``[q_0..q_H-1, k.., v..]`` are exactly GPT-2's ``c_attn`` columns (q, k, v, each split into
  heads in order);
- ``tokenizer.json`` (``BPETokenizer.to_hf_json``) and ``tokenizer_config.json`` naming
  ``PreTrainedTokenizerFast``, so that ``AutoTokenizer`` loads the file as is (GPT-2's own
  tokenizer class would rebuild a byte-level tokenizer) and adds no BOS/EOS;
- ``generation_config.json``: gpt-rs's sampling as ``generate()``'s defaults (``do_sample``,
  temperature 0.7, ``top_k: 0`` so that every token can be drawn, not ``transformers``' 50;
  ``max_length = context_length``), so that ``pipeline("text-generation", model=out_dir)``
  samples as our generator does.

Special tokens: our BPE has none (gpt-rs trains on stories without separators), so none is
declared: no EOS (generation runs for ``max_new_tokens``, as gpt-rs's does), no BOS and no PAD.
Naming an ordinary token instead would corrupt text: ``decode(skip_special_tokens=True)`` would
drop it, and with ``pad_token_id`` set, ``generate()`` called without an attention mask masks
every occurrence of it in the prompt (token 0, which gpt-rs pads its windows with, is the
newline whenever the corpus has one). So the pipeline cannot pad batches of prompts of
different lengths (``batch_size`` > 1); one prompt at a time, or a list of prompts without
``batch_size``, works.

Length: GPT-2 has no position beyond ``n_positions = context_length``, so ``transformers``
cannot continue past the context (prompt + ``max_new_tokens`` > ``context_length`` ends in
``IndexError: index out of range in self`` after a "friendly reminder" warning), while gpt-rs
slides its window. ``generate_sliding`` continues a prompt to any length through a
``transformers`` pipeline with gpt-rs's sliding window (and our generator's draws: the same
text for the same seed); ``check_length`` is the clear error for callers of ``generate()``.

Dropout: with dropout off (``model.eval()``, what inference uses) the logits are ours. In
training mode they differ: GPT-2 has no dropout on the residual path itself (our
``residual_dropout``) and uses one ``resid_pdrop`` after the attention projection and the
feed-forward; it gets our ``feed_forward_dropout``. This module does not import ``transformers``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from gpt_pipeline.model.gpt import GPT, LAYER_NORM_EPS
from gpt_pipeline.storage import atomic_write, atomic_write_text
from gpt_pipeline.tokenizer import BPETokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"


def gpt2_config(model: GPT) -> dict:
    """``config.json`` of the GPT-2 model equal to ``model`` (in eval mode).

    Example:
        >>> from gpt_pipeline.model.gpt import GPTConfig
        >>> c = gpt2_config(GPT(GPTConfig(vocab_size=10, embedding_size=8, context_length=4,
        ...     head_count=2, block_count=1, feed_forward_multiplier=3)))
        >>> c["n_embd"], c["n_inner"], c["n_positions"], c["activation_function"]
        (8, 24, 4, 'relu')
    """
    config = model.config
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.context_length,
        "n_embd": config.embedding_size,
        "n_layer": config.block_count,
        "n_head": config.head_count,
        "n_inner": config.embedding_size * config.feed_forward_multiplier,
        "activation_function": "relu",
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "embd_pdrop": config.embedding_dropout,
        "attn_pdrop": config.attention_dropout,
        "resid_pdrop": config.feed_forward_dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": False,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "use_cache": True,
        "dtype": "float32",
        "gpt_pipeline_config": config.to_dict(),
    }


def gpt2_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under GPT-2's names (``transformer.h.{i}.attn.c_attn.weight``, ...), float32 on
    the CPU, linear weights transposed to ``Conv1D``'s ``[in, out]``."""
    ours = {name: t.detach().to("cpu", torch.float32) for name, t in model.state_dict().items()}

    def conv(name: str) -> torch.Tensor:
        return ours[name].t().contiguous()  # [out, in] -> [in, out]

    tensors = {
        "transformer.wte.weight": ours["token_embedding.weight"].clone(),  # [V, C]
        "transformer.wpe.weight": ours["position_embedding.weight"].clone(),  # [T, C]
        "transformer.ln_f.weight": ours["layer_norm.weight"].clone(),
        "transformer.ln_f.bias": ours["layer_norm.bias"].clone(),
        "lm_head.weight": ours["linear_head.weight"].clone(),  # nn.Linear in GPT-2 too: [V, C]
    }
    for i in range(model.config.block_count):
        ours_prefix, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        pairs = {
            "ln_1": "layer_norm_1", "ln_2": "layer_norm_2", "attn.c_attn": "attention.qkv",
            "attn.c_proj": "attention.projection", "mlp.c_fc": "feed_forward.input",
            "mlp.c_proj": "feed_forward.output",
        }
        for their_name, our_name in pairs.items():
            weight = ours_prefix + our_name + ".weight"
            is_linear = not their_name.startswith("ln_")
            tensors[theirs + their_name + ".weight"] = conv(weight) if is_linear else ours[weight].clone()
            tensors[theirs + their_name + ".bias"] = ours[ours_prefix + our_name + ".bias"].clone()
    return tensors


def tokenizer_config(context_length: int) -> dict:
    """``tokenizer_config.json``: load ``tokenizer.json`` as is, no special tokens, no clean-up."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": context_length,
    }


def generation_config(model: GPT) -> dict:
    """``generation_config.json``: gpt-rs's sampling (softmax at temperature 0.7 over every
    token) as ``generate()``'s defaults, at most ``context_length`` tokens, no special tokens.

    Example:
        >>> from gpt_pipeline.model.gpt import GPTConfig
        >>> c = generation_config(GPT(GPTConfig(vocab_size=10, embedding_size=8, context_length=4,
        ...     head_count=2, block_count=1, feed_forward_multiplier=3)))
        >>> c["do_sample"], c["temperature"], c["top_k"], c["max_length"], c["eos_token_id"]
        (True, 0.7, 0, 4, None)
    """
    return {
        "do_sample": True,
        "temperature": 0.7,
        "top_k": 0,  # 0: no top-k filter (transformers' default is 50)
        "top_p": 1.0,
        "max_length": model.config.context_length,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }


def check_length(context_length: int, prompt_tokens: int, max_new_tokens: int) -> None:
    """Raise ``ValueError`` (one line) when a prompt of ``prompt_tokens`` tokens and
    ``max_new_tokens`` new ones do not fit in the exported model's ``context_length`` positions.

    Example:
        >>> check_length(32, 2, 30)
        >>> check_length(32, 2, 100)
        Traceback (most recent call last):
        ...
        ValueError: prompt (2 tokens) + max_new_tokens (100) = 102 exceeds the context length 32 of the exported model: transformers cannot go past it; use gpt_pipeline.interop.hf.generate_sliding, which slides the window as gpt-rs does
    """
    if prompt_tokens + max_new_tokens > context_length:
        raise ValueError(
            f"prompt ({prompt_tokens} tokens) + max_new_tokens ({max_new_tokens}) = "
            f"{prompt_tokens + max_new_tokens} exceeds the context length {context_length} of the "
            "exported model: transformers cannot go past it; use "
            "gpt_pipeline.interop.hf.generate_sliding, which slides the window as gpt-rs does"
        )


@torch.no_grad()
def generate_sliding(
    pipeline,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 0.7,
    top_k: int | None = None,
    seed: int | None = None,
) -> str:
    """``prompt`` + ``max_new_tokens`` tokens sampled from an exported model with gpt-rs's loop
    (``sampling.sample``, the one ``GPT.generate`` runs): the model's key/value cache
    while the window fills, the last ``n_positions`` tokens from position 0
    once it slides. ``pipeline`` is a ``transformers`` text-generation pipeline on the exported
    folder (anything with ``.model`` and ``.tokenizer``). The draws are ours, so the text equals
    ``generate_text(our model, ...)`` for the same seed. No length limit.
    """
    from gpt_pipeline.model.sampling import sample, seeded_generator, validate_sampling

    validate_sampling(max_new_tokens, temperature, top_k)
    model, tokenizer = pipeline.model, pipeline.tokenizer
    ids = tokenizer(prompt, verbose=False)["input_ids"] if isinstance(prompt, str) else []
    if not ids:
        raise ValueError(f"prompt must be a non-empty string of known characters, got {prompt!r}")
    device = model.lm_head.weight.device
    past = None

    def step(window: torch.Tensor, start: int) -> torch.Tensor:
        nonlocal past
        out = model(window, past if start else None, use_cache=True)  # 2nd: past_key_values (4.x), cache (5.x)
        past = out["cache"] if "cache" in out else out["past_key_values"]  # positions 0 .. start + T - 1
        return out.logits[:, -1]  # [1, V]: the last position only

    was_training = model.training
    model.eval()
    try:
        out = sample(step, torch.tensor([ids], dtype=torch.long, device=device), max_new_tokens,
                     model.config.n_positions, temperature, top_k, seeded_generator(device, seed))
    finally:
        model.train(was_training)
    return prompt + tokenizer.decode(out[0, len(ids):].tolist())


def export(model: GPT, tokenizer: BPETokenizer, out_dir: str | os.PathLike) -> Path:
    """Write ``model`` and ``tokenizer`` as a ``transformers`` GPT-2 directory; return its path.

    ``AutoModelForCausalLM.from_pretrained(out_dir)`` then gives our logits and
    ``AutoTokenizer.from_pretrained(out_dir)`` our token ids. Raises ``ValueError`` when the
    tokenizer's and the model's vocabulary sizes differ or when the tokenizer cannot be written
    as a ``tokenizer.json`` (two tokens with the same text); nothing is written then.
    """
    if model.config.vocab_size != tokenizer.vocab_size:
        raise ValueError(
            f"the model has vocab_size {model.config.vocab_size} but the tokenizer has "
            f"{tokenizer.vocab_size} tokens"
        )
    tokenizer_json = tokenizer.to_hf_json()  # raises before anything is written
    tensors = gpt2_state_dict(model)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {str(out)!r} exists and is not a directory")
    atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    atomic_write_text(out / TOKENIZER_FILE, tokenizer_json)
    settings = tokenizer_config(model.config.context_length)
    atomic_write_text(out / TOKENIZER_CONFIG_FILE, json.dumps(settings, indent=2) + "\n")
    atomic_write_text(out / GENERATION_CONFIG_FILE, json.dumps(generation_config(model), indent=2) + "\n")
    atomic_write_text(out / CONFIG_FILE, json.dumps(gpt2_config(model), indent=2) + "\n")
    return out
