"""Tests for gpt_pipeline.model.native_decode: the C kernel's logits against the plain forward,
``GPT.generate``'s tokens through it against gpt-rs's loop (``gpt_pipeline_tests.reference``) and
against the loop's PyTorch step, and what it refuses."""

import pytest
import torch

from gpt_pipeline.model import native_build, native_decode
from gpt_pipeline.model.gpt import GPT, GPTConfig
from gpt_pipeline.model.native_decode import Session
from gpt_pipeline_tests import reference
from gpt_pipeline_tests.reference import ReferenceGPT

pytestmark = pytest.mark.skipif(native_build.compiler() is None, reason="no C compiler to build the kernel")

# head sizes 4, 8 and 16 (vectors of 4, 8 and 16 floats where the CPU has them); vocabularies that
# are and are not a multiple of the vector (the head's last columns one at a time); one block
CONFIGS = {
    "heads of 4, odd vocabulary": GPTConfig(vocab_size=11, embedding_size=8, context_length=6, head_count=2,
                                            block_count=2, feed_forward_multiplier=2),
    "heads of 8": GPTConfig(vocab_size=40, embedding_size=16, context_length=8, head_count=2, block_count=3),
    "heads of 16, one block": GPTConfig(vocab_size=70, embedding_size=32, context_length=20, head_count=2,
                                        block_count=1, feed_forward_multiplier=3),
}


def _model(config, seed=0):
    model = GPT(config).eval()
    model.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():  # larger weights than the initialisation: every parameter matters
        g = torch.Generator().manual_seed(seed + 1)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model


@pytest.mark.parametrize("name", CONFIGS)
def test_window_and_cached_steps_give_the_plain_forwards_last_logits(name):
    config = CONFIGS[name]
    model = _model(config)
    assert native_decode.unavailable(model) is None
    idx = torch.randint(0, config.vocab_size, (3, config.context_length), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(idx)  # [3, ctx, V]
        window = Session(model, 3).logits(idx, 0)  # the whole window at once
        torch.testing.assert_close(window, full[:, -1], rtol=1e-5, atol=1e-5)
        session = Session(model, 3)  # a prompt of 2, then 2 positions, then one at a time
        torch.testing.assert_close(session.logits(idx[:, :2], 0), full[:, 1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(session.logits(idx[:, 2:4], 2), full[:, 3], rtol=1e-5, atol=1e-5)
        for t in range(4, config.context_length):
            torch.testing.assert_close(session.logits(idx[:, t : t + 1], t), full[:, t], rtol=1e-5, atol=1e-5)
        assert (full[:, -1] - full[:, -2]).abs().max() > 0.1  # the positions differ: a real check


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("prompt_length", [1, 5, 25])
def test_tokens_are_gpt_rs_loops_greedy_and_sampled(name, prompt_length):
    """Past the window (the sliding phase), from prompts shorter and longer than it: greedy and
    seeded sampling pick gpt-rs's tokens; a batch row is the row sampled alone when greedy."""
    config = CONFIGS[name]
    model = _model(config, 4)
    peer = ReferenceGPT.from_gpt(model)
    prompt = torch.randint(0, config.vocab_size, (1, prompt_length), generator=torch.Generator().manual_seed(5))
    count = 2 * config.context_length + 5
    assert native_decode.supports(model)  # GPT.generate steps through the kernel
    greedy = model.generate(prompt, count, top_k=1)[0].tolist()
    assert greedy == reference.generate(peer, prompt[0].tolist(), count, greedy=True)
    sampled = model.generate(prompt, count, 0.9, generator=torch.Generator().manual_seed(6))[0]
    expected = reference.generate(peer, prompt[0].tolist(), count, 0.9, torch.Generator().manual_seed(6))
    assert sampled.tolist() == expected and len(set(expected[prompt_length:])) > 2
    batch = torch.cat([prompt, prompt.flip(1)])  # two rows
    both = model.generate(batch, count, top_k=1)
    assert both[0].tolist() == greedy
    assert both[1].tolist() == model.generate(batch[1:], count, top_k=1)[0].tolist()


def test_same_draws_as_the_pytorch_step_and_any_thread_count(monkeypatch):
    model = _model(CONFIGS["heads of 8"], 7)
    prompts = torch.randint(0, 40, (4, 3), generator=torch.Generator().manual_seed(8))
    native = model.generate(prompts, 30, 1.0, generator=torch.Generator().manual_seed(9))
    with monkeypatch.context() as patch:
        patch.setenv("GPT_PIPELINE_NATIVE", "0")  # GPT.generate steps through GPT.forward
        assert not native_decode.supports(model)
        pytorch = model.generate(prompts, 30, 1.0, generator=torch.Generator().manual_seed(9))
    assert torch.equal(native, pytorch) and len(set(native[:, 3:].flatten().tolist())) > 5
    threads = torch.get_num_threads()
    idx = torch.randint(0, 40, (4, 8), generator=torch.Generator().manual_seed(10))
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(Session(model, 4).logits(idx, 0).clone())
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], r) for r in results[1:])  # bit for bit


def test_changed_weights_are_packed_again():
    """The kernel's transposed copies follow the parameters: an optimizer step (in place) and a
    loaded state dict each give the new model's logits."""
    model = _model(CONFIGS["heads of 8"])
    idx = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(11))
    before = Session(model, 2).logits(idx, 0).clone()
    model.train()
    model.loss(idx, idx).backward()
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    model.eval()
    with torch.no_grad():
        after = Session(model, 2).logits(idx, 0).clone()
        torch.testing.assert_close(after, model(idx)[:, -1], rtol=1e-5, atol=1e-5)
        assert (after - before).abs().max() > 1e-3
        other = _model(CONFIGS["heads of 8"], 12)
        model.load_state_dict(other.state_dict())
        torch.testing.assert_close(Session(model, 2).logits(idx, 0), other(idx)[:, -1], rtol=1e-5, atol=1e-5)


def test_refusals_bad_ids_and_the_fallback(monkeypatch):
    model = _model(CONFIGS["heads of 8"])
    with pytest.raises(IndexError, match=r"token ids must be in 0\.\.39, got 0\.\.40"):
        Session(model, 1).logits(torch.tensor([[0, 40]]), 0)
    with pytest.raises(ValueError, match=r"start \+ T <= 8, got torch.int64 \(1, 3\) at start=6"):
        Session(model, 1).logits(torch.tensor([[0, 1, 2]]), 6)
    assert native_decode.unavailable(model.train()) == "the model is in training mode (dropout on)"
    model.eval().double()
    assert "float32 on CPU" in native_decode.unavailable(model)
    odd = GPT(GPTConfig(vocab_size=9, embedding_size=6, context_length=4, head_count=2, block_count=1)).eval()
    assert native_decode.unavailable(odd) == "head size 3 is not a multiple of 4"
    monkeypatch.setenv("GPT_PIPELINE_NATIVE", "0")  # the user's switch: GPT.generate steps through GPT.forward
    model.float()
    assert "GPT_PIPELINE_NATIVE=0" in native_decode.unavailable(model)
    out = model.generate(torch.tensor([[1]]), 12, top_k=1)[0].tolist()
    assert out == reference.generate(ReferenceGPT.from_gpt(model), [1], 12, greedy=True)


def test_the_thread_count_is_the_faster_of_the_probes():
    choice = native_decode.ThreadChoice(4, period=10, probes=2)
    picked = []
    for _ in range(20):  # all threads take 3 s a token, one thread 1 s: one thread wins each probe
        threads = choice.next()
        picked.append(threads)
        choice.record(threads, 3.0 if threads == 4 else 1.0)
    assert picked[:4] == [4, 1, 4, 1] and picked[4:10] == [1] * 6  # probe, then the faster
    assert picked[10:14] == [4, 1, 4, 1] and picked[14:] == [1] * 6  # probed again every period
    alone = native_decode.ThreadChoice(4, period=10, probes=2)
    for _ in range(10):
        threads = alone.next()
        alone.record(threads, 1.0 if threads == 4 else 1.7)
    assert alone.best == 4
    assert native_decode.ThreadChoice(1).next() == 1
