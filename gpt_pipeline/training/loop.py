"""gpt-rs's training loop: AdamW, clamped gradients, periodic evaluation and resumable checkpoints.

What ``train`` does, as gpt-rs does it:

- AdamW (betas 0.9/0.999, eps 1e-8), weight decay on the linear layers' weight matrices only
  (not on biases, LayerNorms or embeddings), constant learning rate;
- each step: one batch from ``gpt_pipeline.data.tokens.sample_batch`` (distinct stories, one random
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

Data parallel: in each torchrun worker ``gpt_pipeline.training.distributed`` passes a ``Replica`` that
gives the process its rows of every (same, global) batch, wraps the model in
DistributedDataParallel and leaves evaluation and checkpoints to rank 0; the loop is this one.

Not here: where checkpoints live or how progress is shown (the caller passes ``checkpoint_dir``,
``on_evaluation`` and ``on_progress``; ``progress.py`` has the lines), the model itself
(``model/gpt.py``), the file format (``checkpoint.py``), the config and its validation
(``config.py``, re-exported here), launching processes (``torchrun.py``, ``distributed.py``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from gpt_pipeline.training.checkpoint import (
    FINAL_CHECKPOINT,
    load_training_checkpoint,
    save_training_checkpoint,
    step_checkpoints,
    training_checkpoints,
)
from gpt_pipeline.fields import result_fields
from gpt_pipeline.training.metrics import bits_per_character
from gpt_pipeline.training.progress import Progress
from gpt_pipeline.devices import resolve_device, training_threads  # noqa: F401 - also part of this module's API
from gpt_pipeline.model.gpt import GPT, GPTConfig
from gpt_pipeline.data.tokens import TokenArray, sample_batch
from gpt_pipeline.training.config import (  # noqa: F401 - also part of this module's API
    TrainConfig,
    learning_rate_at,
    validate_training_data,
)

logger = logging.getLogger(__name__)

ADAM_BETAS = (0.9, 0.999)  # gpt-rs (tch's AdamW defaults)
ADAM_EPS = 1e-8
# Fields of TrainConfig.result_fields that a continued run may change: evaluations do not touch
# the weights (their own generator), every process count computes the same batches (up to float
# summation order), precision was never pinned, and a constant-rate run may be extended.
_MAY_CHANGE_ON_RESUME = ("evaluation_interval", "evaluation_iterations", "precision", "num_processes",
                         "distributed_backend")


def resume_fields(config: TrainConfig) -> tuple[str, ...]:
    """The fields a checkpoint's ``train_config`` must match to resume from it: those that change
    the result (``fields.result_fields``), less those a continued run may change;
    ``training_iterations`` only with the cosine schedule (it shapes the decay)."""
    return tuple(n for n in result_fields(TrainConfig) if n not in _MAY_CHANGE_ON_RESUME
                 and (n != "training_iterations" or config.lr_schedule == "cosine"))


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
    train_bits_per_character: float | None = None  # training.metrics.bits_per_character, when the
    test_bits_per_character: float | None = None  # split's characters are known (train(characters=))


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
    stopped_at: int | None = None  # the step on_evaluation stopped the run at (StopTraining), if it did


class StopTraining(Exception):
    """Raised by ``train``'s ``on_evaluation`` to end the run after this evaluation (a search's
    pruner: the run is losing). ``train`` returns the model as it is, with ``stopped_at`` set."""


class Replica:
    """This process's part in a data-parallel run: here the only process (rank 0 of 1).

    ``train`` calls these hooks; ``gpt_pipeline.training.distributed.DDPReplica`` overrides them so that
    each torchrun worker takes its share of every batch and rank 0 alone evaluates and saves.
    """

    rank, world_size = 0, 1

    def dropout_seed(self, seed: int) -> int:
        """The seed of this process's dropout generator (its own stream in a multi-process run)."""
        return seed

    def resume(self, resume_main: Callable[[], tuple[Path, dict] | None], model: GPT,
               optimizer: torch.optim.Optimizer, generators: dict[str, torch.Generator]) -> dict | None:
        """The checkpoint state to continue from: ``resume_main`` picks it (rank 0 only)."""
        found = resume_main()
        return None if found is None else found[1]

    def loss_function(self, model: GPT) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return model.loss

    def share(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """This process's rows of the global batch and the factor on its mean loss."""
        return x, y, 1.0

    def other_generators(self, generators: dict[str, torch.Generator]) -> dict[str, torch.Generator]:
        """Generators of the other processes to save with rank 0's (called by every process)."""
        return {}


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
    names = resume_fields(config)
    differ = [n for n in names if saved.get(n) != getattr(config, n)]
    if differ:
        raise ValueError(f"{path} was trained with different {differ} ({[saved.get(n) for n in differ]}); "
                         "use another checkpoint_dir or resume=False")
    if state["step"] > config.training_iterations:
        raise ValueError(f"{path} is at step {state['step']}, beyond training_iterations="
                         f"{config.training_iterations}")


def _resume(directory: Path, model_config: GPTConfig, config: TrainConfig, model: GPT,
            optimizer: torch.optim.Optimizer, generators: dict[str, torch.Generator],
            device: torch.device) -> tuple[Path, dict] | None:
    """Restore the latest usable checkpoint in ``directory`` in place and return it with its
    training state; ``None`` (after deleting stale checkpoints) when there is none or ``resume``
    is off."""
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
        return path, state
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
    replica: Replica | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    progress_seconds: float = 5.0,
    characters: dict[str, int] | None = None,
) -> TrainResult:
    """Train a ``GPT`` on ``train_data``, evaluating on both splits (see the module docstring).

    ``on_evaluation`` is called with every evaluation this call computes (not those restored from
    a checkpoint). ``on_progress`` is called (rank 0 only) once with ``resumed_from`` set when the
    run resumes, then every ``progress_seconds`` of training (0: after every step) with the latest
    step's loss, the throughput and the time left (``gpt_pipeline.training.progress``).
    ``initial_model`` starts from its weights instead of a fresh initialisation (ignored when
    resuming). Starting afresh in a ``checkpoint_dir`` that holds checkpoints
    (``resume=False``) deletes them first, so that a later resume never mixes two runs.
    ``replica`` is this process's part in a data-parallel run (``gpt_pipeline.training.distributed``
    passes it in each torchrun worker); without one, ``num_processes`` must be 1. In other
    processes than rank 0 the result has no evaluations and NaN losses. ``characters``
    (``{"train": n, "test": m}``, the splits' characters) adds bits per character to every
    evaluation (``gpt_pipeline.training.metrics``).
    """
    config = train_config
    if replica is None and config.num_processes > 1:
        raise ValueError(f"num_processes={config.num_processes} trains in torchrun workers: use "
                         "gpt_pipeline.training.torchrun.launch, or trained_model's launcher 'subprocess'")
    replica = replica or Replica()
    main = replica.rank == 0
    validate_training_data(train_data, test_data, model_config, config.contexts_per_batch)
    device = resolve_device(config.device)
    if device.type == "cpu" and replica.world_size == 1:  # torchrun workers take their share already
        torch.set_num_threads(training_threads(config.threads))
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
        "dropout": torch.Generator(device=device).manual_seed(replica.dropout_seed(config.seed + 3)),
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
        state = replica.resume(
            lambda: _resume(checkpoint_dir, model_config, config, model, optimizer, generators, device),
            model, optimizer, generators)
    resumed_from = None if state is None else state["step"]
    step = resumed_from or 0
    evaluations = [] if state is None else [Evaluation(**e) for e in state.get("evaluations", [])]
    previous_seconds = 0.0 if state is None else float(state.get("elapsed_seconds", 0.0))

    eligible = {"train": train_data.eligible(model_config.context_length),
                "test": test_data.eligible(model_config.context_length)}
    tokens_per_step = config.contexts_per_batch * model_config.context_length
    start = time.perf_counter()
    train_seconds, session_steps = 0.0, 0
    last_report = start
    stopped_at = None
    if on_progress is not None and main and resumed_from is not None:
        on_progress(Progress(step, config.training_iterations, None, None, previous_seconds, None,
                             resumed_from=resumed_from, checkpoint_dir=str(checkpoint_dir)))

    def report_progress(now: float) -> None:
        elapsed = now - start
        on_progress(Progress(
            step, config.training_iterations, loss.item(),
            session_steps * tokens_per_step / train_seconds if train_seconds else None,
            previous_seconds + elapsed, elapsed / session_steps * (config.training_iterations - step)))

    def evaluate_and_save(name: str) -> None:
        others = replica.other_generators(generators)  # every process takes part
        if not main:
            return
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
            **({f"{split}_bits_per_character": bits_per_character(loss, len(data.tokens), characters[split])
                for split, data, loss in (("train", train_data, losses[0]), ("test", test_data, losses[1]))}
               if characters else {}),
        )
        evaluations.append(evaluation)
        logger.info("step %d: train loss %.4f, test loss %.4f", step, *losses)
        if checkpoint_dir is not None:
            training_state = {
                "step": step, "model_config": model_config.to_dict(), "train_config": config.to_dict(),
                "evaluations": [asdict(e) for e in evaluations], "dropout_device": device.type,
                "elapsed_seconds": evaluation.elapsed_seconds,
                **({"dropout_processes": replica.world_size} if others else {}),
            }
            save_training_checkpoint(checkpoint_dir / name, model, optimizer, {**generators, **others},
                                     training_state)
        if on_evaluation is not None:
            on_evaluation(evaluation)

    model.train()
    params = list(model.parameters())
    loss_function = replica.loss_function(model)
    while step < config.training_iterations:
        if step % config.evaluation_interval == 0 and step != resumed_from:
            try:
                evaluate_and_save(f"{step}.safetensors")
            except StopTraining:
                stopped_at = step
                break
        step_start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, config)
        x, y = sample_batch(train_data, config.contexts_per_batch, model_config.context_length,
                            generators["batch"], eligible["train"])
        x, y, scale = replica.share(x, y)  # all of it, or this process's rows
        with autocast():
            loss = loss_function(x.to(device), y.to(device))  # mean cross-entropy over its positions
        if scale != 1.0:  # unequal shares: weigh each process's mean by its share of the batch
            loss = loss * scale
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
        now = time.perf_counter()
        train_seconds += now - step_start
        if on_progress is not None and main and now - last_report >= progress_seconds:
            report_progress(now)
            last_report = time.perf_counter()

    finished_before = resumed_from == step and checkpoint_dir is not None and (
        checkpoint_dir / FINAL_CHECKPOINT).is_file()
    if not finished_before and stopped_at is None:
        with contextlib.suppress(StopTraining):  # the last evaluation: there is nothing left to stop
            evaluate_and_save(FINAL_CHECKPOINT)
    model.eval()
    final_losses = (evaluations[-1].train_loss, evaluations[-1].test_loss) if main else (math.nan,) * 2
    return TrainResult(
        model=model, evaluations=evaluations, train_loss=final_losses[0], test_loss=final_losses[1],
        seconds=previous_seconds + time.perf_counter() - start,
        tokens_per_second=session_steps * tokens_per_step / train_seconds if session_steps else None,
        steps=step, resumed_from=resumed_from,
        checkpoint_path=(checkpoint_dir / FINAL_CHECKPOINT if checkpoint_dir is not None and stopped_at is None
                         else None),
        stopped_at=stopped_at,
    )
