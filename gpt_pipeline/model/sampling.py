"""Settings of sampling text from a trained model (``sample_generations``, ``gpt-pipeline generate``)."""

from __future__ import annotations

from dataclasses import dataclass

from gpt_pipeline.fields import check, param


@dataclass(frozen=True)
class GenerationConfig:
    """How ``sample_generations`` and ``gpt-pipeline generate`` sample text (gpt-rs's defaults)."""

    prompts: tuple[str, ...] = param(("Once",), "Prompts to continue (gpt-rs --input).")
    token_count: int = param(256, "New tokens per generation (gpt-rs --token-count).", ge=1)
    temperature: float = param(0.7, "Softmax temperature (gpt-rs: 0.7).", gt=0)
    top_k: int | None = param(None, "Sample among the k likeliest tokens; empty: all of them (gpt-rs).",
                              ge=1)
    num_samples: int = param(1, "Generations per prompt.", ge=1)
    seed: int = param(1234, "Seed of the sampling generator.")
    unknown: str = param("error", "Prompt characters the tokenizer never saw: 'error' (fail) or "
                         "'skip' (drop them).", choices=("error", "skip"))

    def validate(self) -> GenerationConfig:
        if not self.prompts:
            raise ValueError("prompts is empty: give at least one prompt")
        for prompt in self.prompts:
            if not prompt:
                raise ValueError("prompt is empty: gpt-rs needs at least one character to start from")
        return check(self)
