"""Tests for gpt_pipeline.interop.hf: the exported directory loads in ``transformers`` as our model.

Parity is checked on held-out stories (generated after the 50 the tokenizer was trained on):
the same token ids from ``AutoTokenizer`` and the same logits (max difference <= 1e-4) from
``AutoModelForCausalLM``. The model's weights, LayerNorms included, are random and far from
their initial values, so that every tensor's place and orientation matters. Then
``pipeline("text-generation")`` on the folder: its defaults from ``generation_config.json``,
the clear error past the context, and ``generate_sliding``, which goes past it with our draws.
"""

import json

import pytest
import torch

from gpt_pipeline.data.corpus import generate_stories
from gpt_pipeline.interop.hf import check_length, export, generate_sliding
from gpt_pipeline.model.sampling import generate_text
from gpt_pipeline.model.gpt import GPT, GPTConfig
from gpt_pipeline.tokenizer import BPETokenizer

transformers = pytest.importorskip("transformers")

CONFIG = GPTConfig(vocab_size=300, embedding_size=24, context_length=32, head_count=3, block_count=2,
                   feed_forward_multiplier=3, embedding_dropout=0.1, attention_dropout=0.2,
                   feed_forward_dropout=0.15, residual_dropout=0.25)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    stories = generate_stories(70)
    tokenizer = BPETokenizer.train(stories[:50], CONFIG.vocab_size)
    generator = torch.Generator().manual_seed(0)
    model = GPT(CONFIG)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.3)
    model.eval()
    out = tmp_path_factory.mktemp("hf") / "gpt2"
    returned = export(model, tokenizer, out)
    return model, tokenizer, out, returned, stories[50:]


def test_export_returns_the_directory_with_the_five_files(exported):
    _, _, out, returned, _ = exported
    assert returned == out
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json"]


def test_config_json_states_our_architecture(exported):
    _, _, out, _, _ = exported
    config = json.loads((out / "config.json").read_text())
    expected = {"model_type": "gpt2", "activation_function": "relu", "tie_word_embeddings": False,
                "n_positions": 32, "n_embd": 24, "n_layer": 2, "n_head": 3, "n_inner": 72,
                "vocab_size": 300, "layer_norm_epsilon": 1e-5, "embd_pdrop": 0.1, "attn_pdrop": 0.2,
                "resid_pdrop": 0.15}
    assert {k: config[k] for k in expected} == expected
    assert GPTConfig.from_dict(config["gpt_pipeline_config"]) == CONFIG


def test_transformers_logits_equal_ours_on_held_out_stories(exported):
    model, tokenizer, out, _, held_out = exported
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf_model).__name__ == "GPT2LMHeadModel"
    assert hf_model.lm_head.weight.data_ptr() != hf_model.transformer.wte.weight.data_ptr()  # not tied
    windows = [tokenizer.encode(s, unknown="skip")[: CONFIG.context_length] for s in held_out]
    assert all(len(w) == CONFIG.context_length for w in windows)
    idx = torch.tensor(windows)  # [20, 32]
    with torch.no_grad():
        ours = model(idx)  # [20, 32, 300]
        theirs = hf_model(idx).logits  # [20, 32, 300]
        assert ours.abs().max() > 1.0  # logits that a wrong mapping could not match by accident
        assert (ours - theirs).abs().max().item() <= 1e-4
        short = idx[:3, :5]  # shorter than the context, too
        assert (model(short) - hf_model(short).logits).abs().max().item() <= 1e-4


def test_auto_tokenizer_gives_our_ids_and_text(exported):
    _, tokenizer, out, _, held_out = exported
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert (hf_tokenizer.bos_token, hf_tokenizer.eos_token, hf_tokenizer.all_special_ids) == (None, None, [])
    for story in held_out + ['He said  "hi, you"\n\nok.', "  leading spaces", ""]:
        ids = hf_tokenizer(story, verbose=False)["input_ids"]
        assert ids == tokenizer.encode(story, unknown="skip")
        if set(story) <= set(tokenizer.alphabet):
            assert hf_tokenizer.decode(ids) == story
    batch = hf_tokenizer(held_out[:3], verbose=False)["input_ids"]
    assert batch == tokenizer.encode_batch(held_out[:3], unknown="skip")


def test_export_refuses_mismatches_and_writes_nothing(tmp_path):
    tokenizer = BPETokenizer(["a", "b", "c"], [(0, 1), (3, 2), (1, 2), (0, 5)])  # 'abc' twice: 4 and 6
    small = GPTConfig(vocab_size=7, embedding_size=8, context_length=4, head_count=2, block_count=1,
                      feed_forward_multiplier=2)
    with pytest.raises(ValueError, match="tokens 4 and 6 share the text 'abc'"):
        export(GPT(small), tokenizer, tmp_path / "dup")
    with pytest.raises(ValueError, match="the model has vocab_size 8 but the tokenizer has 7 tokens"):
        export(GPT(GPTConfig(**{**small.to_dict(), "vocab_size": 8})), tokenizer, tmp_path / "size")
    assert not (tmp_path / "dup").exists() and not (tmp_path / "size").exists()


@pytest.fixture(scope="module")
def generator_pipeline(exported):
    return transformers.pipeline("text-generation", model=str(exported[2]))


def test_generation_config_is_gpt_rs_sampling(exported, generator_pipeline):
    out = exported[2]
    written = json.loads((out / "generation_config.json").read_text())
    assert {k: written[k] for k in ("do_sample", "temperature", "top_k", "max_length", "eos_token_id",
                                    "pad_token_id")} == {
        "do_sample": True, "temperature": 0.7, "top_k": 0, "max_length": 32, "eos_token_id": None,
        "pad_token_id": None}
    loaded = generator_pipeline.model.generation_config  # what generate() and the pipeline use
    assert (loaded.do_sample, loaded.temperature, loaded.top_k, loaded.max_length) == (True, 0.7, 0, 32)
    assert loaded.eos_token_id is None and loaded.pad_token_id is None  # no token of ours is special


def test_generate_does_not_mask_a_newline_in_the_prompt(exported):
    """With a pad id set, generate() without an attention mask would mask that token in prompts."""
    model, tokenizer, out, _, _ = exported
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = tokenizer.encode("Once\nthe dog")
    assert 0 in ids  # token 0 is the newline: the first character in code-point order
    greedy = hf_model.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False)[0].tolist()
    assert tokenizer.decode(greedy) == generate_text(model, tokenizer, "Once\nthe dog", 5, top_k=1)[0]


def test_pipeline_continues_a_prompt_within_the_context(exported, generator_pipeline):
    _, tokenizer, _, _, _ = exported
    transformers.set_seed(0)
    text = generator_pipeline("Once", max_new_tokens=20)[0]["generated_text"]
    assert text.startswith("Once") and len(text) > len("Once")
    assert set(text) <= set(tokenizer.alphabet)  # decodes to our characters
    transformers.set_seed(0)
    assert generator_pipeline("Once", max_new_tokens=20)[0]["generated_text"] == text  # seeded
    # no max_new_tokens: generation_config's max_length (the context) bounds it; no EOS stops it
    transformers.set_seed(1)
    default = generator_pipeline("Once")[0]["generated_text"]
    assert len(tokenizer.encode(default)) >= 20
    sampled = {generator_pipeline("Once", max_new_tokens=8)[0]["generated_text"] for _ in range(4)}
    assert len(sampled) > 1  # do_sample: not greedy


def test_past_the_context_check_length_refuses_and_generate_sliding_goes_on(exported, generator_pipeline):
    model, tokenizer, _, _, _ = exported
    with pytest.raises(IndexError):  # transformers itself: positions end at n_positions
        generator_pipeline("Once", max_new_tokens=100)
    prompt_tokens = len(tokenizer.encode("Once"))
    check_length(CONFIG.context_length, prompt_tokens, CONFIG.context_length - prompt_tokens)
    with pytest.raises(ValueError, match=rf"prompt \({prompt_tokens} tokens\) \+ max_new_tokens \(100\) = "
                       rf"{prompt_tokens + 100} exceeds the context length 32 .*generate_sliding"):
        check_length(CONFIG.context_length, prompt_tokens, 100)
    # gpt-rs's sliding window, with our generator's draws: the same text for the same seed
    slid = generate_sliding(generator_pipeline, "Once", 100, seed=3)
    assert slid == generate_text(model, tokenizer, "Once", 100, temperature=0.7, seed=3)[0]
    assert len(slid) > 100 and slid.startswith("Once")
    assert generate_sliding(generator_pipeline, "Once", 100, seed=3) == slid
    assert generate_sliding(generator_pipeline, "Once", 100, seed=4) != slid
    top1 = generate_sliding(generator_pipeline, "Once", 40, top_k=1, seed=1)
    assert top1 == generate_text(model, tokenizer, "Once", 40, top_k=1)[0]  # arg-max, any seed
    for bad, message in [("", "non-empty string"), (None, "non-empty string")]:
        with pytest.raises(ValueError, match=message):
            generate_sliding(generator_pipeline, bad, 5)
    with pytest.raises(ValueError, match="token count must be a positive integer, got 0"):
        generate_sliding(generator_pipeline, "Once", 0)
