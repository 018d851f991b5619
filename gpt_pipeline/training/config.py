"""The training run's configuration (``TrainConfig``), its learning-rate schedule and the
checks of the data against it.

Only values and their validation live here: the loop itself is ``gpt_pipeline.training.loop``, which
re-exports everything below. Nothing here touches a model, a file or a device.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from gpt_pipeline.devices import resolve_device
from gpt_pipeline.fields import param
from gpt_pipeline.model.gpt import GPTConfig
from gpt_pipeline.data.tokens import TokenArray


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
    num_processes: int = 1  # data-parallel processes (torchrun + DDP); 1: train in this process
    distributed_backend: str = "auto"  # "auto" (nccl on CUDA, else gloo), "gloo" or "nccl"
    # more than one machine (torchrun's static rendezvous); none of these changes the result
    nnodes: int = param(1, "Machines (nodes) training together, each running num_processes processes; "
                        "above 1 they meet at rdzv_endpoint.", ge=1)
    node_rank: int = param(0, "This machine's rank among the nnodes (0: the one that evaluates, "
                           "checkpoints and reports; Dagster runs node 0).", ge=0)
    rdzv_endpoint: str = param("", "host:port of node 0's rendezvous store (torchrun --rdzv-endpoint); "
                               "required when nnodes > 1.")

    def validate(self) -> TrainConfig:
        for name in ("training_iterations", "evaluation_interval", "evaluation_iterations",
                     "contexts_per_batch", "num_processes", "nnodes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        for name in ("warmup_iterations", "seed", "node_rank"):
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
                   "precision": ("float32", "bfloat16"), "distributed_backend": ("auto", "gloo", "nccl")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        resolve_device(self.device, check_available=False)
        self._validate_nodes()
        processes = self.num_processes * self.nnodes
        if processes > self.contexts_per_batch:
            across = f" x nnodes={self.nnodes}" if self.nnodes > 1 else ""
            raise ValueError(f"TrainConfig.num_processes={self.num_processes}{across} is more than contexts_per_batch="
                             f"{self.contexts_per_batch}: every process needs at least one story per batch")
        if self.num_processes > 1 and self.device == "mps":
            raise ValueError("TrainConfig.num_processes > 1 needs device 'cpu' or 'cuda', got 'mps'")
        return self

    def _validate_nodes(self) -> None:
        if self.node_rank >= self.nnodes:
            raise ValueError(f"TrainConfig.node_rank={self.node_rank} is out of range for nnodes={self.nnodes} "
                             f"(0 to {self.nnodes - 1})")
        if not isinstance(self.rdzv_endpoint, str):
            raise ValueError(f"TrainConfig.rdzv_endpoint must be a string host:port, got {self.rdzv_endpoint!r}")
        if self.nnodes > 1 or self.rdzv_endpoint:
            host, _, port = self.rdzv_endpoint.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"TrainConfig.rdzv_endpoint must be host:port (node 0's address) when nnodes="
                                 f"{self.nnodes}, got {self.rdzv_endpoint!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}")
        return cls(**values).validate()



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
