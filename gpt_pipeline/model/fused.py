"""Hand-written forward and backward passes of a CPU training step: ``gpt.Block.fused_forward``
and ``gpt.GPT.loss`` call them. Every pass over a ``[B * T, 4 * C]`` tensor that is not in cache
costs about as much as a small matrix product on a small CPU, so the block's halves take fewer:

- ``linear`` / ``linear_add``: ``x @ W.T + b`` (then ReLU, or ``+ other``) through oneDNN's fused
  linear kernel where this torch has it (bias, ReLU and residual in the product's own pass), else
  ``torch.mm`` with them applied in place; the weight gradients stay with ``torch.mm``;
- ``LinearFunction``: ``x @ W.T + b`` (q/k/v);
- ``ProjectionResidual``: ``dropout_res(x) + (y @ W.T + b)``;
- ``FeedForwardResidual``: ``dropout_res(x) + dropout_ff(relu(h @ W1.T + b1) @ W2.T + b2)``;
- ``HeadCrossEntropy``: the head's product and the mean cross-entropy, in row chunks (no logits
  tensor in memory).

Dropout comes as the flat ``positions`` dropped (``dropout.Dropout.positions``) and the kept
elements' ``scale``. The math and gradients are those of the plain composition up to the order of
float additions (the tests compare both, with and without oneDNN).
"""

from __future__ import annotations

import torch

from gpt_pipeline.model.dropout import scaled_except

ONEDNN: bool | None = None  # probed on first use (tests set it); False: every product goes through torch.mm


def onednn() -> bool:
    """Whether products go through oneDNN's fused linear (torch.compile's CPU kernel): whether it is
    here and gives a known answer, probed once, on first use."""
    global ONEDNN
    if ONEDNN is None:
        try:
            x, w, b = torch.ones(2, 3), torch.ones(4, 3), torch.arange(4.0)
            out = torch.ops.mkldnn._linear_pointwise(x, w, b, "relu", [], "")
            summed = torch.ops.mkldnn._linear_pointwise.binary(x, out, w, b, "add")
            ONEDNN = (torch.backends.mkldnn.is_available() and out.tolist() == [[3.0, 4.0, 5.0, 6.0]] * 2
                      and summed.tolist() == [[6.0, 8.0, 10.0, 12.0]] * 2)
        except (AttributeError, RuntimeError):
            ONEDNN = False
    return ONEDNN


def cpu_float32(x: torch.Tensor) -> bool:
    return x.dtype == torch.float32 and x.device.type == "cpu"


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """``x @ w.T (+ b)``, then ReLU if ``relu``, for ``x`` ``[..., in]``, ``w`` ``[out, in]`` (or a
    transposed view: ``linear(g, w.t())`` is ``g @ w``): ``[..., out]``."""
    if cpu_float32(x) and onednn():
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "relu" if relu else "none", [], "")
    out = torch.mm(x.reshape(-1, x.size(-1)), w.t())  # [N, out]
    if b is not None:
        out.add_(b)
    return (out.relu_() if relu else out).view(*x.shape[:-1], w.size(0))


def linear_add(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, other: torch.Tensor,
               alpha: float = 1.0) -> torch.Tensor:
    """``alpha * (x @ w.T + b) + other`` for ``x`` ``[..., in]``, ``w`` ``[out, in]``, ``other``
    ``[..., out]``: a new tensor."""
    if cpu_float32(x) and onednn():
        if alpha != 1.0:
            w, b = w * alpha, b * alpha  # [out, in], [out]: cheaper than scaling [N, out]
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, w, b, "add")
    out = torch.add(other, b, alpha=alpha)  # [..., out]
    out.view(-1, w.size(0)).addmm_(x.reshape(-1, x.size(-1)), w.t(), alpha=alpha)
    return out


class LinearFunction(torch.autograd.Function):
    """``x @ w.T + b`` for ``x`` ``[N, C]``."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        return linear(x, w, b)  # [N, out]

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        grad_x = linear(grad, w.t()) if ctx.needs_input_grad[0] else None  # [N, C]
        return grad_x, grad.t().mm(x), grad.sum(0)


class ProjectionResidual(torch.autograd.Function):
    """``dropout(x) + y @ w.T + b`` for ``y``, ``x`` ``[..., C]``: gpt-rs's attention residual, the
    residual dropout given by ``positions`` and ``scale``. Give ``x`` as the model holds it, not
    a view: its gradient is then a tensor of its own, which autograd adds to the LayerNorm's in
    place (a view's gradient is added out of place, a new ``[B, T, C]`` each time).
    """

    @staticmethod
    def forward(ctx, y, x, w, b, positions, scale):
        out = linear_add(y, w, b, scaled_except(x, positions, scale))  # [..., C]
        ctx.save_for_backward(y, w, positions)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad):
        y, w, positions = ctx.saved_tensors
        grad_x = scaled_except(grad, positions, ctx.scale)  # [..., C], a new tensor: autograd adds in place
        flat, y = grad.reshape(-1, grad.size(-1)), y.reshape(-1, y.size(-1))  # [N, C]
        return linear(grad, w.t()), grad_x, flat.t().mm(y), flat.sum(0), None, None


class FeedForwardResidual(torch.autograd.Function):
    """``dropout_res(x) + dropout_ff(relu(h @ w1.T + b1) @ w2.T + b2)`` for ``h``, ``x`` ``[..., C]``:
    a block's feed-forward half, each dropout as positions and scale (``x`` as for ``ProjectionResidual``)."""

    @staticmethod
    def forward(ctx, h, x, w1, b1, w2, b2, ff_positions, ff_scale, res_positions, res_scale):
        hidden = linear(h, w1, b1, relu=True)  # [..., F]
        residual = scaled_except(x, res_positions, res_scale)  # [..., C]: dropout_res(x)
        out = linear_add(hidden, w2, b2, residual, alpha=ff_scale)  # [..., C]
        if ff_positions is not None:  # where the branch is dropped: the residual alone
            out.view(-1).index_copy_(0, ff_positions, residual.view(-1).index_select(0, ff_positions))
        ctx.save_for_backward(h, w1, w2, hidden, ff_positions, res_positions)
        ctx.scales = ff_scale, res_scale
        return out

    @staticmethod
    def backward(ctx, grad):
        h, w1, w2, hidden, ff_positions, res_positions = ctx.saved_tensors
        ff_scale, res_scale = ctx.scales
        grad_x = scaled_except(grad, res_positions, res_scale)  # [..., C], a new tensor
        C, F = w2.shape
        grad = scaled_except(grad, ff_positions, ff_scale).reshape(-1, C)  # [N, C], the branch's output
        hidden, h_flat = hidden.reshape(-1, F), h.reshape(-1, C)  # [N, F], [N, C]
        grad_w2 = grad.t().mm(hidden)  # [C, F]
        grad_b2 = grad.sum(0)  # [C]
        grad_hidden = linear(grad, w2.t())  # [N, F]: grad @ w2
        # ReLU's gradient, in place: zero where the unit was off (hidden == 0 after relu_)
        torch.ops.aten.threshold_backward.grad_input(grad_hidden, hidden, 0.0, grad_input=grad_hidden)
        grad_w1 = grad_hidden.t().mm(h_flat)  # [F, C]
        grad_b1 = grad_hidden.sum(0)  # [F]
        grad_h = linear(grad_hidden, w1.t()).view(h.shape)  # [..., C]: grad_hidden @ w1
        return grad_h, grad_x, grad_w1, grad_b1, grad_w2, grad_b2, None, None, None, None


class HeadCrossEntropy(torch.autograd.Function):
    """``F.cross_entropy(hidden @ weight.T, targets)`` in cache-sized row chunks, no ``[N, V]`` logits
    in memory: each chunk's logits are reduced and turned into their gradient (softmax - one-hot)
    at once, whose products give the inputs' gradients; the backward pass only scales them."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        N = hidden.size(0)
        rows = max(1, (1 << 19) // weight.size(0))  # ~2 MB of float32 logits per chunk
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if want_grad else None  # [N, C]
        grad_weight = torch.zeros_like(weight) if want_grad else None  # [V, C]
        for i in range(0, N, rows):
            h, t = hidden[i : i + rows], targets[i : i + rows]  # [n, C], [n]
            logits = linear(h, weight)  # [n, V]
            rows_n = torch.arange(len(t), device=t.device)  # [n]
            target_logit = logits[rows_n, t]  # [n]
            high = logits.amax(dim=1, keepdim=True)  # [n, 1]
            e = logits.sub_(high).exp_()  # [n, V], in place: exp(logit - max)
            total_e = e.sum(dim=1, keepdim=True)  # [n, 1]
            total += (total_e.log().add_(high).squeeze(1) - target_logit).sum()  # logsumexp - target
            if want_grad:
                g = e.div_(total_e)  # [n, V] softmax
                g[rows_n, t] -= 1.0  # softmax - one-hot
                torch.mm(g, weight, out=grad_hidden[i : i + rows])  # [n, C]
                grad_weight.addmm_(g.t(), h)  # [V, C]
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.scale = 1.0 / N
        return total / N

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_output * ctx.scale
        return grad_hidden * scale, grad_weight * scale, None
