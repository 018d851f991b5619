"""Tiny trainings logged to a real MLflow store the way the ``trained_model`` asset logs them,
for the tests of ``tracking_pyfunc``, ``tracking_registry`` and ``tracking_compare``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gpt_pipeline.data.corpus import generate_stories
from gpt_pipeline.model.gpt import GPTConfig
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline.tokenizer.bundle import write_bundle
from gpt_pipeline.data.tokens import TokenArray
from gpt_pipeline.tracking.tracker import TrackedRun, Tracker
from gpt_pipeline.tracking.pyfunc import log_pyfunc_model
from gpt_pipeline.training.loop import TrainConfig, TrainResult, train

# lr 1e-2 ends near 4.40 test loss, lr 1e-4 near 4.80: the faster one is clearly better here.
GOOD_LR, BAD_LR = 1e-2, 1e-4


@dataclass
class TinyData:
    tokenizer: BPETokenizer
    tokenizer_path: Path
    train: TokenArray
    test: TokenArray


@dataclass
class LoggedTraining:
    run: TrackedRun
    result: TrainResult
    checkpoint: Path
    model_uri: str


def tiny_data(directory: Path) -> TinyData:
    """60 generated stories, a 120-token tokenizer (saved under ``directory``), a 54/6 split."""
    stories = generate_stories(60)
    tokenizer = BPETokenizer.train(stories, 120)
    ids = tokenizer.encode_batch(stories)
    directory.mkdir(parents=True, exist_ok=True)
    write_bundle(tokenizer, directory)  # bpe_tokenizer.json + its listing and Hugging Face copy
    return TinyData(
        tokenizer,
        directory / "bpe_tokenizer.json",
        TokenArray.from_lists(ids[:54], tokenizer.vocab_size),
        TokenArray.from_lists(ids[54:], tokenizer.vocab_size),
    )


def log_training(tracker: Tracker, data: TinyData, learning_rate: float, directory: Path) -> LoggedTraining:
    """Train a tiny GPT and log it as one ``trained_model`` run with its pyfunc model."""
    model_config = GPTConfig(vocab_size=data.tokenizer.vocab_size, embedding_size=16, context_length=8,
                             head_count=2, block_count=1, feed_forward_multiplier=2)
    train_config = TrainConfig(learning_rate=learning_rate, training_iterations=30, evaluation_interval=15,
                               evaluation_iterations=2, contexts_per_batch=4, seed=5, device="cpu")
    checkpoint_dir = directory / f"checkpoints_{learning_rate}"
    result = train(model_config, train_config, data.train, data.test, checkpoint_dir)
    with tracker.run(f"trained_model-lr{learning_rate}", tags={"dagster.asset_key": "trained_model"}) as run:
        run.log_params({**model_config.to_dict(), **train_config.to_dict()})
        for evaluation in result.evaluations:
            run.log_metrics({"train_loss": evaluation.train_loss, "test_loss": evaluation.test_loss},
                            step=evaluation.step)
        run.log_metrics({"final_train_loss": result.train_loss, "final_test_loss": result.test_loss})
        model_uri = log_pyfunc_model(run, checkpoint_dir / "final.safetensors", data.tokenizer_path)
    return LoggedTraining(run, result, checkpoint_dir / "final.safetensors", model_uri)
