"""Tests for gpt_pipeline.interop.gpt_rs against a per-head implementation of gpt-rs's model.

The oracle is ``gpt_pipeline_tests.reference.ReferenceGPT``, written straight from gpt-rs's
model.rs structure: one query, key and value linear layer per head, heads concatenated, then the
projection; residual dropout on the residual path. It reads the tensors by gpt-rs's names, so
agreement proves that the import maps every tensor to the right place and that our fused model
computes the same function.
"""

import pytest
import torch
from safetensors.torch import save_file

from gpt_pipeline.interop.gpt_rs import expected_names, load_checkpoint
from gpt_pipeline.model.dropout import dropped_positions
from gpt_pipeline_tests.file_writers import save_gpt_rs_checkpoint
from gpt_pipeline.model.gpt import GPT, GPTConfig
from gpt_pipeline_tests.reference import Masks, ReferenceGPT

CONFIG = GPTConfig(vocab_size=20, embedding_size=12, context_length=7, head_count=3, block_count=2,
                   feed_forward_multiplier=3, embedding_dropout=0.1, attention_dropout=0.2,
                   feed_forward_dropout=0.15, residual_dropout=0.25)


def random_gpt_rs_tensors(config, seed=0):
    """A gpt-rs checkpoint's tensors with random values (LayerNorms included), by gpt-rs's names."""
    g = torch.Generator().manual_seed(seed)
    C, hs, V = config.embedding_size, config.head_size, config.vocab_size
    hidden = C * config.feed_forward_multiplier
    shapes = {"transformer.token_embedding.weight": (V, C),
              "transformer.position_embedding.weight": (config.context_length, C),
              "transformer.layer_norm.weight": (C,), "transformer.layer_norm.bias": (C,),
              "transformer.linear_head.weight": (V, C)}
    for i in range(config.block_count):
        b = f"transformer.blocks.{i}."
        for n in (1, 2):
            shapes[f"{b}layer_norm_{n}.weight"] = shapes[f"{b}layer_norm_{n}.bias"] = (C,)
        for h in range(config.head_count):
            for part in ("query", "key", "value"):
                shapes[f"{b}multi_attention_head.heads.{h}.{part}.weight"] = (hs, C)
                shapes[f"{b}multi_attention_head.heads.{h}.{part}.bias"] = (hs,)
        shapes[f"{b}multi_attention_head.projection.weight"] = (C, C)
        shapes[f"{b}multi_attention_head.projection.bias"] = (C,)
        shapes[f"{b}feed_forward.input.weight"], shapes[f"{b}feed_forward.input.bias"] = (hidden, C), (hidden,)
        shapes[f"{b}feed_forward.output.weight"], shapes[f"{b}feed_forward.output.bias"] = (C, hidden), (C,)
    return {name: torch.randn(shape, generator=g) * 0.5 for name, shape in sorted(shapes.items())}


def reference_logits(tensors, config, idx, generator=None):
    """gpt-rs's forward, one head at a time. With ``generator``, dropout is on and draws its masks
    in our model's order (embedding; per block: residual, attention weights of all heads at once,
    residual, feed-forward), so that both see the same masks."""
    model = ReferenceGPT.from_gpt_rs(tensors, config)
    if generator is None:
        return model.eval()(idx)
    return model.train().set_masks(Masks(lambda n, p: dropped_positions(n, p, generator)))(idx)


def test_imported_logits_equal_the_per_head_implementation(tmp_path):
    tensors = random_gpt_rs_tensors(CONFIG)
    save_file(tensors, str(tmp_path / "gpt_rs.safetensors"))
    model = load_checkpoint(tmp_path / "gpt_rs.safetensors", CONFIG)
    idx = torch.randint(0, 20, (3, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(idx), reference_logits(tensors, CONFIG, idx)
        assert theirs.abs().max() > 1.0  # not a degenerate comparison
        assert torch.allclose(ours, theirs, atol=1e-4, rtol=0)
        assert torch.allclose(model(idx[:, :3]), theirs[:, :3], atol=1e-4, rtol=0)  # shorter input


def test_dropout_acts_where_gpt_rs_puts_it(tmp_path):
    tensors = random_gpt_rs_tensors(CONFIG, seed=2)
    save_file(tensors, str(tmp_path / "gpt_rs.safetensors"))
    model = load_checkpoint(tmp_path / "gpt_rs.safetensors", CONFIG).train()
    idx = torch.randint(0, 20, (4, 7), generator=torch.Generator().manual_seed(3))
    model.set_dropout_generator(torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = model(idx)
        theirs = reference_logits(tensors, CONFIG, idx, torch.Generator().manual_seed(5))
        assert torch.allclose(ours, theirs, atol=1e-4, rtol=0)
        assert not torch.allclose(ours, reference_logits(tensors, CONFIG, idx), atol=1e-2)


def test_export_then_import_is_exact(tmp_path):
    model = GPT(CONFIG)
    model.reset_parameters(torch.Generator().manual_seed(4))
    path = save_gpt_rs_checkpoint(tmp_path / "out.safetensors", model)
    back = load_checkpoint(path, CONFIG)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, back.state_dict()[name]), name
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        assert set(handle.keys()) == expected_names(CONFIG)
        # head 1's query rows are rows 4..8 of the fused layer (head size 4)
        assert torch.equal(handle.get_tensor("transformer.blocks.0.multi_attention_head.heads.1.query.weight"),
                           model.blocks[0].attention.qkv.weight[4:8])
        assert torch.equal(handle.get_tensor("transformer.blocks.1.multi_attention_head.heads.0.value.bias"),
                           model.blocks[1].attention.qkv.bias[24:28])
    assert len(expected_names(CONFIG)) == 5 + 2 * (4 + 3 * 3 * 2 + 2 + 4)


def test_files_that_do_not_match(tmp_path):
    tensors = random_gpt_rs_tensors(CONFIG)
    save_file(tensors, str(tmp_path / "ok.safetensors"))
    with pytest.raises(ValueError, match="does not match a gpt-rs model of this config"):
        load_checkpoint(tmp_path / "ok.safetensors", GPTConfig(**{**CONFIG.to_dict(), "block_count": 3}))
    with pytest.raises(ValueError, match=r"has shape \(20, 12\), config expects \(21, 12\)"):
        load_checkpoint(tmp_path / "ok.safetensors", GPTConfig(**{**CONFIG.to_dict(), "vocab_size": 21}))
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_checkpoint(tmp_path / "bad.safetensors", CONFIG)
