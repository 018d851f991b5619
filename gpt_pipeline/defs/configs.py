"""Run config of each asset, as the Dagster Launchpad shows it.

Every default comes from the core's config classes (``GPTConfig``, ``TrainConfig``, the corpus
and generation constants): this module only names the fields and describes them, so that the
Launchpad, the schedules and the CLI all agree.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from gpt_pipeline.data.corpus import DEFAULT_NUM_STORIES
from gpt_pipeline.defs.k8s import K8sLaunchConfig
from gpt_pipeline.fields import describe
from gpt_pipeline.model.gpt import GPTConfig
from gpt_pipeline.pipeline import (
    DEFAULT_CORPUS_SEED,
    DEFAULT_TRAINING_PERCENTAGE,
    DEFAULT_VOCAB_SIZE,
    GenerationConfig,
)
from gpt_pipeline.training.loop import TrainConfig

_M = GPTConfig()
_T = TrainConfig()
_G = GenerationConfig()


class RawStoriesConfig(dg.Config):
    path: str | None = Field(
        default=None,
        description="Parquet file of stories, one per row. Empty: the embedded corpus that the "
        "project generates itself (num_stories stories from seed).",
    )
    text_column: str | None = Field(
        default=None, description="Column holding the text. Empty: the first column, as gpt-rs."
    )
    num_stories: int = Field(
        default=DEFAULT_NUM_STORIES, description="Embedded corpus only: number of stories to generate."
    )
    seed: int = Field(default=DEFAULT_CORPUS_SEED, description="Embedded corpus only: generator seed.")


class TokenizerConfig(dg.Config):
    vocab_size: int = Field(
        default=DEFAULT_VOCAB_SIZE,
        description="Tokens in the vocabulary: the corpus characters plus one per learnt merge.",
    )


class TokenizedDatasetConfig(dg.Config):
    training_percentage: float = Field(
        default=DEFAULT_TRAINING_PERCENTAGE,
        description="Share of the stories, in file order, that form the training split (gpt-rs: "
        "the first 90%); the rest is the test split.",
    )


class TrainedModelConfig(dg.Config):
    embedding_size: int = Field(default=_M.embedding_size, description="Width of the residual stream.")
    context_length: int = Field(default=_M.context_length, description="Tokens the model sees at once.")
    head_count: int = Field(default=_M.head_count, description="Attention heads; must divide embedding_size.")
    block_count: int = Field(default=_M.block_count, description="Transformer blocks.")
    feed_forward_multiplier: int = Field(
        default=_M.feed_forward_multiplier, description="Feed-forward width / embedding_size."
    )
    embedding_dropout: float = Field(default=_M.embedding_dropout, description="Dropout after the embeddings.")
    attention_dropout: float = Field(default=_M.attention_dropout, description="Dropout on attention weights.")
    feed_forward_dropout: float = Field(
        default=_M.feed_forward_dropout, description="Dropout after the feed-forward layer."
    )
    residual_dropout: float = Field(
        default=_M.residual_dropout, description="Dropout on the residual path in each block (gpt-rs)."
    )
    learning_rate: float = Field(default=_T.learning_rate, description="AdamW learning rate.")
    training_iterations: int = Field(default=_T.training_iterations, description="Optimizer steps.")
    evaluation_interval: int = Field(
        default=_T.evaluation_interval, description="Steps between evaluations and checkpoints."
    )
    evaluation_iterations: int = Field(
        default=_T.evaluation_iterations, description="Batches averaged per split at each evaluation."
    )
    contexts_per_batch: int = Field(default=_T.contexts_per_batch, description="Stories per batch.")
    seed: int = Field(default=_T.seed, description="Seeds every random generator of the training run.")
    device: str = Field(default=_T.device, description="auto (cuda, then mps, then cpu), cuda, mps or cpu.")
    resume: bool = Field(
        default=_T.resume,
        description="Continue from the last checkpoint of this exact configuration when one exists.",
    )
    lr_schedule: str = Field(
        default=_T.lr_schedule,
        description="constant (gpt-rs) or cosine (linear warm-up, then cosine decay to min_learning_rate).",
    )
    warmup_iterations: int = Field(default=_T.warmup_iterations, description="Linear warm-up steps.")
    min_learning_rate: float = Field(default=_T.min_learning_rate, description="Where the cosine decay ends.")
    grad_clip: str = Field(
        default=_T.grad_clip,
        description="value (gpt-rs: clamp every gradient element), norm (global norm) or none.",
    )
    grad_clip_value: float = Field(default=_T.grad_clip_value, description="The clamp bound or maximum norm.")
    weight_decay: float = Field(default=_T.weight_decay, description="AdamW decay on linear weight matrices.")
    precision: str = Field(
        default=_T.precision, description="float32, or bfloat16 (autocast on CUDA only)."
    )
    num_processes: int = Field(
        default=_T.num_processes,
        description="Data-parallel training processes: above 1, torchrun starts them (DDP; each "
        "takes its share of every contexts_per_batch batch; rank 0 evaluates and checkpoints).",
    )
    distributed_backend: str = Field(
        default=_T.distributed_backend,
        description="Process-group backend with num_processes > 1: auto (nccl on CUDA, else gloo), "
        "gloo or nccl.",
    )
    # --- more than one machine (core TrainConfig fields) and where the training runs ---
    nnodes: int = Field(default=_T.nnodes, description=describe(TrainConfig.__dataclass_fields__["nnodes"]))
    node_rank: int = Field(default=_T.node_rank, description=describe(TrainConfig.__dataclass_fields__["node_rank"]))
    rdzv_endpoint: str = Field(
        default=_T.rdzv_endpoint, description=describe(TrainConfig.__dataclass_fields__["rdzv_endpoint"])
    )
    launcher: str = Field(
        default="auto",
        description="Where the training runs: auto (in_process for one process on one node, else "
        "subprocess), in_process (this step's process), subprocess (a Dagster Pipes worker process, "
        "torchrun inside for several), k8s (a pod of its own through dagster-k8s's PipesK8sClient).",
    )
    k8s: K8sLaunchConfig = Field(
        default_factory=K8sLaunchConfig, description="The training pod of launcher k8s."
    )
    # ---
    initial_checkpoint: str | None = Field(
        default=None,
        description="Start from this checkpoint's weights (ours, or one made by `gpt-pipeline "
        "import-gpt-rs`) instead of a fresh initialisation; its config must match.",
    )
    export_hf: bool = Field(
        default=False,
        description="Also export the model as a Hugging Face transformers GPT-2 directory and log "
        "it to MLflow (artifact hf_model).",
    )

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        fields = {k: getattr(self, k) for k in GPTConfig.__dataclass_fields__ if k != "vocab_size"}
        return GPTConfig(vocab_size=vocab_size, **fields)

    def training_config(self) -> TrainConfig:
        names = set(TrainConfig.__dataclass_fields__) & set(type(self).model_fields)
        return TrainConfig(**{k: getattr(self, k) for k in names})


class SampleGenerationsConfig(dg.Config):
    prompts: list[str] = Field(default=list(_G.prompts), description="Prompts to continue.")
    token_count: int = Field(default=_G.token_count, description="New tokens per generation.")
    temperature: float = Field(default=_G.temperature, description="Softmax temperature (> 0).")
    top_k: int | None = Field(default=_G.top_k, description="Sample among the k likeliest tokens; empty: all.")
    num_samples: int = Field(default=_G.num_samples, description="Generations per prompt.")
    seed: int = Field(default=_G.seed, description="Sampling seed.")
    unknown: str = Field(
        default=_G.unknown,
        description="Prompt characters the tokenizer never saw: 'error' (fail) or 'skip' (drop them).",
    )

    def generation_config(self) -> GenerationConfig:
        return GenerationConfig(**{k: getattr(self, k) for k in type(self).model_fields})
