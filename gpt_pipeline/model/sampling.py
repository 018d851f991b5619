"""Sampling tokens with gpt-rs's semantics: the loop, one token from a row of logits, text from a prompt.

``sample`` is gpt-rs's loop, the one every caller runs (``GPT.generate``, the exported model's
``interop.hf.generate_sliding``): for each new token the last ``context_length`` tokens, the logits
at the last position, ``sample_next``: divided by the temperature, softmax, one multinomial draw
(``top_k=1``: the arg-max, gpt-rs's loop run greedily; ``top_k`` otherwise restricts the draw to
the k likeliest tokens). ``generate_text`` continues a prompt with any tokenizer that has
``encode(text, unknown=...)`` and ``decode(ids)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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


Step = Callable[[torch.Tensor, int], torch.Tensor]  # (ids [B, T] at positions start .., start) -> logits [B, V]


def sample(step: Step, idx: torch.Tensor, max_new_tokens: int, context_length: int, temperature: float = 0.7,
           top_k: int | None = None, generator: torch.Generator | None = None,
           between_tokens: Callable[[], None] | None = None) -> torch.Tensor:
    """``idx`` ``[B, T]`` followed by ``max_new_tokens`` sampled tokens: ``[B, T + max_new_tokens]``.

    ``step(ids, start)`` gives the logits at the last of ``ids`` at positions ``start ..``. While
    the window fills it starts at position 0 and only grows, so the step is given the one new
    position and keeps the keys and values of the earlier ones (a key/value cache); once it
    slides, every position moves and the step is given the whole window from position 0.
    ``between_tokens``, if given, is called before every new token; whatever it raises stops the
    loop (a server's deadline, a request nobody awaits).
    """
    B, T = idx.shape
    out = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=idx.device)
    out[:, :T] = idx
    for n in range(T, T + max_new_tokens):  # n tokens known, pick token n
        if between_tokens is not None:
            between_tokens()
        if n > context_length:  # the window slides: all of it again, from position 0
            ids, start = out[:, n - context_length : n], 0
        elif n == T:  # the prompt
            ids, start = out[:, :n], 0
        else:  # the window grows: one new position, the others cached
            ids, start = out[:, n - 1 : n], n - 1
        out[:, n] = sample_next(step(ids, start), temperature, top_k, generator)
    return out


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


def seeded_generator(device: torch.device | str, seed: int | None) -> torch.Generator:
    """The sampling generator on ``device``: seeded with ``seed``, or from the OS when ``None``.

    Example:
        >>> a, b = seeded_generator("cpu", 3), seeded_generator("cpu", 3)
        >>> torch.rand(2, generator=a).tolist() == torch.rand(2, generator=b).tolist()
        True
    """
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def generate_text(
    model,  # a gpt_pipeline.model.gpt.GPT (not imported: gpt.py imports this module)
    tokenizer: TextTokenizer,
    prompt: str,
    token_count: int,
    temperature: float = 0.7,
    top_k: int | None = None,
    seed: int | None = None,
    num_samples: int = 1,
    unknown: str = "error",
    between_tokens: Callable[[], None] | None = None,
) -> list[str]:
    """``num_samples`` continuations of ``prompt``, each returned as prompt + generated text.

    ``seed`` makes the samples reproducible (``None``: a fresh random seed); ``unknown`` is passed
    to ``tokenizer.encode`` (what to do with characters outside the vocabulary). The samples are
    drawn as one batch. ``between_tokens`` as in ``GPT.generate`` (raising in it stops the sampling).
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
    generator = seeded_generator(device, seed)
    idx = torch.tensor([list(ids)] * num_samples, dtype=torch.long, device=device)  # [S, T]
    out = model.generate(idx, token_count, temperature, top_k, generator, between_tokens)
    return [prompt + tokenizer.decode(row[len(ids) :].tolist()) for row in out.cpu()]
