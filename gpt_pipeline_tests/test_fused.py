"""The hand-written CPU passes (fused.py, dropout.py) against plain PyTorch compositions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpt_pipeline.dropout import Dropout, DropPositions, ResidualDropAdd, dropped_positions
from gpt_pipeline.fused import FeedForwardFunction
from gpt_pipeline.model import GPT, GPTConfig


def _mask(shape, positions, scale):
    mask = torch.full(shape, scale)
    mask.view(-1)[positions] = 0.0
    return mask


def _grads(fn, *inputs):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    out.backward(torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape).sin())
    return out.detach(), [t.grad for t in inputs]


def test_feed_forward_function_equals_the_plain_layers_with_dropout():
    g = torch.Generator().manual_seed(0)
    x, w1, b1 = torch.randn(12, 8, generator=g), torch.randn(32, 8, generator=g), torch.randn(32, generator=g)
    w2, b2 = torch.randn(8, 32, generator=g), torch.randn(8, generator=g)
    positions, scale = dropped_positions(12 * 8, 0.3, g), 1 / 0.7
    assert 0 < len(positions) < 96
    mask = _mask((12, 8), positions, scale)
    fused = _grads(lambda *a: FeedForwardFunction.apply(*a, positions, scale), x, w1, b1, w2, b2)
    plain = _grads(lambda x, w1, b1, w2, b2: (F.relu(x @ w1.T + b1) @ w2.T + b2) * mask, x, w1, b1, w2, b2)
    torch.testing.assert_close(fused[0], plain[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(fused[1], plain[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_drop_positions_and_residual_add_equal_a_mask():
    g = torch.Generator().manual_seed(1)
    x, branch = torch.randn(4, 5, 6, generator=g), torch.randn(4, 5, 6, generator=g)
    positions, scale = dropped_positions(x.numel(), 0.25, g), 4 / 3
    mask = _mask(x.shape, positions, scale)
    out, (grad,) = _grads(lambda x: DropPositions.apply(x, positions, scale), x)
    ref_out, (ref_grad,) = _grads(lambda x: x * mask, x)
    assert torch.equal(out, ref_out) and torch.equal(grad, ref_grad)
    out, grads = _grads(lambda b, x: ResidualDropAdd.apply(b, x, positions, scale), branch, x)
    ref_out, ref_grads = _grads(lambda b, x: b + x * mask, branch, x)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))
    assert torch.equal(out.view(-1)[positions], branch.view(-1)[positions])  # dropped: branch alone


def _plain_forward(model: GPT):
    """Patch a model back to the plain PyTorch composition with mask tensors."""

    def dropout(self, x):
        mask = self.mask(x)
        return x if mask is None else x * mask

    def feed_forward(self, x):
        return self.dropout(self.output(F.relu(self.input(x))))

    def block(self, x, cache=None, layer=0, last_only=False):
        mask = self.residual_dropout.mask(x)
        x = self.attention(self.layer_norm_1(x), cache, layer, last_only) + (x if mask is None else x * mask)
        mask = self.residual_dropout.mask(x)
        return self.feed_forward(self.layer_norm_2(x)) + (x if mask is None else x * mask)

    for module in model.modules():
        if isinstance(module, Dropout):
            module.forward = dropout.__get__(module)
    for b in model.blocks:
        b.forward = block.__get__(b)
        b.feed_forward.forward = feed_forward.__get__(b.feed_forward)
    return model


def test_a_training_step_equals_the_plain_composition_mask_for_mask():
    config = GPTConfig(vocab_size=50, embedding_size=32, context_length=16, head_count=4, block_count=2,
                       embedding_dropout=0.1, attention_dropout=0.1, feed_forward_dropout=0.1, residual_dropout=0.1)
    torch.manual_seed(0)
    x, y = torch.randint(0, 50, (6, 16)), torch.randint(0, 50, (6, 16))
    fused = GPT(config).train()
    plain = _plain_forward(GPT(config).train())
    plain.load_state_dict(fused.state_dict())
    results = []
    for model in (fused, plain):
        model.set_dropout_generator(torch.Generator().manual_seed(7))  # the same masks, drawn in order
        loss = model.loss(x, y)
        loss.backward()
        results.append((loss.item(), {n: p.grad for n, p in model.named_parameters()}))
    assert results[0][0] == results[1][0]
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], rtol=1e-5, atol=1e-6, msg=name)
    other = GPT(config).train()
    other.load_state_dict(fused.state_dict())
    other.set_dropout_generator(torch.Generator().manual_seed(8))
    assert other.loss(x, y).item() != results[0][0]  # other masks, another loss: the masks matter
