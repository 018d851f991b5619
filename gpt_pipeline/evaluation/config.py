"""The evaluation's settings, declared once (``gpt_pipeline.fields.settings``): the Dagster run config
of ``model_evaluation`` and ``champion_evaluation`` is derived from them (``defs.evaluation``)."""

from __future__ import annotations

from pydantic import Field

from gpt_pipeline.fields import settings


@settings(frozen=True)
class EvaluationConfig:
    """How a model is evaluated: its likelihood on the test split and its continuations of
    held-out test stories, beside the true continuations and a bigram baseline's.

    The two thresholds are the blocking check ``continuations_do_not_collapse``: the model's
    rate minus the true continuations' rate must not exceed them (docs/evaluation.md: how the
    defaults were chosen)."""

    stories: int = Field(128, description="Held-out test stories whose first sentence the model continues.",
                         ge=1)
    seed: int = Field(1234, description="Seed of the continuations' sampling (the model's and the bigram's).")
    temperature: float = Field(0.7, description="Softmax temperature of the continuations (gpt-rs: 0.7).", gt=0)
    top_k: int | None = Field(None, description="Sample among the k likeliest tokens; empty: all of them.",
                              ge=1)
    max_continuation_tokens: int = Field(
        256, description="Longest continuation in tokens: a longer true continuation is cut to this many "
        "tokens, and the model writes as many.", ge=1)
    max_windows: int = Field(
        4096, description="Most windows of the test split (context_length + 1 tokens each) read for the "
        "likelihood and its curve by position; spread evenly over the split when it has more.", ge=1)
    max_repeated_4gram_excess: float = Field(
        0.1, description="The check fails when the continuations' repeated 4-gram rate exceeds the true "
        "continuations' by more than this.", ge=0, le=1)
    max_unseen_word_excess: float = Field(
        0.1, description="The check fails when the share of the continuations' words never seen in the "
        "training split exceeds the true continuations' share by more than this.", ge=0, le=1)
