"""gpt-rs's training loop: AdamW, clamped gradients, periodic evaluation and resumable checkpoints.

What ``train`` does, as gpt-rs does it:

- AdamW (betas 0.9/0.999, eps 1e-8), weight decay on the linear layers' weight matrices only
  (not on biases, LayerNorms or embeddings), constant learning rate;
- each step: one batch from ``gpt_pipeline.tokens.sample_batch`` (distinct stories, one random
  window each), cross-entropy over all positions, every gradient element clamped to [-0.5, 0.5];
- at step 0 and every ``evaluation_interval`` steps, and at the end: the mean train and test loss
  over ``evaluation_iterations`` batches each, dropout off, and a checkpoint
  ``<step>.safetensors`` (``final.safetensors`` at the end) in ``checkpoint_dir``.

Beyond gpt-rs, as options: linear warm-up and cosine decay of the learning rate, clipping by
global norm instead of by value, bfloat16 autocast on CUDA, and resuming: a checkpoint holds the
model, the optimizer, the step and every random generator, so a run that is killed and started
again with the same configs and ``checkpoint_dir`` continues from its latest checkpoint and gives
the same losses as an uninterrupted run. Every random number comes from generators seeded from
``TrainConfig.seed``; the global torch generator is never touched.

Not here: where checkpoints live or how progress is shown (the caller passes ``checkpoint_dir``
and ``on_evaluation``), the model itself (``model.py``), the file format (``checkpoint.py``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from gpt_pipeline.checkpoint import (
    FINAL_CHECKPOINT,
    load_training_checkpoint,
    save_training_checkpoint,
    step_checkpoints,
    training_checkpoints,
)
from gpt_pipeline.devices import resolve_device  # noqa: F401 - also part of this module's API
from gpt_pipeline.model import GPT, GPTConfig
from gpt_pipeline.tokens import TokenArray, sample_batch

logger = logging.getLogger(__name__)

ADAM_BETAS = (0.9, 0.999)  # gpt-rs (tch's AdamW defaults)
ADAM_EPS = 1e-8
# fields that change the numbers a resumed run computes: they must match the checkpoint's
_RESUME_FIELDS = ("learning_rate", "contexts_per_batch", "seed", "lr_schedule", "warmup_iterations",
                  "min_learning_rate", "grad_clip", "grad_clip_value", "weight_decay")


@dataclass
class TrainConfig:
    """gpt-rs's ``train_config.ron`` (its example values) plus seed, device and our options."""

    learning_rate: float = 2e-4  # AdamW learning rate (the peak one with a schedule)
    training_iterations: int = 60000  # optimizer steps
    evaluation_interval: int = 500  # steps between evaluations + checkpoints (step 0 included)
    evaluation_iterations: int = 5  # batches of train and of test averaged per evaluation
    contexts_per_batch: int = 64  # stories (one window each) per batch
    seed: int = 1234  # seeds initialisation, batches, dropout and evaluation batches
    device: str = "auto"  # "auto" (cuda, then mps, then cpu), "cpu", "cuda", "cuda:N", "mps"
    resume: bool = True  # continue from the latest checkpoint in checkpoint_dir, if any
    lr_schedule: str = "constant"  # "constant" (gpt-rs) or "cosine" (decay to min_learning_rate)
    warmup_iterations: int = 0  # linear warm-up steps from learning_rate / warmup to learning_rate
    min_learning_rate: float = 2e-5  # where "cosine" ends
    grad_clip: str = "value"  # "value" (gpt-rs: clamp every element), "norm" (global norm), "none"
    grad_clip_value: float = 0.5  # the clamp bound, or the maximum norm
    weight_decay: float = 0.1  # AdamW decay on linear weight matrices only
    precision: str = "float32"  # "float32" or "bfloat16" (autocast, CUDA only; else float32)

    def validate(self) -> TrainConfig:
        for name in ("training_iterations", "evaluation_interval", "evaluation_iterations",
                     "contexts_per_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        for name in ("warmup_iterations", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"TrainConfig.{name} must be an integer >= 0, got {value!r}")
        for name in ("learning_rate", "grad_clip_value"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
                raise ValueError(f"TrainConfig.{name} must be a finite number > 0, got {value!r}")
        for name in ("min_learning_rate", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
                raise ValueError(f"TrainConfig.{name} must be a finite number >= 0, got {value!r}")
        choices = {"lr_schedule": ("constant", "cosine"), "grad_clip": ("value", "norm", "none"),
                   "precision": ("float32", "bfloat16")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        resolve_device(self.device, check_available=False)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}")
        return cls(**values).validate()


@dataclass
class Evaluation:
    """One evaluation: mean losses at ``step`` (optimizer steps done) and progress figures."""

    step: int
    train_loss: float
    test_loss: float
    tokens_per_second: float | None  # training throughput so far in this process; None before any step
    elapsed_seconds: float  # wall time of the run so far, earlier (resumed) sessions included
    remaining_seconds: float | None  # estimate for the steps left; None before any step
    learning_rate: float = 0.0  # the learning rate of the next step


@dataclass
class TrainResult:
    model: GPT  # the trained model, in eval mode, on the training device
    evaluations: list[Evaluation]  # every evaluation of the run, resumed sessions included
    train_loss: float  # final evaluation
    test_loss: float
    seconds: float  # wall time of the whole run, resumed sessions included
    tokens_per_second: float | None  # training throughput in this process; None if no step ran
    steps: int  # optimizer steps done in total
    resumed_from: int | None = None  # the step this process resumed from, if it did
    checkpoint_path: Path | None = None  # final.safetensors, when checkpoint_dir was given


def learning_rate_at(step: int, config: TrainConfig) -> float:
    """The learning rate of optimizer step ``step`` (0-based).

    Example:
        >>> c = TrainConfig(learning_rate=1.0, training_iterations=12, warmup_iterations=2,
        ...                 lr_schedule="cosine", min_learning_rate=0.0)
        >>> [round(learning_rate_at(s, c), 3) for s in (0, 1, 2, 7, 12)]
        [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    if step < config.warmup_iterations:
        return config.learning_rate * (step + 1) / config.warmup_iterations
    if config.lr_schedule == "constant":
        return config.learning_rate
    decay_steps = max(1, config.training_iterations - config.warmup_iterations)
    progress = min(1.0, (step - config.warmup_iterations) / decay_steps)
    low = config.min_learning_rate
    return low + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.learning_rate - low)


def validate_training_data(
    train_data: TokenArray, test_data: TokenArray, model_config: GPTConfig, contexts_per_batch: int
) -> None:
    """``ValueError`` unless both splits hold ``contexts_per_batch`` stories of at least
    ``context_length + 1`` tokens and every token id is below ``vocab_size``."""
    window = model_config.context_length + 1
    for split, data in (("train", train_data), ("test", test_data)):
        lengths = data.lengths
        eligible = int((lengths >= window).sum())
        longest = int(lengths.max()) if len(lengths) else 0
        if eligible == 0:
            raise ValueError(
                f"no {split} story has context_length + 1 = {window} tokens "
                f"({len(data)} stories, the longest has {longest}): lower context_length"
            )
        if eligible < contexts_per_batch:
            raise ValueError(
                f"contexts_per_batch={contexts_per_batch} is larger than the {eligible} {split} "
                f"stories with at least context_length + 1 = {window} tokens"
            )
        if len(data.tokens) and int(data.tokens.max()) >= model_config.vocab_size:
            raise ValueError(
                f"{split} data holds token id {int(data.tokens.max())} >= vocab_size="
                f"{model_config.vocab_size}"
            )


def make_optimizer(model: GPT, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on the linear layers' weight matrices only."""
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    decay = [p for p in model.parameters() if id(p) in linear_weights]
    no_decay = [p for p in model.parameters() if id(p) not in linear_weights]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type in ("cpu", "cuda")  # one kernel per step instead of one per tensor
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=ADAM_BETAS, eps=ADAM_EPS,
                             fused=fused)


def _check_resumable(path: Path, state: dict, model_config: GPTConfig, config: TrainConfig) -> None:
    saved_model = state.get("model_config")
    if saved_model != model_config.to_dict():
        raise ValueError(f"{path} was trained with model config {saved_model}, not "
                         f"{model_config.to_dict()}; use another checkpoint_dir or resume=False")
    saved = state.get("train_config", {})
    names = _RESUME_FIELDS + (("training_iterations",) if config.lr_schedule == "cosine" else ())
    differ = [n for n in names if saved.get(n) != getattr(config, n)]
    if differ:
        raise ValueError(f"{path} was trained with different {differ} ({[saved.get(n) for n in differ]}); "
                         "use another checkpoint_dir or resume=False")
    if state["step"] > config.training_iterations:
        raise ValueError(f"{path} is at step {state['step']}, beyond training_iterations="
                         f"{config.training_iterations}")


def _resume(directory: Path, model_config: GPTConfig, config: TrainConfig, model: GPT,
            optimizer: torch.optim.Optimizer, generators: dict[str, torch.Generator],
            device: torch.device) -> dict | None:
    """Restore the latest usable checkpoint in ``directory`` in place and return its training
    state; ``None`` (after deleting stale checkpoints) when there is none or ``resume`` is off."""
    candidates = training_checkpoints(directory) if config.resume else []
    if candidates:
        _check_resumable(*candidates[0], model_config, config)
    for path, state in candidates:  # the latest one that loads whole
        restore = {name: g for name, g in generators.items()
                   if name != "dropout" or state.get("dropout_device") == device.type}
        try:
            state = load_training_checkpoint(path, model, optimizer, restore)
        except ValueError as error:
            logger.warning("cannot resume from %s: %s", path, error)
            continue
        if "dropout" not in restore:  # saved on another device type: reseed deterministically
            generators["dropout"].manual_seed(config.seed + 3 + state["step"])
        logger.info("resuming from %s at step %d", path, state["step"])
        return state
    if candidates:
        raise ValueError(f"no checkpoint in {directory} could be loaded to resume from (see the "
                         "warnings); use another checkpoint_dir or resume=False")
    for path in [p for _, p in step_checkpoints(directory)] + [directory / FINAL_CHECKPOINT]:
        path.unlink(missing_ok=True)  # a fresh start: stale checkpoints must never be resumed
    return None


@torch.no_grad()
def estimate_loss(model: GPT, data: TokenArray, eligible: np.ndarray, batches: int, contexts: int,
                  generator: torch.Generator, device: torch.device, autocast) -> float:
    """Mean cross-entropy over ``batches`` batches, dropout off (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    total = 0.0
    for _ in range(batches):
        x, y = sample_batch(data, contexts, model.config.context_length, generator, eligible)
        with autocast():
            total += model.loss(x.to(device), y.to(device)).item()
    model.train(was_training)
    return total / batches


def train(
    model_config: GPTConfig,
    train_config: TrainConfig,
    train_data: TokenArray,
    test_data: TokenArray,
    checkpoint_dir: Path | None = None,
    on_evaluation: Callable[[Evaluation], None] | None = None,
    initial_model: GPT | None = None,
) -> TrainResult:
    """Train a ``GPT`` on ``train_data``, evaluating on both splits (see the module docstring).

    ``on_evaluation`` is called with every evaluation this call computes (not those restored from
    a checkpoint). ``initial_model`` starts from its weights instead of a fresh initialisation
    (ignored when resuming). Starting afresh in a ``checkpoint_dir`` that holds checkpoints
    (``resume=False``) deletes them first, so that a later resume never mixes two runs.
    """
    model_config.validate()
    config = train_config.validate()
    validate_training_data(train_data, test_data, model_config, config.contexts_per_batch)
    device = resolve_device(config.device)
    if initial_model is not None and initial_model.config != model_config:
        raise ValueError(f"initial_model has config {initial_model.config}, expected {model_config}")
    use_bf16 = config.precision == "bfloat16" and device.type == "cuda"
    if config.precision == "bfloat16" and not use_bf16:
        logger.warning("precision='bfloat16' needs CUDA; training on %s in float32", device)

    def autocast():
        if use_bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    generators = {  # every random number of the run comes from these
        "batch": torch.Generator().manual_seed(config.seed + 1),
        "evaluation": torch.Generator().manual_seed(config.seed + 2),
        "dropout": torch.Generator(device=device).manual_seed(config.seed + 3),
    }
    model = GPT(model_config)
    model.reset_parameters(torch.Generator().manual_seed(config.seed))
    if initial_model is not None:
        model.load_state_dict(initial_model.state_dict())
    model.to(device)
    model.set_dropout_generator(generators["dropout"])
    optimizer = make_optimizer(model, config, device)

    state = None
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        state = _resume(checkpoint_dir, model_config, config, model, optimizer, generators, device)
    resumed_from = None if state is None else state["step"]
    step = resumed_from or 0
    evaluations = [] if state is None else [Evaluation(**e) for e in state.get("evaluations", [])]
    previous_seconds = 0.0 if state is None else float(state.get("elapsed_seconds", 0.0))

    eligible = {"train": train_data.eligible(model_config.context_length),
                "test": test_data.eligible(model_config.context_length)}
    tokens_per_step = config.contexts_per_batch * model_config.context_length
    start = time.perf_counter()
    train_seconds, session_steps = 0.0, 0

    def evaluate_and_save(name: str) -> None:
        losses = [estimate_loss(model, data, eligible[split], config.evaluation_iterations,
                                config.contexts_per_batch, generators["evaluation"], device, autocast)
                  for split, data in (("train", train_data), ("test", test_data))]
        seconds_per_step = (time.perf_counter() - start) / session_steps if session_steps else None
        evaluation = Evaluation(
            step=step, train_loss=losses[0], test_loss=losses[1],
            tokens_per_second=session_steps * tokens_per_step / train_seconds if session_steps else None,
            elapsed_seconds=previous_seconds + time.perf_counter() - start,
            remaining_seconds=(seconds_per_step * (config.training_iterations - step)
                               if seconds_per_step else None),
            learning_rate=learning_rate_at(min(step, config.training_iterations - 1), config),
        )
        evaluations.append(evaluation)
        logger.info("step %d: train loss %.4f, test loss %.4f", step, *losses)
        if checkpoint_dir is not None:
            training_state = {
                "step": step, "model_config": model_config.to_dict(), "train_config": config.to_dict(),
                "evaluations": [asdict(e) for e in evaluations], "dropout_device": device.type,
                "elapsed_seconds": evaluation.elapsed_seconds,
            }
            save_training_checkpoint(checkpoint_dir / name, model, optimizer, generators, training_state)
        if on_evaluation is not None:
            on_evaluation(evaluation)

    model.train()
    params = list(model.parameters())
    while step < config.training_iterations:
        if step % config.evaluation_interval == 0 and step != resumed_from:
            evaluate_and_save(f"{step}.safetensors")
        step_start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, config)
        x, y = sample_batch(train_data, config.contexts_per_batch, model_config.context_length,
                            generators["batch"], eligible["train"])
        with autocast():
            loss = model.loss(x.to(device), y.to(device))  # mean cross-entropy over B * T positions
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip == "value":
            torch.nn.utils.clip_grad_value_(params, config.grad_clip_value)
        elif config.grad_clip == "norm":
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip_value)
        optimizer.step()
        step += 1
        session_steps += 1
        if device.type == "cuda" and step % config.evaluation_interval == 0:
            torch.cuda.synchronize(device)  # keep the timings honest
        train_seconds += time.perf_counter() - step_start

    finished_before = resumed_from == step and checkpoint_dir is not None and (
        checkpoint_dir / FINAL_CHECKPOINT).is_file()
    if not finished_before:
        evaluate_and_save(FINAL_CHECKPOINT)
    model.eval()
    final = evaluations[-1]
    return TrainResult(
        model=model, evaluations=evaluations, train_loss=final.train_loss, test_loss=final.test_loss,
        seconds=previous_seconds + time.perf_counter() - start,
        tokens_per_second=session_steps * tokens_per_step / train_seconds if session_steps else None,
        steps=step, resumed_from=resumed_from,
        checkpoint_path=checkpoint_dir / FINAL_CHECKPOINT if checkpoint_dir is not None else None,
    )
