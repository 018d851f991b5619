"""Hand-written forward and backward passes for the two hottest pieces of a CPU training step.

What this module does: ``FeedForwardFunction`` computes gpt-rs's feed-forward layer,
``dropout(relu(x @ W1.T + b1) @ W2.T + b2)``, with the ReLU applied in place on the first
product and its gradient masked in place: no separate ReLU output, no fresh gradient buffers for
the elementwise steps, which on a 2-core CPU stream ``[B * T, 4 * C]`` floats through memory
several times a step. The math and the gradients are exactly those of the plain PyTorch
composition (the tests compare both). What it does not do: decide when to use it (``model.py``
does, on CPU in float32) or draw dropout masks (``dropout.py``).
"""

from __future__ import annotations

import torch


class FeedForwardFunction(torch.autograd.Function):
    """``dropout(relu(x @ w1.T + b1) @ w2.T + b2)`` for ``x`` ``[N, C]``: the output's flat
    ``positions`` (int64, or None for no dropout) are zeroed and the rest scaled by ``scale``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, w1, b1 = torch.randn(5, 4, generator=g), torch.randn(8, 4, generator=g), torch.randn(8, generator=g)
        >>> w2, b2 = torch.randn(4, 8, generator=g), torch.randn(4, generator=g)
        >>> plain = torch.relu(x @ w1.T + b1) @ w2.T + b2
        >>> torch.allclose(FeedForwardFunction.apply(x, w1, b1, w2, b2, None, 1.0), plain, atol=1e-6)
        True
    """

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, positions, scale):
        hidden = torch.addmm(b1, x, w1.t()).relu_()  # [N, F], ReLU in place
        out = torch.addmm(b2, hidden, w2.t())  # [N, C]
        if positions is not None:
            out.mul_(scale).view(-1).index_fill_(0, positions, 0.0)
        ctx.save_for_backward(x, w1, w2, hidden, positions)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w1, w2, hidden, positions = ctx.saved_tensors
        if positions is not None:
            grad = grad * ctx.scale  # [N, C]
            grad.view(-1).index_fill_(0, positions, 0.0)
        grad_w2 = grad.t().mm(hidden)  # [C, F]
        grad_b2 = grad.sum(0)  # [C]
        grad_hidden = grad.mm(w2)  # [N, F]
        # ReLU's gradient, in place: zero where the unit was off (hidden == 0 after relu_)
        torch.ops.aten.threshold_backward.grad_input(grad_hidden, hidden, 0.0, grad_input=grad_hidden)
        grad_w1 = grad_hidden.t().mm(x)  # [F, C]
        grad_b1 = grad_hidden.sum(0)  # [F]
        grad_x = grad_hidden.mm(w1) if ctx.needs_input_grad[0] else None  # [N, C]
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2, None, None
