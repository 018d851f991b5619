"""Tests for gpt_pipeline.model.decode: the key/value cache and last-position forward of sampling
against the plain forward."""

import pytest
import torch

from gpt_pipeline.model import decode
from gpt_pipeline.model.decode import KVCache, hidden
from gpt_pipeline.model.gpt import GPT, GPTConfig

TINY = GPTConfig(vocab_size=11, embedding_size=8, context_length=6, head_count=2, block_count=2,
                 feed_forward_multiplier=2, embedding_dropout=0.1, attention_dropout=0.1,
                 feed_forward_dropout=0.1, residual_dropout=0.1)


def test_cache_gives_the_same_logits_as_a_full_forward():
    model = GPT(TINY).eval()
    idx = torch.randint(0, 11, (3, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model.linear_head(model.forward_hidden(idx))  # [3, 6, 11]
        cache = KVCache(model, 3)
        parts = [hidden(model, idx[:, :4], cache)]
        parts += [hidden(model, idx[:, t : t + 1], cache) for t in (4, 5)]
        cached = model.linear_head(torch.cat(parts, dim=1))
        assert torch.allclose(full, cached, atol=1e-5)
        with pytest.raises(ValueError, match="longer than context_length=6"):
            hidden(model, idx[:, :1], cache)


def test_last_only_equals_the_last_position_of_a_full_forward():
    model = GPT(TINY).eval()
    idx = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full = model.forward_hidden(idx)  # [2, 6, 8]
        last = hidden(model, idx, last_only=True)  # [2, 1, 8]
        assert last.shape == (2, 1, 8) and torch.allclose(last, full[:, -1:], atol=1e-6)
        cache = KVCache(model, 2)
        assert torch.allclose(hidden(model, idx[:, :5], cache, last_only=True), full[:, 4:5], atol=1e-6)
        assert cache.length == 5
        assert torch.allclose(hidden(model, idx[:, 5:], cache, last_only=True), full[:, 5:], atol=1e-5)


def test_decoding_refuses_training_mode_and_a_second_multi_position_step():
    model = GPT(TINY)
    with pytest.raises(ValueError, match="eval mode only"):
        hidden(model.train(), torch.zeros(1, 2, dtype=torch.long))
    cache = KVCache(model.eval(), 1)
    hidden(model, torch.zeros(1, 2, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="takes one new position at a time, got 2"):
        hidden(model, torch.zeros(1, 2, dtype=torch.long), cache)


@pytest.mark.parametrize("rows", [1, 10**9])
def test_both_product_paths_and_the_native_window_give_the_plain_forward(rows, monkeypatch):
    """oneDNN's linear (from ``ONEDNN_ROWS`` rows) and ``F.linear`` below it; whole windows through
    the native kernel where built (head size 4 here), single positions through SDPA."""
    monkeypatch.setattr(decode, "ONEDNN_ROWS", rows)
    model = GPT(TINY).eval()
    model.reset_parameters(torch.Generator().manual_seed(3))
    idx = torch.randint(0, 11, (3, 6), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model.forward_hidden(idx)  # [3, 6, 8]
        assert torch.allclose(hidden(model, idx), full, atol=1e-5)
        cache = KVCache(model, 3)
        parts = [hidden(model, idx[:, :3], cache)] + [hidden(model, idx[:, t : t + 1], cache) for t in (3, 4, 5)]
        assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)
