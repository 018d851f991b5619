"""AttentionHeads (fused_attention.py) against gpt-rs's attention written head by head
(``gpt_pipeline_tests.reference``)."""

from __future__ import annotations

import pytest
import torch

from gpt_pipeline.model.dropout import dropped_positions
from gpt_pipeline.model.fused_attention import AttentionHeads, query_blocks
from gpt_pipeline_tests.reference import block_layout
from gpt_pipeline_tests.reference import heads_from_qkv as _per_head


def _block_mask(heads, B, T, positions, scale):
    """The ``[H, B, T, T]`` dropout mask that ``positions`` (one tensor per query block) stand for."""
    return block_layout(positions, B, heads, T, scale)


def test_query_blocks_cover_every_row_once():
    assert query_blocks(64) == [(0, 32), (32, 64)]
    assert query_blocks(7) == [(0, 3), (3, 7)]
    assert query_blocks(1) == [(0, 1)]
    assert query_blocks(5, count=3) == [(0, 1), (1, 3), (3, 5)]
    for T in range(1, 70):
        blocks = query_blocks(T)
        assert blocks[0][0] == 0 and blocks[-1][1] == T
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(blocks, blocks[1:]))


@pytest.mark.parametrize("B, T, heads, hs", [(3, 8, 4, 5), (2, 7, 2, 3), (2, 1, 2, 3), (1, 64, 4, 32)])
def test_attention_heads_equal_the_per_head_attention_with_dropout(B, T, heads, hs):
    g = torch.Generator().manual_seed(T)
    qkv = torch.randn(B, T, 3 * heads * hs, generator=g)
    positions = [dropped_positions(heads * B * (r1 - r0) * r1, 0.2, g) for r0, r1 in query_blocks(T)]
    scale = 1 / 0.8
    mask = _block_mask(heads, B, T, positions, scale)
    grad = torch.randn(B, T, heads * hs, generator=g)
    fused_in, plain_in = qkv.clone().requires_grad_(True), qkv.clone().requires_grad_(True)
    fused = AttentionHeads.apply(fused_in, heads, positions, scale)
    plain = _per_head(plain_in, heads, mask)
    fused.backward(grad)
    plain.backward(grad)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused_in.grad, plain_in.grad, rtol=1e-5, atol=1e-5)
    other = _per_head(qkv, heads, _block_mask(heads, B, T, [p[1:] for p in positions], scale))
    if T > 1:  # the masks matter: one position fewer dropped per block moves the output
        assert (other - plain).abs().max() > 1e-3


def test_attention_heads_without_dropout_and_with_every_weight_dropped():
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(2, 6, 3 * 8, generator=g)
    fused_in, plain_in = qkv.clone().requires_grad_(True), qkv.clone().requires_grad_(True)
    AttentionHeads.apply(fused_in, 2, None, 1.0).sum().backward()
    _per_head(plain_in, 2, None).sum().backward()
    torch.testing.assert_close(fused_in.grad, plain_in.grad, rtol=1e-5, atol=1e-6)
    everything = [torch.arange(2 * 2 * (r1 - r0) * r1) for r0, r1 in query_blocks(6)]
    qkv = qkv.clone().requires_grad_(True)
    out = AttentionHeads.apply(qkv, 2, everything, 2.0)
    out.sum().backward()
    assert torch.equal(out, torch.zeros(2, 6, 8))  # no weight left: no output, no gradient
    assert torch.equal(qkv.grad, torch.zeros_like(qkv))


def test_a_second_backward_through_dropped_weights_raises_instead_of_a_wrong_gradient():
    qkv = torch.randn(2, 8, 12, requires_grad=True)
    positions = [dropped_positions(2 * 2 * (r1 - r0) * r1, 0.3, torch.Generator().manual_seed(0))
                 for r0, r1 in query_blocks(8)]
    out = AttentionHeads.apply(qkv, 2, positions, 1 / 0.7)
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
