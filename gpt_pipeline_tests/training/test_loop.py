"""Tests for gpt_pipeline.training.loop: configs, data checks, a learning run, determinism, resume."""

import os
import select
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from gpt_pipeline.training.checkpoint import load_checkpoint
from gpt_pipeline.model.gpt import GPT, GPTConfig
from gpt_pipeline.data.tokens import TokenArray
from gpt_pipeline.training.loop import (
    TrainConfig,
    learning_rate_at,
    make_optimizer,
    resolve_device,
    train,
)

MODEL = GPTConfig(vocab_size=16, embedding_size=32, context_length=16, head_count=2, block_count=2,
                  feed_forward_multiplier=2)
FAST = dict(learning_rate=3e-3, training_iterations=60, evaluation_interval=20,
            evaluation_iterations=2, contexts_per_batch=8, device="cpu")


def counting_stories(count, seed, low=20, high=40):
    """Stories that count upwards modulo 16 from a random start: easy to learn, never seen text."""
    rng = np.random.default_rng(seed)
    stories = []
    for _ in range(count):
        start, length = rng.integers(0, 16), rng.integers(low, high)
        stories.append([(start + j) % 16 for j in range(length)])
    return TokenArray.from_lists(stories, 16)


TRAIN, TEST = counting_stories(120, 0), counting_stories(30, 1)


def losses(result):
    return [(e.step, e.train_loss, e.test_loss) for e in result.evaluations]


def test_defaults_are_gpt_rs_example_values():
    c = TrainConfig()
    assert (c.learning_rate, c.training_iterations, c.evaluation_interval, c.evaluation_iterations,
            c.contexts_per_batch) == (2e-4, 60000, 500, 5, 64)
    assert (c.lr_schedule, c.grad_clip, c.grad_clip_value, c.weight_decay, c.resume) == (
        "constant", "value", 0.5, 0.1, True)
    assert (c.num_processes, c.distributed_backend) == (1, "auto")  # one process: no torchrun
    assert TrainConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"training_iterations": 0}, "training_iterations must be a positive integer, got 0"),
        ({"learning_rate": -1.0}, "learning_rate must be a finite number > 0"),
        ({"lr_schedule": "linear"}, "lr_schedule must be one of"),
        ({"grad_clip": "global"}, "grad_clip must be one of"),
        ({"device": "tpu"}, "device must be 'auto', 'cpu'"),
        ({"warmup_iterations": -1}, "warmup_iterations must be an integer >= 0"),
        ({"precision": "float16"}, "precision must be one of"),
        ({"num_processes": 0}, "num_processes must be a positive integer, got 0"),
        ({"num_processes": 9, "contexts_per_batch": 8}, "num_processes=9 is more than contexts_per_batch=8"),
        ({"num_processes": 2, "device": "mps"}, "num_processes > 1 needs device 'cpu' or 'cuda', got 'mps'"),
        ({"distributed_backend": "mpi"}, r"distributed_backend must be one of .*, got 'mpi'"),
    ],
)
def test_train_config_validation(change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**change)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_learning_rate_schedules():
    constant = TrainConfig(learning_rate=0.1, training_iterations=10)
    assert [learning_rate_at(s, constant) for s in (0, 5, 9)] == [0.1, 0.1, 0.1]
    warm = TrainConfig(learning_rate=0.1, training_iterations=10, warmup_iterations=4)
    assert [learning_rate_at(s, warm) for s in (0, 1, 3, 4, 9)] == pytest.approx([0.025, 0.05, 0.1, 0.1, 0.1])
    cosine = TrainConfig(learning_rate=1.0, training_iterations=12, warmup_iterations=2,
                         lr_schedule="cosine", min_learning_rate=0.2)
    # after warm-up: 0.2 + 0.4 * (1 + cos(pi * (step - 2) / 10))
    assert [learning_rate_at(s, cosine) for s in (2, 7, 12)] == pytest.approx([1.0, 0.6, 0.2])


def test_weight_decay_only_on_linear_weights():
    model = GPT(MODEL)
    optimizer = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert names == {n for n, p in model.named_parameters()
                     if n.endswith("weight") and p.dim() == 2 and "embedding" not in n}
    assert "linear_head.weight" in names and "blocks.0.attention.qkv.weight" in names
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["eps"] == 1e-8


def test_data_is_checked_before_training():
    short = counting_stories(50, 2, low=5, high=10)
    with pytest.raises(ValueError, match=r"no train story has context_length \+ 1 = 17 tokens.*longest has 9"):
        train(MODEL, TrainConfig(**FAST), short, TEST)
    with pytest.raises(ValueError, match="contexts_per_batch=8 is larger than the 5 test stories"):
        train(MODEL, TrainConfig(**FAST), TRAIN, counting_stories(5, 3))
    big = TokenArray.from_lists([[17] * 20] * 10, 32)
    with pytest.raises(ValueError, match="token id 17 >= vocab_size=16"):
        train(MODEL, TrainConfig(**FAST), big, TEST)


def test_short_run_learns_and_checkpoints_every_evaluation(tmp_path):
    seen = []
    result = train(MODEL, TrainConfig(**{**FAST, "training_iterations": 50}), TRAIN, TEST,
                   checkpoint_dir=tmp_path, on_evaluation=seen.append)
    assert [e.step for e in result.evaluations] == [0, 20, 40, 50] and seen == result.evaluations
    first, last = result.evaluations[0], result.evaluations[-1]
    assert first.train_loss > 2.5 and last.train_loss < 0.5 * first.train_loss  # ln 16 = 2.77
    assert last.test_loss < 0.5 * first.test_loss
    assert result.steps == 50 and result.train_loss == last.train_loss and result.tokens_per_second > 0
    assert first.tokens_per_second is None and last.remaining_seconds == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "0.safetensors", "20.safetensors", "40.safetensors", "final.safetensors"]
    final, _ = load_checkpoint(result.checkpoint_path)
    idx = torch.arange(16).view(1, 16)
    assert torch.equal(final(idx), result.model(idx))


def test_same_seed_same_losses_other_seed_other_losses():
    a = train(MODEL, TrainConfig(**FAST), TRAIN, TEST)
    b = train(MODEL, TrainConfig(**FAST), TRAIN, TEST)
    c = train(MODEL, TrainConfig(**{**FAST, "seed": 7}), TRAIN, TEST)
    assert losses(a) == losses(b) and losses(a) != losses(c)


def test_options_change_training():
    base = losses(train(MODEL, TrainConfig(**FAST), TRAIN, TEST))
    for option in ({"grad_clip": "norm", "grad_clip_value": 0.1}, {"lr_schedule": "cosine"},
                   {"warmup_iterations": 10}, {"grad_clip_value": 1e-3}):
        result = train(MODEL, TrainConfig(**{**FAST, **option}), TRAIN, TEST)
        assert losses(result) != base, option
        assert result.evaluations[-1].train_loss < result.evaluations[0].train_loss, option


class Interrupt(Exception):
    pass


def test_resume_after_an_interruption_gives_the_same_losses(tmp_path):
    config = TrainConfig(**FAST)
    expected = losses(train(MODEL, config, TRAIN, TEST))

    def stop_at_40(evaluation):
        if evaluation.step == 40:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(MODEL, config, TRAIN, TEST, checkpoint_dir=tmp_path, on_evaluation=stop_at_40)
    seen = []
    resumed = train(MODEL, config, TRAIN, TEST, checkpoint_dir=tmp_path, on_evaluation=seen.append)
    assert resumed.resumed_from == 40 and [e.step for e in seen] == [60]
    assert losses(resumed) == expected
    # a finished run resumes to its final checkpoint without training again
    again = train(MODEL, config, TRAIN, TEST, checkpoint_dir=tmp_path, on_evaluation=seen.append)
    assert again.resumed_from == 60 and losses(again) == expected and len(seen) == 1


def test_resume_refuses_another_configuration_and_fresh_start_clears(tmp_path):
    train(MODEL, TrainConfig(**FAST), TRAIN, TEST, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"different \['learning_rate'\]"):
        train(MODEL, TrainConfig(**{**FAST, "learning_rate": 1e-3}), TRAIN, TEST, checkpoint_dir=tmp_path)
    fresh = train(MODEL, TrainConfig(**{**FAST, "learning_rate": 1e-3, "resume": False,
                                        "training_iterations": 30}), TRAIN, TEST, checkpoint_dir=tmp_path)
    assert fresh.resumed_from is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.safetensors", "20.safetensors", "final.safetensors"]


CHILD = """
import sys, time
import numpy as np
from pathlib import Path
from gpt_pipeline.model.gpt import GPTConfig
from gpt_pipeline.data.tokens import TokenArray
from gpt_pipeline.training.loop import TrainConfig, train

directory = Path(sys.argv[1])
load = lambda name: TokenArray(np.load(directory / f"{name}_tokens.npy", allow_pickle=False),
                               np.load(directory / f"{name}_offsets.npy", allow_pickle=False))

def slow_after_40(evaluation):
    if evaluation.step >= 40:
        print("reached", evaluation.step, flush=True)
        time.sleep(60)  # the parent kills us here, mid-run

train(GPTConfig(**{model}), TrainConfig(**{train_config}), load("train"), load("test"),
      checkpoint_dir=directory / "checkpoints", on_evaluation=slow_after_40)
"""


def test_run_killed_with_sigkill_resumes_with_the_same_losses(tmp_path):
    config = TrainConfig(**FAST)
    for name, data in (("train", TRAIN), ("test", TEST)):
        np.save(tmp_path / f"{name}_tokens.npy", data.tokens)
        np.save(tmp_path / f"{name}_offsets.npy", data.offsets)
    script = CHILD.replace("{model}", repr(MODEL.to_dict())).replace("{train_config}", repr(config.to_dict()))
    child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([child.stdout], [], [], 120)  # the child checkpoints step 40
        assert ready, "the training subprocess did not reach step 40 in 120 s"
        line = child.stdout.readline()
        assert line.strip() == "reached 40", line
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["0.safetensors", "20.safetensors", "40.safetensors"]
    resumed = train(MODEL, config, TRAIN, TEST, checkpoint_dir=checkpoints)
    assert resumed.resumed_from == 40
    assert losses(resumed) == losses(train(MODEL, config, TRAIN, TEST))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_bfloat16_needs_cuda_and_falls_back_to_float32(caplog):
    bf16 = train(MODEL, TrainConfig(**{**FAST, "precision": "bfloat16", "training_iterations": 20}), TRAIN, TEST)
    fp32 = train(MODEL, TrainConfig(**{**FAST, "training_iterations": 20}), TRAIN, TEST)
    assert losses(bf16) == losses(fp32)
    assert "precision='bfloat16' needs CUDA" in caplog.text


def test_result_fields_key_checkpoints_and_resume():
    from gpt_pipeline import fields
    from gpt_pipeline.training.loop import resume_fields

    every = list(fields.fields_of(TrainConfig))
    placement = ("device", "resume", "threads", "nnodes", "node_rank", "rdzv_endpoint")  # where and whether, not what
    assert fields.result_fields(TrainConfig) == tuple(n for n in every if n not in placement)
    # the fields a resumed run must share with its checkpoint, as before they were derived
    assert resume_fields(TrainConfig()) == ("learning_rate", "contexts_per_batch", "seed", "lr_schedule",
                                            "warmup_iterations", "min_learning_rate", "grad_clip",
                                            "grad_clip_value", "weight_decay")
    assert "training_iterations" in resume_fields(TrainConfig(lr_schedule="cosine"))


def test_progress_is_reported_between_evaluations():
    seen, evaluations = [], []
    result = train(MODEL, TrainConfig(**FAST), TRAIN, TEST, on_evaluation=evaluations.append,
                   on_progress=seen.append, progress_seconds=0)
    assert [p.step for p in seen] == list(range(1, 61)) and len(evaluations) == 4
    assert all(p.total_steps == 60 and p.resumed_from is None for p in seen)
    assert all(0 < p.loss < 5 and p.tokens_per_second > 0 and p.remaining_seconds >= 0 for p in seen)
    assert seen[-1].remaining_seconds == 0 and seen[-1].loss < seen[0].loss
    assert seen[-1].elapsed_seconds <= result.seconds
    assert seen[9].line().startswith("step 10/60: loss ") and "tokens/s, elapsed" in seen[9].line()
    quiet = []  # reports go by time: none within an hour
    train(MODEL, TrainConfig(**{**FAST, "training_iterations": 20}), TRAIN, TEST, on_progress=quiet.append,
          progress_seconds=3600)
    assert quiet == []


def test_resume_is_reported_with_its_step(tmp_path):
    config = TrainConfig(**FAST)

    def stop_at_40(evaluation):
        if evaluation.step == 40:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(MODEL, config, TRAIN, TEST, checkpoint_dir=tmp_path, on_evaluation=stop_at_40)
    seen = []
    train(MODEL, config, TRAIN, TEST, checkpoint_dir=tmp_path, on_progress=seen.append, progress_seconds=0)
    assert seen[0].resumed_from == 40 and seen[0].step == 40 and seen[0].elapsed_seconds > 0
    assert seen[0].line().startswith(f"resumed from step 40/60 (checkpoint in {tmp_path}; ")
    assert [p.step for p in seen[1:]] == list(range(41, 61)) and seen[1].resumed_from is None


def test_evaluations_carry_bits_per_character_of_each_split(tmp_path):
    """Each evaluation's bpc is its loss / ln 2 x the split's tokens / its characters; without
    characters there is none."""
    import math

    characters = {"train": 3 * len(TRAIN.tokens), "test": 2 * len(TEST.tokens)}  # 3 and 2 characters a token
    config = TrainConfig(**{**FAST, "training_iterations": 20, "evaluation_interval": 10})
    result = train(MODEL, config, TRAIN, TEST, tmp_path / "c", characters=characters)
    assert [e.step for e in result.evaluations] == [0, 10, 20]
    for e in result.evaluations:
        assert e.train_bits_per_character == pytest.approx(e.train_loss / math.log(2) / 3, rel=1e-12)
        assert e.test_bits_per_character == pytest.approx(e.test_loss / math.log(2) / 2, rel=1e-12)
    resumed = train(MODEL, config, TRAIN, TEST, tmp_path / "c", characters=characters)
    assert resumed.evaluations == result.evaluations  # restored from the checkpoint with their bpc
    plain = train(MODEL, config, TRAIN, TEST)
    assert all(e.test_bits_per_character is None for e in plain.evaluations)
