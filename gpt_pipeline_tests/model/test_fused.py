"""The hand-written CPU passes (fused.py, dropout.py, the attention paths) against plain PyTorch
compositions, and a whole training step against gpt-rs's model (``gpt_pipeline_tests.reference``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpt_pipeline.model import fused, native_build
from gpt_pipeline.model.dropout import DropPositions, dropped_positions, scaled_except
from gpt_pipeline.model.fused import FeedForwardResidual, LinearFunction, ProjectionResidual, linear, linear_add
from gpt_pipeline.model.gpt import GPT, GPTConfig
from gpt_pipeline_tests.reference import Masks, ReferenceGPT


@pytest.fixture(params=["onednn", "torch.mm"])
def products(request, monkeypatch):
    """Run a test with oneDNN's fused linear and again with the ``torch.mm`` fallback."""
    if request.param == "onednn" and not fused.onednn():
        pytest.skip("this torch build has no oneDNN fused linear")
    monkeypatch.setattr(fused, "ONEDNN", request.param == "onednn")
    return request.param


@pytest.fixture(params=["native", "plain heads"])
def attention(request, monkeypatch):
    """Run a test with the compiled attention kernel and again with the plain heads."""
    if request.param == "native":
        if native_build.kernel("attention", 8) is None:
            pytest.skip(f"no native attention kernel here: {native_build.why_not('attention', 8)}")
    else:
        monkeypatch.setenv("GPT_PIPELINE_NATIVE", "0")
        assert native_build.kernel("attention", 8) is None
    return request.param


def test_onednn_is_used_wherever_torch_has_it():
    assert fused.onednn() == torch.backends.mkldnn.is_available()


def test_linear_and_linear_add_known_answers(products):
    x = torch.tensor([[1.0, 2.0], [3.0, -4.0]])
    w = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]])  # [out 3, in 2]
    b = torch.tensor([0.5, -10.0, 1.0])
    assert linear(x, w).tolist() == [[1.0, 3.0, -2.0], [3.0, -1.0, 4.0]]
    assert linear(x, w, b).tolist() == [[1.5, -7.0, -1.0], [3.5, -11.0, 5.0]]
    assert linear(x, w, b, relu=True).tolist() == [[1.5, 0.0, 0.0], [3.5, 0.0, 5.0]]
    g = torch.tensor([[1.0, 1.0, 1.0]])
    assert linear(g, w.t()).tolist() == [[2.0, 0.0]]  # a transposed view: g @ w
    other = torch.tensor([[100.0, 200.0, 300.0], [0.0, 0.0, 0.0]])
    assert linear_add(x, w, b, other).tolist() == [[101.5, 193.0, 299.0], [3.5, -11.0, 5.0]]
    assert linear_add(x, w, b, other, alpha=2.0).tolist() == [[103.0, 186.0, 298.0], [7.0, -22.0, 10.0]]
    assert other.tolist() == [[100.0, 200.0, 300.0], [0.0, 0.0, 0.0]]  # not written


def _mask(shape, positions, scale):
    mask = torch.full(shape, scale)
    mask.view(-1)[positions] = 0.0
    return mask


def _grads(fn, *inputs):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    out.backward(torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape).sin())
    return out.detach(), [t.grad for t in inputs]


def _assert_same(fused, plain, tol=1e-5):
    torch.testing.assert_close(fused[0], plain[0], rtol=tol, atol=tol)
    for a, b in zip(fused[1], plain[1]):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_feed_forward_residual_equals_the_plain_layers_with_both_dropouts(products):
    g = torch.Generator().manual_seed(0)
    h, x = torch.randn(12, 8, generator=g), torch.randn(12, 8, generator=g)
    w1, b1 = torch.randn(32, 8, generator=g), torch.randn(32, generator=g)
    w2, b2 = torch.randn(8, 32, generator=g), torch.randn(8, generator=g)
    ff, res = dropped_positions(96, 0.3, g), dropped_positions(96, 0.3, g)
    assert 0 < len(ff) < 96 and 0 < len(res) < 96 and 0 < len(set(ff.tolist()) & set(res.tolist()))
    ff_mask, res_mask = _mask((12, 8), ff, 1 / 0.7), _mask((12, 8), res, 1 / 0.7)
    fused = _grads(lambda *a: FeedForwardResidual.apply(*a, ff, 1 / 0.7, res, 1 / 0.7), h, x, w1, b1, w2, b2)
    plain = _grads(lambda h, x, w1, b1, w2, b2: (F.relu(h @ w1.T + b1) @ w2.T + b2) * ff_mask + x * res_mask,
                   h, x, w1, b1, w2, b2)
    _assert_same(fused, plain)
    both = torch.tensor(sorted(set(ff.tolist()) & set(res.tolist())))
    assert torch.equal(fused[0].view(-1)[both], torch.zeros(len(both)))  # both dropped: exactly 0
    only_ff = torch.tensor(sorted(set(ff.tolist()) - set(res.tolist())))
    assert torch.equal(fused[0].view(-1)[only_ff], (x * res_mask).view(-1)[only_ff])  # the residual alone
    no_dropout = _grads(lambda *a: FeedForwardResidual.apply(*a, None, 1.0, None, 1.0), h, x, w1, b1, w2, b2)
    _assert_same(no_dropout, _grads(lambda h, x, w1, b1, w2, b2: F.relu(h @ w1.T + b1) @ w2.T + b2 + x,
                                    h, x, w1, b1, w2, b2))


def test_projection_residual_and_linear_equal_the_plain_layers(products):
    g = torch.Generator().manual_seed(3)
    y, x, w, b = torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g), torch.randn(6, 6, generator=g), \
        torch.randn(6, generator=g)
    res = dropped_positions(60, 0.25, g)
    mask = _mask((10, 6), res, 4 / 3)
    _assert_same(_grads(lambda *a: ProjectionResidual.apply(*a, res, 4 / 3), y, x, w, b),
                 _grads(lambda y, x, w, b: y @ w.T + b + x * mask, y, x, w, b))
    w3, b3 = torch.randn(18, 6, generator=g), torch.randn(18, generator=g)
    _assert_same(_grads(LinearFunction.apply, y, w3, b3), _grads(F.linear, y, w3, b3))
    assert scaled_except(y, None, 1.0) is y


def test_drop_positions_equals_a_mask():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 5, 6, generator=g)
    positions, scale = dropped_positions(x.numel(), 0.25, g), 4 / 3
    mask = _mask(x.shape, positions, scale)
    out, (grad,) = _grads(lambda x: DropPositions.apply(x, positions, scale), x)
    ref_out, (ref_grad,) = _grads(lambda x: x * mask, x)
    assert torch.equal(out, ref_out) and torch.equal(grad, ref_grad)


def test_a_training_step_equals_the_plain_composition_mask_for_mask(products, attention):
    """The fast training forward and backward (fused passes, then the native kernel or
    the plain heads) against gpt-rs's model (``reference.ReferenceGPT``, heads one at a time)
    holding the same weights, given the same random draw."""
    config = GPTConfig(vocab_size=50, embedding_size=32, context_length=16, head_count=4, block_count=2,
                       embedding_dropout=0.1, attention_dropout=0.1, feed_forward_dropout=0.1, residual_dropout=0.1)
    torch.manual_seed(0)
    x, y = torch.randint(0, 50, (6, 16)), torch.randint(0, 50, (6, 16))
    fused = GPT(config).train()
    plain = ReferenceGPT.from_gpt(fused).train()
    results = []
    fused.set_dropout_generator(torch.Generator().manual_seed(7))  # the same masks, drawn in order
    loss = fused.loss(x, y)
    loss.backward()
    results.append((loss.item(), {n: p.grad for n, p in fused.named_parameters()}))
    g = torch.Generator().manual_seed(7)
    plain.set_masks(Masks(lambda n, p: dropped_positions(n, p, g)))
    loss = F.cross_entropy(plain(x).flatten(0, 1), y.flatten())
    loss.backward()
    results.append((loss.item(), plain.gradients_as_gpt()))
    # the same masks: the same loss up to the order of float additions (equal here, measured)
    assert abs(results[0][0] - results[1][0]) < 1e-6
    assert results[0][1].keys() == results[1][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], rtol=1e-5, atol=1e-6, msg=name)
    other = GPT(config).train()
    other.load_state_dict(fused.state_dict())
    other.set_dropout_generator(torch.Generator().manual_seed(8))
    assert abs(other.loss(x, y).item() - results[0][0]) > 1e-4  # other masks, another loss (4.6e-4)
