"""Hand-written forward and backward passes for the hottest pieces of a CPU training step.

What this module does: gpt-rs's block, ``x = dropout_res(x) + attn(ln_1(x))`` then
``x = dropout_res(x) + ffn(ln_2(x))``, with fewer passes over memory than the plain composition.
On a 2-core CPU every pass over a ``[B * T, 4 * C]`` tensor that is not in cache costs about as
much as a small matrix product, and ``addmm``'s first pass (the bias broadcast into fresh memory)
was the slowest of them all. So:

- ``LinearFunction``: ``x @ W.T + b`` with the bias added in place after the product;
- ``ProjectionResidual``: ``dropout_res(x) + (y @ W.T + b)``: the residual and the bias are
  written once into the output buffer, and the product is accumulated into it;
- ``FeedForwardResidual``: ``dropout_res(x) + dropout_ff(relu(h @ W1.T + b1) @ W2.T + b2)`` the
  same way, with the ReLU in place and its gradient masked in place.

Dropout is given as the flat ``positions`` dropped (int64, sorted, or ``None``) and the ``scale``
of the kept elements (1 / (1 - p)), as ``dropout.Dropout.draw`` gives them. The math and the
gradients are those of the plain PyTorch composition, up to the order of float additions (the
tests compare both). What it does not do: decide when to use them (``model.py`` does, on CPU in
float32) or draw the positions (``dropout.py``).
"""

from __future__ import annotations

import torch

from gpt_pipeline.dropout import scaled_except


def _residual_plus(x: torch.Tensor, positions: torch.Tensor | None, scale: float, bias: torch.Tensor) -> torch.Tensor:
    """A new ``[N, C]`` buffer: ``bias + dropout(x)``, dropout given by ``positions`` and ``scale``."""
    out = torch.add(bias, x, alpha=scale)  # [N, C], one pass: bias broadcast over the rows
    if positions is not None:  # x dropped there: the bias alone
        out.view(-1).index_copy_(0, positions, bias.index_select(0, positions % x.size(1)))
    return out


def _dropped_residual_at(x: torch.Tensor, at: torch.Tensor, positions: torch.Tensor | None,
                         scale: float) -> torch.Tensor:
    """``dropout(x)`` (``positions``, ``scale``) at the flat indices ``at`` only: ``[len(at)]``."""
    values = x.reshape(-1).index_select(0, at).mul_(scale)
    if positions is not None and len(positions):  # both sorted: which of ``at`` are dropped too
        where = torch.searchsorted(positions, at).clamp_(max=len(positions) - 1)
        values.masked_fill_(positions.index_select(0, where) == at, 0.0)
    return values


class LinearFunction(torch.autograd.Function):
    """``x @ w.T + b`` for ``x`` ``[N, C]``, the bias added in place after the product.

    Example:
        >>> x, w, b = torch.ones(2, 3), torch.ones(4, 3), torch.arange(4.0)
        >>> LinearFunction.apply(x, w, b).tolist()
        [[3.0, 4.0, 5.0, 6.0], [3.0, 4.0, 5.0, 6.0]]
    """

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        return torch.mm(x, w.t()).add_(b)  # [N, out]

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        grad_x = grad.mm(w) if ctx.needs_input_grad[0] else None  # [N, C]
        return grad_x, grad.t().mm(x), grad.sum(0)


class ProjectionResidual(torch.autograd.Function):
    """``dropout(x) + y @ w.T + b`` for ``y``, ``x`` ``[N, C]``: gpt-rs's attention residual, the
    residual dropout given by ``positions`` and ``scale``.

    Example:
        >>> y, x, w, b = torch.ones(1, 2), torch.ones(1, 2), torch.eye(2), torch.zeros(2)
        >>> ProjectionResidual.apply(y, x, w, b, torch.tensor([1]), 2.0).tolist()
        [[3.0, 1.0]]
    """

    @staticmethod
    def forward(ctx, y, x, w, b, positions, scale):
        out = _residual_plus(x, positions, scale, b)  # [N, C]
        out.addmm_(y, w.t())  # [N, C] += [N, C] @ [C, C]
        ctx.save_for_backward(y, w, positions)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad):
        y, w, positions = ctx.saved_tensors
        grad_x = scaled_except(grad, positions, ctx.scale)  # [N, C]
        return grad.mm(w), grad_x, grad.t().mm(y), grad.sum(0), None, None


class FeedForwardResidual(torch.autograd.Function):
    """``dropout_res(x) + dropout_ff(relu(h @ w1.T + b1) @ w2.T + b2)`` for ``h``, ``x`` ``[N, C]``:
    gpt-rs's feed-forward half of a block, each dropout given as positions and scale.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> h, x, w1, b1 = (torch.randn(*s, generator=g) for s in ((5, 4), (5, 4), (8, 4), (8,)))
        >>> w2, b2 = torch.randn(4, 8, generator=g), torch.randn(4, generator=g)
        >>> plain = x + torch.relu(h @ w1.T + b1) @ w2.T + b2
        >>> fused = FeedForwardResidual.apply(h, x, w1, b1, w2, b2, None, 1.0, None, 1.0)
        >>> torch.allclose(fused, plain, atol=1e-5)
        True
    """

    @staticmethod
    def forward(ctx, h, x, w1, b1, w2, b2, ff_positions, ff_scale, res_positions, res_scale):
        hidden = torch.mm(h, w1.t()).add_(b1).relu_()  # [N, F], bias and ReLU in place
        out = _residual_plus(x, res_positions, res_scale, b2 * ff_scale)  # [N, C]
        if ff_positions is not None:  # where the branch is dropped: the residual alone
            kept = _dropped_residual_at(x, ff_positions, res_positions, res_scale)
        out.addmm_(hidden, w2.t(), alpha=ff_scale)  # [N, C] += scale * [N, F] @ [F, C]
        if ff_positions is not None:
            out.view(-1).index_copy_(0, ff_positions, kept)
        ctx.save_for_backward(h, w1, w2, hidden, ff_positions, res_positions)
        ctx.scales = ff_scale, res_scale
        return out

    @staticmethod
    def backward(ctx, grad):
        h, w1, w2, hidden, ff_positions, res_positions = ctx.saved_tensors
        ff_scale, res_scale = ctx.scales
        grad_x = scaled_except(grad, res_positions, res_scale)  # [N, C]
        grad = scaled_except(grad, ff_positions, ff_scale)  # [N, C], the branch's output
        grad_w2 = grad.t().mm(hidden)  # [C, F]
        grad_b2 = grad.sum(0)  # [C]
        grad_hidden = grad.mm(w2)  # [N, F]
        # ReLU's gradient, in place: zero where the unit was off (hidden == 0 after relu_)
        torch.ops.aten.threshold_backward.grad_input(grad_hidden, hidden, 0.0, grad_input=grad_hidden)
        grad_w1 = grad_hidden.t().mm(h)  # [F, C]
        grad_b1 = grad_hidden.sum(0)  # [F]
        grad_h = grad_hidden.mm(w1)  # [N, C]
        return grad_h, grad_x, grad_w1, grad_b1, grad_w2, grad_b2, None, None, None, None
