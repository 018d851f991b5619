"""Tests for gpt_pipeline.model.fast: the seam between the plain model and its fast paths.

Each fast path against the plain forward it replaces (``fast.plain()`` turns them off) and both
against gpt-rs's model (``gpt_pipeline_tests.reference``)."""

import pytest
import torch
import torch.nn.functional as F

from gpt_pipeline.model import fast, native_build, native_decode
from gpt_pipeline.model.dropout import dropped_positions
from gpt_pipeline.model.gpt import GPT, GPTConfig
from gpt_pipeline_tests import reference
from gpt_pipeline_tests.reference import Masks, ReferenceGPT

CONFIG = GPTConfig(vocab_size=40, embedding_size=16, context_length=8, head_count=2, block_count=2,
                   feed_forward_multiplier=2, embedding_dropout=0.1, attention_dropout=0.1,
                   feed_forward_dropout=0.1, residual_dropout=0.1)


def _model(seed=0):
    model = GPT(CONFIG)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():  # larger weights than the initialisation: every parameter matters
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel() + seed)) * 0.3)
    return model


def _draw(seed: int):
    """The reference's random draw: what the model's dropouts draw from a generator seeded ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return lambda n, p: dropped_positions(n, p, g)


def test_plain_turns_every_fast_path_off_and_back_on():
    model, x = _model(), torch.zeros(1, 3, 16)
    assert fast.enabled() and fast.block_forward(model.blocks[0], x) is not None
    with fast.plain():
        assert not fast.enabled()
        assert fast.block_forward(model.blocks[0], x) is None
        assert fast.loss(model, x, torch.zeros(1, 3, dtype=torch.long)) is None
        assert fast.generate(model.eval(), torch.zeros(1, 1, dtype=torch.long), 2, 1.0, None, None) is None
    assert fast.enabled()
    with torch.no_grad():  # no gradients: the plain forward runs
        assert fast.block_forward(model.blocks[0], x) is None


def test_fast_and_plain_loss_and_gradients_agree_without_dropout():
    model = _model().eval()
    idx = torch.randint(0, 40, (5, 8), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, 40, (5, 8), generator=torch.Generator().manual_seed(2))
    results = []
    for plain in (False, True):
        model.zero_grad()
        if plain:
            with fast.plain():
                loss = model.loss(idx, targets)
        else:
            loss = model.loss(idx, targets)
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert abs(results[0][0] - results[1][0]) < 1e-6 and results[0][0] > 1.0
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], rtol=1e-5, atol=1e-6, msg=name)


def test_plain_training_forward_equals_gpt_rs_model_mask_for_mask():
    """The plain path in training mode, with gradients (what runs on GPUs), against the reference
    with the masks drawn in the plain order and layout."""
    model = _model(3).train()
    idx = torch.randint(0, 40, (4, 8), generator=torch.Generator().manual_seed(4))
    expected = ReferenceGPT.from_gpt(model).set_masks(Masks(_draw(9)))(idx)
    model.set_dropout_generator(torch.Generator().manual_seed(9))
    with fast.plain():
        logits = model(idx)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    model.set_dropout_generator(torch.Generator().manual_seed(10))
    with fast.plain():
        assert (model(idx) - expected).abs().max() > 1e-2  # other masks, other logits


@pytest.mark.parametrize("kernel", ["native", "pytorch"])
@pytest.mark.parametrize("prompt_length", [1, 3, 8])
def test_cached_generation_equals_the_plain_loop_draw_for_draw(prompt_length, kernel, monkeypatch):
    """A batch of prompts, sampled past the context window: the key/value cache (through the C
    kernel of ``native_decode``, or with ``GPT_PIPELINE_NATIVE=0`` through ``decode``'s PyTorch
    operators) and the plain loop (``GPT.generate`` under ``fast.plain()``) pick the same tokens
    from the same generator."""
    if kernel == "pytorch":
        monkeypatch.setenv("GPT_PIPELINE_NATIVE", "0")
    model = _model(5)
    assert (native_decode.unavailable(model.eval()) is None) == (kernel == "native" and native_build.compiler() is not None)
    prompts = torch.randint(0, 40, (4, prompt_length), generator=torch.Generator().manual_seed(6))
    out = model.generate(prompts, 20, 1.0, generator=torch.Generator().manual_seed(7))
    with fast.plain():
        plain = model.generate(prompts, 20, 1.0, generator=torch.Generator().manual_seed(7))
    assert out.shape == (4, prompt_length + 20) and torch.equal(out, plain)
    for row in range(4):  # and each row is gpt-rs's greedy loop when greedy
        greedy = model.generate(prompts[row : row + 1], 12, top_k=1)[0].tolist()
        assert greedy == reference.generate(ReferenceGPT.from_gpt(model), prompts[row].tolist(), 12, greedy=True)
    assert len(set(out[:, prompt_length:].flatten().tolist())) > 5  # varied draws


def test_fast_loss_never_makes_the_logits_off_cpu_float32():
    model = _model().double().eval()
    idx = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(1))
    assert fast.loss(model, torch.zeros(2, 8, 16, dtype=torch.float64), idx) is None  # float64: plain
    expected = F.cross_entropy(model(idx).flatten(0, 1), idx.flatten())  # float64
    assert torch.allclose(model.loss(idx, idx).double(), expected, atol=1e-6)
