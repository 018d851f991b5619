"""Tests for gpt_pipeline.model.gpt: config validation, parameter count, shapes, init, dropout,
causality; the paths that run (training's fused passes and C attention, evaluation, the sampling
loop's C and PyTorch steps) against gpt-rs's model (``gpt_pipeline_tests.reference``), and a change
of gpt.py's math seen by all of them."""

import math

import pytest
import torch
import torch.nn.functional as F

from gpt_pipeline.model import native_build, native_decode
from gpt_pipeline.model.dropout import Dropout, dropped_positions
from gpt_pipeline.model.gpt import GPT, FeedForward, GPTConfig
from gpt_pipeline_tests import reference
from gpt_pipeline_tests.reference import Masks, ReferenceGPT

TINY = GPTConfig(vocab_size=11, embedding_size=8, context_length=6, head_count=2, block_count=2,
                 feed_forward_multiplier=2, embedding_dropout=0.1, attention_dropout=0.1,
                 feed_forward_dropout=0.1, residual_dropout=0.1)


def test_example_config_has_gpt_rs_parameter_count():
    # 2048*128 + 64*128 embeddings, 8 blocks of (2 LN + qkv + projection + 2 FFN linears),
    # final LN, bias-free head: 2,118,912 as gpt-rs reports.
    blocks = 8 * (2 * 256 + (128 * 384 + 384) + (128 * 128 + 128) + (128 * 512 + 512) + (512 * 128 + 128))
    assert GPT(GPTConfig()).num_parameters() == 2048 * 128 + 64 * 128 + blocks + 256 + 128 * 2048
    assert GPT(GPTConfig()).num_parameters() == 2_118_912


def test_default_config_is_gpt_rs_example():
    assert GPTConfig().to_dict() == {
        "vocab_size": 2048, "embedding_size": 128, "context_length": 64, "head_count": 4,
        "block_count": 8, "feed_forward_multiplier": 4, "embedding_dropout": 0.05,
        "attention_dropout": 0.05, "feed_forward_dropout": 0.05, "residual_dropout": 0.05,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"embedding_size": 130}, "not divisible by head_count=4"),
        ({"head_count": 0}, "head_count must be a positive integer, got 0"),
        ({"vocab_size": -3}, "vocab_size must be a positive integer"),
        ({"block_count": 2.0}, "block_count must be a positive integer"),
        ({"residual_dropout": 1.0}, r"residual_dropout must be in \[0, 1\), got 1.0"),
        ({"attention_dropout": -0.1}, "attention_dropout must be in"),
    ],
)
def test_validate_rejects_bad_fields(change, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**change)
    with pytest.raises(ValueError, match=message):
        GPT(GPTConfig(**change))


def test_dict_and_json_round_trip_and_key_checks():
    assert GPTConfig.from_dict(TINY.to_dict()) == TINY
    assert GPTConfig.from_json(TINY.to_json()) == TINY
    with pytest.raises(ValueError, match=r"unknown \['heads'\]"):
        GPTConfig.from_dict({**TINY.to_dict(), "heads": 2})
    with pytest.raises(ValueError, match=r"missing \['vocab_size'\]"):
        GPTConfig.from_dict({k: v for k, v in TINY.to_dict().items() if k != "vocab_size"})
    with pytest.raises(ValueError, match="JSON is invalid"):
        GPTConfig.from_json("{not json")


def test_forward_shape_and_too_long_input():
    model = GPT(TINY)
    assert model(torch.zeros(3, 4, dtype=torch.long)).shape == (3, 4, 11)
    assert model(torch.zeros(1, 6, dtype=torch.long)).shape == (1, 6, 11)
    with pytest.raises(ValueError, match="7 tokens is longer than context_length=6"):
        model(torch.zeros(1, 7, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \[B, T\]"):
        model(torch.zeros(7, dtype=torch.long))


def test_initialisation_matches_gpt_rs():
    model = GPT(GPTConfig())
    weights = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, torch.nn.Linear)])
    assert abs(weights.std().item() - 0.02) < 5e-4 and abs(weights.mean().item()) < 5e-4
    for name, p in model.named_parameters():
        if name.endswith(".bias"):
            assert torch.all(p == 0), name
    assert model.linear_head.bias is None
    assert model.linear_head.weight.data_ptr() != model.token_embedding.weight.data_ptr()
    assert torch.all(model.layer_norm.weight == 1) and model.layer_norm.eps == 1e-5


def test_identity_blocks_give_hand_computed_logits():
    # With every block's linear weights and biases zero, attention and feed-forward add 0, so the
    # logits are head(LayerNorm(token_embedding + position_embedding)).
    config = GPTConfig(vocab_size=3, embedding_size=2, context_length=2, head_count=1, block_count=1,
                       feed_forward_multiplier=1)
    model = GPT(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("blocks.") and "layer_norm" not in name:
                p.zero_()
        model.token_embedding.weight.copy_(torch.tensor([[1.0, 3.0], [2.0, 0.0], [0.0, 0.0]]))
        model.position_embedding.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 2.0]]))
        model.linear_head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    # pos 0, token 0: (1, 3), mean 2, variance 1 -> LayerNorm -> (-1, 1) / sqrt(1 + eps);
    # pos 1, token 1: (2, 0) + (1, 2) = (3, 2), mean 2.5, variance 0.25 -> (0.5, -0.5) / sqrt(0.25 + eps)
    logits = model(torch.tensor([[0, 1]]))
    s0, s1 = 1.0 / math.sqrt(1.0 + 1e-5), 0.5 / math.sqrt(0.25 + 1e-5)
    expected = torch.tensor([[[-s0, s0, 0.0], [s1, -s1, 0.0]]])
    assert torch.allclose(logits, expected, atol=1e-6)


def test_dropout_is_inverted_seeded_and_off_in_eval():
    dropout = Dropout(0.25)
    x = torch.ones(200_000)
    dropout.generator = torch.Generator().manual_seed(3)
    y = dropout(x)
    assert torch.unique(y).tolist() == [0.0, pytest.approx(1.0 / 0.75)]
    assert abs((y == 0).float().mean().item() - 0.25) < 0.005
    dropout.generator = torch.Generator().manual_seed(3)
    assert torch.equal(dropout(x), y)
    dropout.eval()
    assert dropout(x) is x


def test_dropped_positions_are_independent_bernoulli_draws():
    # every one of the 8 drop patterns of 3 elements has probability p^k (1 - p)^(3 - k)
    g, p, draws = torch.Generator().manual_seed(0), 0.3, 20_000
    counts = torch.zeros(8)
    for _ in range(draws):
        pattern = sum(1 << int(i) for i in dropped_positions(3, p, g))
        counts[pattern] += 1
    for pattern in range(8):
        k = bin(pattern).count("1")
        expected = draws * p**k * (1 - p) ** (3 - k)
        assert abs(counts[pattern] - expected) < 4 * math.sqrt(expected), (pattern, counts[pattern], expected)
    positions = dropped_positions(100_000, 0.05, g)
    assert positions.unique().numel() == positions.numel() and 0 <= positions.min() and positions.max() < 100_000
    assert abs(positions.numel() - 5000) < 4 * math.sqrt(100_000 * 0.05 * 0.95)
    assert torch.equal(dropped_positions(1000, 0.5, torch.Generator().manual_seed(1)),
                       dropped_positions(1000, 0.5, torch.Generator().manual_seed(1)))


def test_dropout_masks_follow_the_generator():
    model = GPT(TINY).train()
    idx = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(0))
    outs = []
    for seed in (5, 5, 6):
        model.set_dropout_generator(torch.Generator().manual_seed(seed))
        outs.append(model(idx))
    assert torch.equal(outs[0], outs[1]) and not torch.allclose(outs[0], outs[2])


@pytest.mark.parametrize("train", [False, True])
def test_changing_a_future_token_never_changes_earlier_logits(train):
    model = GPT(TINY).train(train)
    with torch.no_grad():  # make every parameter matter
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.3)
    idx = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(1))
    for t in range(6):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 11
        model.set_dropout_generator(torch.Generator().manual_seed(9))
        a = model(idx)
        model.set_dropout_generator(torch.Generator().manual_seed(9))
        b = model(changed)
        assert torch.allclose(a[:, :t], b[:, :t], atol=1e-6), t
        assert not torch.allclose(a[:, t], b[:, t]), t


def test_training_mode_loss_backpropagates_to_every_parameter():
    model = GPT(TINY).train()
    idx = torch.randint(0, 11, (4, 6), generator=torch.Generator().manual_seed(4))
    loss = F.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_loss_equals_cross_entropy_of_the_logits_with_the_same_gradients():
    config = GPTConfig(vocab_size=600, embedding_size=8, context_length=6, head_count=2, block_count=1,
                       feed_forward_multiplier=2)  # 1,800 positions: chunks of 873, 873 and 54 rows
    model = GPT(config).eval()
    model.reset_parameters(torch.Generator().manual_seed(3))  # not the global generator's state
    with torch.no_grad():
        model.linear_head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    idx = torch.randint(0, 600, (300, 6), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, 600, (300, 6), generator=torch.Generator().manual_seed(2))
    expected = F.cross_entropy(model(idx).flatten(0, 1), targets.flatten())
    expected.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    loss = model.loss(idx, targets)
    loss.backward()
    assert torch.allclose(loss, expected, atol=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[name], atol=1e-7, rtol=1e-4), name
    with torch.no_grad():
        assert torch.allclose(model.loss(idx, targets), expected, atol=1e-5)


def test_no_positions_dropped_at_probability_zero():
    assert dropped_positions(1000, 0.0, torch.Generator().manual_seed(0)).tolist() == []


def _large(config: GPTConfig, seed: int = 0) -> GPT:
    """A model with larger weights than the initialisation: every parameter matters."""
    model = GPT(config)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model


SMALL = GPTConfig(vocab_size=40, embedding_size=16, context_length=8, head_count=2, block_count=2,
                  feed_forward_multiplier=2, embedding_dropout=0.1, attention_dropout=0.1,
                  feed_forward_dropout=0.1, residual_dropout=0.1)


def test_training_mode_without_gradients_equals_gpt_rs_model_mask_for_mask():
    """The plain forward in training mode (what trains off CPU) against the reference given the
    same random draw."""
    model = _large(SMALL, 3).train()
    idx = torch.randint(0, 40, (4, 8), generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(9)
    expected = ReferenceGPT.from_gpt(model).set_masks(Masks(lambda n, p: dropped_positions(n, p, g)))(idx)
    model.set_dropout_generator(torch.Generator().manual_seed(9))
    with torch.no_grad():
        logits = model(idx)
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
        model.set_dropout_generator(torch.Generator().manual_seed(10))
        assert (model(idx) - expected).abs().max() > 1e-2  # other masks, other logits


@pytest.mark.parametrize("step", ["native", "pytorch"])
@pytest.mark.parametrize("prompt_length", [1, 3, 8])
def test_the_sampling_loop_is_gpt_rs_loop_through_either_step(prompt_length, step, monkeypatch):
    """Past the context window: the C step (``native_decode``) and the PyTorch step (``forward``
    with a ``KVCache``; ``GPT_PIPELINE_NATIVE=0``) pick gpt-rs's tokens, sampled and greedy."""
    if step == "pytorch":
        monkeypatch.setenv("GPT_PIPELINE_NATIVE", "0")
    model = _large(SMALL, 5)
    expect_native = step == "native" and native_build.compiler() is not None
    assert (native_decode.unavailable(model.eval()) is None) == expect_native
    peer = ReferenceGPT.from_gpt(model)
    prompts = torch.randint(0, 40, (3, prompt_length), generator=torch.Generator().manual_seed(6))
    for row in range(3):
        prompt = prompts[row : row + 1]
        sampled = model.generate(prompt, 20, 1.0, generator=torch.Generator().manual_seed(7))[0].tolist()
        assert sampled == reference.generate(peer, prompt[0].tolist(), 20, 1.0, torch.Generator().manual_seed(7))
        greedy = model.generate(prompt, 12, top_k=1)[0].tolist()
        assert greedy == reference.generate(peer, prompt[0].tolist(), 12, greedy=True)
    out = model.generate(prompts, 20, 1.0, generator=torch.Generator().manual_seed(7))
    assert out.shape == (3, prompt_length + 20) and len(set(out[:, prompt_length:].flatten().tolist())) > 5


def test_the_loss_off_cpu_float32_is_the_cross_entropy_of_the_logits():
    model = _large(SMALL).double().eval()
    idx = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(1))
    expected = F.cross_entropy(model(idx).flatten(0, 1), idx.flatten())  # float64
    assert torch.allclose(model.loss(idx, idx).double(), expected, atol=1e-6)


def _graph(tensor: torch.Tensor) -> set[str]:
    """The names of the autograd nodes behind ``tensor``: which passes computed it."""
    nodes, todo = set(), [tensor.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in nodes:
            nodes.add(node)
            todo += [n for n, _ in node.next_functions]
    return {node.name() for node in nodes}


def test_a_change_of_gpt_py_math_is_seen_by_training_evaluation_and_sampling(monkeypatch):
    """Swap the feed-forward's activation in gpt.py's module (and in gpt-rs's model): the training
    step's loss and gradients, the evaluation logits and the sampled tokens all change, to those
    of gpt-rs's model with the same activation; the kernels that compute ReLU step aside."""
    config = GPTConfig(vocab_size=40, embedding_size=16, context_length=8, head_count=2, block_count=2,
                       feed_forward_multiplier=2, embedding_dropout=0.0, attention_dropout=0.0,
                       feed_forward_dropout=0.0, residual_dropout=0.0)
    model = _large(config, 11)
    idx = torch.randint(0, 40, (3, 8), generator=torch.Generator().manual_seed(12))
    targets = torch.randint(0, 40, (3, 8), generator=torch.Generator().manual_seed(13))

    def paths(m):
        m.train().zero_grad()
        loss = m.loss(idx, targets) if isinstance(m, GPT) else F.cross_entropy(m(idx).flatten(0, 1), targets.flatten())
        loss.backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters()} if isinstance(m, GPT) else m.gradients_as_gpt()
        with torch.no_grad():
            logits = m.eval()(idx)
        if isinstance(m, GPT):
            tokens = m.generate(idx[:1, :2], 20, top_k=1)[0].tolist()
        else:
            tokens = reference.generate(m, idx[0, :2].tolist(), 20, greedy=True)
        return _graph(loss), loss.item(), grads, logits, tokens

    graph, *before = paths(model)
    assert "FeedForwardResidualBackward" in graph  # CPU training ran the fused passes
    kernel = native_decode.supports(model.eval())
    monkeypatch.setattr(FeedForward, "activation", staticmethod(torch.tanh))
    monkeypatch.setattr(reference.FeedForward, "activation", staticmethod(torch.tanh))
    graph, *after = paths(model)
    _, *expected = paths(ReferenceGPT.from_gpt(model))
    assert "FeedForwardResidualBackward" not in graph and not native_decode.supports(model.eval())
    assert abs(after[0] - before[0]) > 1e-3 and abs(after[0] - expected[0]) < 1e-5  # training's loss
    for name, grad in after[1].items():  # and gradients
        torch.testing.assert_close(grad, expected[1][name], rtol=1e-4, atol=1e-5, msg=name)
    assert (after[2] - before[2]).abs().max() > 1e-2  # evaluation
    torch.testing.assert_close(after[2], expected[2], rtol=1e-5, atol=1e-5)
    assert after[3] != before[3] and after[3] == expected[3]  # sampling
    assert kernel == (native_build.compiler() is not None)  # unpatched, the C step sampled
