"""``GPT.generate``'s CPU step through the C kernel ``native/decode.c``: one call per token.

``Session(model, batch).logits(ids, start)`` is a step of ``sampling.sample`` with every block,
the final LayerNorm and the head in one compiled call (the last block for the last position
alone), so that a token costs its arithmetic rather than ~100 PyTorch operators. The weights are
packed in the kernel's layout (products' weights transposed to ``[in, out]``), again whenever a
parameter changes. ``supports(model)``: float32 on CPU, eval mode, gpt.py's ReLU feed-forward,
a head size that is a multiple of 4, a compiled kernel (``unavailable`` says why not).
"""

from __future__ import annotations

import ctypes
import time
import weakref

import torch
import torch.nn.functional as F

from gpt_pipeline.model import native_build


def unavailable(model) -> str | None:
    """Why ``generate`` cannot run ``model`` through the kernel (one line), or ``None``."""
    weight = model.linear_head.weight
    if weight.device.type != "cpu" or any(p.dtype != torch.float32 for p in model.parameters()):
        return f"the kernel takes float32 on CPU, the model is {weight.dtype} on {weight.device}"
    if model.training:
        return "the model is in training mode (dropout on)"
    if any(block.feed_forward.activation is not F.relu for block in model.blocks):
        return "the feed-forward's activation is not the kernel's ReLU"
    return native_build.why_not("decode", model.config.head_size)


def supports(model) -> bool:
    return unavailable(model) is None


_weights: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (versions, tensors, pointers)


def packed_weights(model) -> tuple[list[torch.Tensor], ctypes.Array]:
    """``model``'s weights in the kernel's layout (products' weights transposed copies, the rest
    the parameters) and their blocks' pointers, made again when a parameter changed."""
    versions = tuple((p.data_ptr(), p._version) for p in model.parameters())
    cached = _weights.get(model)
    if cached is not None and cached[0] == versions:
        return cached[1], cached[2]
    with torch.no_grad():
        per_block = []
        for block in model.blocks:
            attention, ff = block.attention, block.feed_forward
            per_block += [block.layer_norm_1.weight, block.layer_norm_1.bias,
                          attention.qkv.weight.t(), attention.qkv.bias,  # [C, 3C]: [in, out]
                          attention.projection.weight.t(), attention.projection.bias,  # [C, C]
                          block.layer_norm_2.weight, block.layer_norm_2.bias,
                          ff.input.weight.t(), ff.input.bias,  # [C, F]
                          ff.output.weight.t(), ff.output.bias]  # [F, C]
        tensors = [t.detach().contiguous() for t in per_block]  # a copy of the transposed, the rest as they are
        tensors += [model.linear_head.weight.detach().t().contiguous()]  # [C, V]
    pointers = (ctypes.c_void_p * len(per_block))(*(t.data_ptr() for t in tensors[:-1]))
    _weights[model] = (versions, tensors, pointers)
    return tensors, pointers


class Session:
    """One sampling call's state for ``batch`` prompts: caches ``[L, B, ctx, C]``, the kernel's
    scratch, the logits ``[B, V]`` and the weights; ``logits(ids, start)`` runs the model."""

    def __init__(self, model, batch: int):
        c = model.config
        self.model, self.batch, self.threads = model, batch, torch.get_num_threads()
        self.lib = native_build.kernel("decode", c.head_size)
        self.weights, self.pointers = packed_weights(model)
        F = c.embedding_size * c.feed_forward_multiplier
        cache = (c.block_count, batch, c.context_length, c.embedding_size)
        self.keys, self.values = torch.empty(cache), torch.empty(cache)
        self.scratch = torch.empty(self.lib.decode_scratch_floats(batch, c.context_length, c.embedding_size, F,
                                                                  c.context_length, self.threads))
        self.out = torch.empty(batch, c.vocab_size)
        self.sizes = (c.block_count, c.embedding_size, c.head_count, F, c.vocab_size, c.context_length)
        self.eps = model.layer_norm.eps
        self.choice, self.calls = ThreadChoice(self.threads), 0

    def logits(self, ids: torch.Tensor, start: int, threads: int | None = None) -> torch.Tensor:
        """Logits ``[B, V]`` at the last of ``ids`` ``[B, T]`` (int64, rows contiguous), at positions
        ``start ..``; the keys and values of positions ``0 .. start - 1`` must be those of this
        session's earlier calls, the ones of ``ids`` are added. The tensor is reused by the next call.
        ``threads``: at most the session's (its scratch is sized for them); by default all of them
        for the first call (the prompt), then ``ThreadChoice``'s."""
        self.calls += 1
        if threads is None and self.calls > 1:
            threads, started = self.choice.next(), time.perf_counter()
            out = self.logits(ids, start, threads)
            self.choice.record(threads, time.perf_counter() - started)
            return out
        B, T = ids.shape
        L, C, H, F, V, ctx = self.sizes
        if B != self.batch or ids.dtype != torch.int64 or ids.stride(1) != 1 or not 0 <= start <= ctx - T:
            raise ValueError(f"native decode takes int64 ids [{self.batch}, T] with start + T <= {ctx}, "
                             f"got {ids.dtype} {tuple(ids.shape)} at start={start}")
        m = self.model
        status = self.lib.decode_forward(
            self.pointers, m.token_embedding.weight.data_ptr(), m.position_embedding.weight.data_ptr(),
            m.layer_norm.weight.data_ptr(), m.layer_norm.bias.data_ptr(), self.weights[-1].data_ptr(),
            ids.data_ptr(), ids.stride(0), self.keys.data_ptr(), self.values.data_ptr(), self.out.data_ptr(),
            self.scratch.data_ptr(), B, T, start, L, C, H, F, V, ctx, self.eps,
            self.threads if threads is None else max(1, min(threads, self.threads)))
        if status != 0:
            raise IndexError(f"token ids must be in 0..{V - 1}, got {ids.min().item()}..{ids.max().item()}")
        return self.out


class ThreadChoice:
    """The kernel's thread count, chosen while sampling from what the machine gives: every
    ``period`` tokens, ``probes`` tokens with all the session's threads and as many with one,
    alternately, then the faster of the two (median seconds per token) until the next probe.

    Alone, all threads win; beside another busy process, threads waiting at the kernel's barriers
    lose whenever one is descheduled and one thread is faster (``bench_generate.py --beside-training``)."""

    def __init__(self, most: int, period: int = 128, probes: int = 4):
        self.options = [most, 1] if most > 1 else [1]
        self.period, self.probes, self.count, self.best = period, probes, 0, most
        self.times: dict[int, list[float]] = {option: [] for option in self.options}

    def next(self) -> int:
        phase = self.count % self.period
        return self.options[phase % 2] if len(self.options) > 1 and phase < 2 * self.probes else self.best

    def record(self, threads: int, seconds: float) -> None:
        phase = self.count % self.period
        self.count += 1
        if len(self.options) == 1 or phase >= 2 * self.probes:
            return
        self.times[threads].append(seconds)
        if phase == 2 * self.probes - 1:  # the probe is complete
            self.best = min(self.options, key=lambda option: sorted(self.times[option])[len(self.times[option]) // 2])
            self.times = {option: [] for option in self.options}
