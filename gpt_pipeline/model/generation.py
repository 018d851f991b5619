"""Sampling new tokens from a ``GPT`` with gpt-rs's semantics, made fast.

gpt-rs's loop, for every new token: take the last ``context_length`` tokens (all of them while
there are fewer), run that window through the model at positions 0.., take the logits at the last
real position, divide them by the temperature, softmax, draw one token (multinomial), append.

This module computes exactly that, faster:

- while the sequence still fits in the context window, the window starts at position 0 and only
  grows, so the keys and values of earlier positions never change: a ``KVCache`` keeps them and
  each new token costs one position through the model;
- once the window slides, every position shifts and the whole window is recomputed (gpt-rs's
  learned absolute positions leave no shortcut), but without padding;
- in the last block and the head, only the last position is computed (the others' keys and
  values excepted);
- a batch of prompts (of equal length) is sampled at once.

With ``top_k=1`` the pick is the arg-max: gpt-rs's loop run greedily. It does not tokenize text
itself: ``generate_text`` takes any tokenizer with ``encode(text, unknown=...)`` and ``decode(ids)``.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch



class TextTokenizer(Protocol):
    def encode(self, text: str, unknown: str = "error") -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


def validate_sampling(max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    """Raise ``ValueError`` for a token count < 1, a temperature <= 0 or not finite, top_k < 1."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"token count must be a positive integer, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
        math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.7,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row of ``logits`` ``[B, V]``: ``[B]`` int64.

    ``top_k=1`` is the arg-max; otherwise softmax(logits / temperature) over the ``top_k`` largest
    logits (all when ``None``), sampled with ``torch.multinomial``.

    Example:
        >>> sample_next(torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 0.0]]), top_k=1).tolist()
        [1, 0]
    """
    if top_k == 1:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature  # [B, V]
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [B, 1], the k-th largest
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probabilities = torch.softmax(logits, dim=-1)  # [B, V]
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(1)  # [B]


@torch.no_grad()
def generate(
    model: "GPT",  # gpt_pipeline.model.gpt.GPT (not imported: it calls this module)
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.7,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``idx`` ``[B, T]`` followed by ``max_new_tokens`` new tokens: ``[B, T + max_new_tokens]``.

    Dropout is off while sampling (the model's mode is restored afterwards).
    """
    validate_sampling(max_new_tokens, temperature, top_k)
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"prompt ids must have shape [B, T] with T >= 1, got {tuple(idx.shape)}")
    context_length = model.config.context_length
    B, T = idx.shape
    out = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=idx.device)
    out[:, :T] = idx
    was_training = model.training
    model.eval()
    try:
        cache = None
        for n in range(T, T + max_new_tokens):  # n tokens known, pick token n
            if n <= context_length:  # the window starts at position 0 and only grows
                if cache is None:
                    cache = model.new_cache(B)
                    hidden = model.forward_hidden(out[:, :n], cache, last_only=True)  # [B, 1, C]
                else:
                    hidden = model.forward_hidden(out[:, n - 1 : n], cache, last_only=True)  # [B, 1, C]
            else:  # the window slides: every position moves, recompute it whole
                hidden = model.forward_hidden(out[:, n - context_length : n], last_only=True)  # [B, 1, C]
            logits = model.linear_head(hidden[:, -1])  # [B, V]: the last real position only
            out[:, n] = sample_next(logits, temperature, top_k, generator)
    finally:
        model.train(was_training)
    return out


def generate_text(
    model: "GPT",  # gpt_pipeline.model.gpt.GPT (not imported: it calls this module)
    tokenizer: TextTokenizer,
    prompt: str,
    token_count: int,
    temperature: float = 0.7,
    top_k: int | None = None,
    seed: int | None = None,
    num_samples: int = 1,
    unknown: str = "error",
) -> list[str]:
    """``num_samples`` continuations of ``prompt``, each returned as prompt + generated text.

    ``seed`` makes the samples reproducible (``None``: a fresh random seed); ``unknown`` is passed
    to ``tokenizer.encode`` (what to do with characters outside the vocabulary). The samples are
    drawn as one batch.
    """
    if not isinstance(prompt, str) or prompt == "":
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    validate_sampling(token_count, temperature, top_k)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    ids = tokenizer.encode(prompt, unknown=unknown)
    if not ids:
        raise ValueError(f"prompt {prompt!r} encodes to no tokens")
    device = model.linear_head.weight.device
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    idx = torch.tensor([list(ids)] * num_samples, dtype=torch.long, device=device)  # [S, T]
    out = generate(model, idx, token_count, temperature, top_k, generator)
    return [prompt + tokenizer.decode(row[len(ids) :].tolist()) for row in out.cpu()]
