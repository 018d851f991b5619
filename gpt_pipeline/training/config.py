"""The training run's configuration (``TrainConfig``), its learning-rate schedule and the
checks of the data against it.

Only values and their validation live here: the loop itself is ``gpt_pipeline.training.loop``, which
re-exports everything below. Nothing here touches a model, a file or a device.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Literal

from pydantic import Field

from gpt_pipeline.devices import resolve_device
from gpt_pipeline.fields import RESULT, settings
from gpt_pipeline.model.gpt import GPTConfig
from gpt_pipeline.data.tokens import TokenArray


def _result(default, help: str, **constraints):
    """A field that changes what a training produces (``fields.RESULT``)."""
    return Field(default, description=help, json_schema_extra=RESULT, **constraints)


@settings
class TrainConfig:
    """gpt-rs's ``train_config.ron`` (its example values) plus seed, device and our options.

    ``RESULT``: every field but the placement ones (device, resume, threads, the nodes) changes
    what a training produces or reports (its weights, its evaluations, its checkpoints), so those
    fields key the ``trained_model`` asset's checkpoint folder (``gpt_pipeline.defs.training_run``)
    and, less the ones a continued run may change, must match a checkpoint to resume from it (``loop``).
    """

    learning_rate: float = _result(2e-4, "AdamW learning rate (the peak one with a schedule).", gt=0)
    training_iterations: int = _result(60000, "Optimizer steps.", ge=1)
    evaluation_interval: int = _result(500, "Steps between evaluations and checkpoints (step 0 included).",
                                       ge=1)
    evaluation_iterations: int = _result(5, "Batches of train and of test averaged per evaluation.", ge=1)
    contexts_per_batch: int = _result(64, "Stories (one window each) per batch.", ge=1)
    seed: int = _result(1234, "Seeds initialisation, batches, dropout and evaluation batches.", ge=0)
    device: str = Field("auto", description="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")
    resume: bool = Field(True, description="Continue from the latest checkpoint of this configuration, if any.")
    threads: int = Field(0, description="CPU threads of this training (torch.set_num_threads); 0: the "
                         "machine's cores divided by the trainings allowed at once (the Dagster pool "
                         "'training', or $GPT_PIPELINE_TRAININGS_AT_ONCE), so that trainings side by side do "
                         "not oversubscribe the cores.", ge=0)
    lr_schedule: Literal["constant", "cosine"] = _result(
        "constant", "constant (gpt-rs) or cosine (linear warm-up, then cosine decay to min_learning_rate).")
    warmup_iterations: int = _result(0, "Linear warm-up steps from learning_rate / warmup to learning_rate.",
                                     ge=0)
    min_learning_rate: float = _result(2e-5, "Where the cosine decay ends.", ge=0)
    grad_clip: Literal["value", "norm", "none"] = _result(
        "value", "value (gpt-rs: clamp every gradient element), norm (global norm) or none.")
    grad_clip_value: float = _result(0.5, "The clamp bound, or the maximum norm.", gt=0)
    weight_decay: float = _result(0.1, "AdamW decay on linear weight matrices only.", ge=0)
    precision: Literal["float32", "bfloat16"] = _result(
        "float32", "float32, or bfloat16 (autocast, CUDA only; else float32).")
    num_processes: int = _result(1, "Data-parallel processes (torchrun + DDP; each takes its share of "
                                 "every batch, rank 0 evaluates and checkpoints); 1: train in this process.",
                                 ge=1)
    distributed_backend: Literal["auto", "gloo", "nccl"] = _result(
        "auto", "Process-group backend with num_processes > 1: auto (nccl on CUDA, else gloo), gloo or nccl.")

    # more than one machine (torchrun's static rendezvous); none of these changes the result
    nnodes: int = Field(1, description="Machines (nodes) training together, each running num_processes "
                        "processes; above 1 they meet at rdzv_endpoint.", ge=1)
    node_rank: int = Field(0, description="This machine's rank among the nnodes (0: the one that evaluates, "
                           "checkpoints and reports; Dagster runs node 0).", ge=0)
    rdzv_endpoint: str = Field("", description="host:port of node 0's rendezvous store (torchrun's "
                               "rendezvous endpoint); required when nnodes > 1.")

    def __post_init__(self) -> None:
        """The rules that tie fields together."""
        resolve_device(self.device, check_available=False)
        if self.node_rank >= self.nnodes:
            raise ValueError(f"TrainConfig.node_rank={self.node_rank} is out of range for nnodes={self.nnodes} "
                             f"(0 to {self.nnodes - 1})")
        if self.nnodes > 1 or self.rdzv_endpoint:
            host, _, port = self.rdzv_endpoint.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"TrainConfig.rdzv_endpoint must be host:port (node 0's address) when nnodes="
                                 f"{self.nnodes}, got {self.rdzv_endpoint!r}")
        if self.num_processes * self.nnodes > self.contexts_per_batch:
            across = f" x nnodes={self.nnodes}" if self.nnodes > 1 else ""
            raise ValueError(f"TrainConfig.num_processes={self.num_processes}{across} is more than contexts_per_batch="
                             f"{self.contexts_per_batch}: every process needs at least one story per batch")
        if self.num_processes > 1 and self.device == "mps":
            raise ValueError("TrainConfig.num_processes > 1 needs device 'cpu' or 'cuda', got 'mps'")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        return cls(**values)


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
