"""Tests for gpt_pipeline.training.checkpoint: model and training checkpoints, round trips and bad files."""

import json

import pytest
import torch
from safetensors.torch import save_file

from gpt_pipeline.training.checkpoint import (
    load_checkpoint,
    load_training_checkpoint,
    save_checkpoint,
    save_training_checkpoint,
)
from gpt_pipeline.model.gpt import GPT, GPTConfig
from gpt_pipeline.training.loop import TrainConfig, make_optimizer
from gpt_pipeline_tests.file_writers import read_checkpoint_config

TINY = GPTConfig(vocab_size=13, embedding_size=8, context_length=5, head_count=2, block_count=2,
                 feed_forward_multiplier=2)


def _model(seed=0):
    model = GPT(TINY)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    return model


def test_round_trip_keeps_weights_config_and_metadata(tmp_path):
    model = _model()
    path = save_checkpoint(tmp_path / "m.safetensors", model, {"step": "7"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temp file left
    loaded, metadata = load_checkpoint(path)
    assert loaded.config == TINY and read_checkpoint_config(path) == TINY
    assert metadata["step"] == "7" and json.loads(metadata["gpt_config"]) == TINY.to_dict()
    assert not loaded.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    idx = torch.tensor([[1, 2, 3]])
    assert torch.equal(model.eval()(idx), loaded(idx))


def test_metadata_must_be_strings_and_not_reserved(tmp_path):
    with pytest.raises(ValueError, match="must map str to str"):
        save_checkpoint(tmp_path / "m.safetensors", _model(), {"step": 7})
    with pytest.raises(ValueError, match=r"\['gpt_config'\] are reserved"):
        save_checkpoint(tmp_path / "m.safetensors", _model(), {"gpt_config": "{}"})


def test_truncated_and_foreign_files_raise_value_error(tmp_path):
    good = save_checkpoint(tmp_path / "m.safetensors", _model())
    data = good.read_bytes()
    for name, content in [("half", data[: len(data) // 2]), ("header", data[:20]),
                          ("text", b"not a safetensors file at all"), ("empty", b"")]:
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(content)
        with pytest.raises(ValueError, match="not a readable safetensors file"):
            load_checkpoint(bad)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_missing_or_invalid_config_metadata(tmp_path):
    tensors = _model().state_dict()
    save_file(tensors, str(tmp_path / "none.safetensors"))
    with pytest.raises(ValueError, match="no 'gpt_config' metadata"):
        load_checkpoint(tmp_path / "none.safetensors")
    save_file(tensors, str(tmp_path / "json.safetensors"), metadata={"gpt_config": "{oops"})
    with pytest.raises(ValueError, match="invalid 'gpt_config'.*JSON is invalid"):
        read_checkpoint_config(tmp_path / "json.safetensors")
    bad = {**TINY.to_dict(), "head_count": 3}
    save_file(tensors, str(tmp_path / "heads.safetensors"), metadata={"gpt_config": json.dumps(bad)})
    with pytest.raises(ValueError, match="not divisible by head_count=3"):
        load_checkpoint(tmp_path / "heads.safetensors")


def test_tensors_that_do_not_fit_the_config(tmp_path):
    tensors = _model().state_dict()
    other = {**TINY.to_dict(), "vocab_size": 14}
    save_file(tensors, str(tmp_path / "shape.safetensors"), metadata={"gpt_config": json.dumps(other)})
    with pytest.raises(ValueError, match=r"has shape \(13, 8\), the config expects \(14, 8\)"):
        load_checkpoint(tmp_path / "shape.safetensors")
    del tensors["linear_head.weight"]
    save_file(tensors, str(tmp_path / "missing.safetensors"), metadata={"gpt_config": TINY.to_json()})
    with pytest.raises(ValueError, match=r"missing \['linear_head.weight'\]"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_training_checkpoint_restores_optimizer_and_generators(tmp_path):
    model = _model()
    optimizer = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    optimizer.step()
    generator = torch.Generator().manual_seed(11)
    torch.rand(5, generator=generator)  # advance it
    path = save_training_checkpoint(tmp_path / "t.safetensors", model, optimizer,
                                    {"batch": generator}, {"step": 1, "note": "x"})
    expected_next = torch.rand(3, generator=generator)

    fresh = _model(seed=1)
    fresh_optimizer = make_optimizer(fresh, TrainConfig(), torch.device("cpu"))
    fresh_generator = torch.Generator().manual_seed(0)
    state = load_training_checkpoint(path, fresh, fresh_optimizer, {"batch": fresh_generator})
    assert state == {"step": 1, "note": "x"}
    assert torch.equal(torch.rand(3, generator=fresh_generator), expected_next)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, fresh.state_dict()[name]), name
    saved, restored = optimizer.state_dict()["state"], fresh_optimizer.state_dict()["state"]
    assert saved.keys() == restored.keys() and len(saved) == len(list(model.parameters()))
    for index in saved:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(saved[index][key], restored[index][key]), (index, key)
    loaded, _ = load_checkpoint(path)  # a training checkpoint is also a model checkpoint
    assert torch.equal(loaded.linear_head.weight, model.linear_head.weight)


def test_model_checkpoint_cannot_be_resumed(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", _model())
    model = _model()
    optimizer = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    with pytest.raises(ValueError, match="without training state"):
        load_training_checkpoint(path, model, optimizer, {})
