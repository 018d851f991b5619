"""Each asset's Dagster config class (pydantic), derived from the core settings' fields (``derived``).

A ``Literal`` is an enum of Dagster's schema, refused before a run starts; a tuple becomes a list.
The schema has no bounds: the step refuses a value out of them when it builds its config, before
any work, in one line with the core's words (``ConfigRefused``); the CLI and the sweeps check them
up front.
"""

from __future__ import annotations

import typing
from typing import Any, ClassVar, Literal

import dagster as dg
import pydantic

from gpt_pipeline import fields
from gpt_pipeline.data.config import DatasetConfig, StoriesConfig
from gpt_pipeline.defs.k8s import K8sLaunchConfig
from gpt_pipeline.evaluation.config import EvaluationConfig
from gpt_pipeline.model.gpt import GPTConfig
from gpt_pipeline.model.generations import GenerationConfig
from gpt_pipeline.tokenizer.config import TokenizerConfig
from gpt_pipeline.training.config import TrainConfig

# The Dagster config's defaults: `make run`'s values (configs/quickstart.yaml, checked equal by a test), so a run
# launched without config (Materialize, automation) trains them; other fields keep gpt-rs's example value.
QUICKSTART: dict[str, dict[str, Any]] = {
    "raw_stories": {"num_stories": 5000, "seed": 0},
    "bpe_tokenizer": {"vocab_size": 1024},
    "tokenized_dataset": {"training_percentage": 0.9},
    "trained_model": {"embedding_size": 96, "context_length": 64, "head_count": 4, "block_count": 3,
                      "learning_rate": 0.002, "training_iterations": 600, "evaluation_interval": 50,
                      "evaluation_iterations": 5, "contexts_per_batch": 32, "seed": 1234, "device": "auto"},
    "sample_generations": {"prompts": ["Once", "The little dog"], "token_count": 120, "temperature": 0.7, "seed": 1234},
}


class ConfigRefused(dg.Failure, ValueError):
    """A config value refused in one line: a ``ValueError`` as the core's, and to Dagster a
    ``Failure`` (its description is what the step shows; no retry)."""

    def __init__(self, message: str):
        super().__init__(description=message, allow_retries=False)


class CoreConfig(dg.Config):
    """A Dagster config class derived from core settings classes (``sources``), which it builds back."""

    model_config = pydantic.ConfigDict(allow_inf_nan=False)  # as the core's
    sources: ClassVar[tuple[type, ...]] = ()

    def __init__(self, **values: Any):
        try:
            super().__init__(**values)
        except pydantic.ValidationError as error:  # Dagster builds it when the step starts
            raise ConfigRefused(fields.one_line(type(self), error, self.sources)) from None

    def core(self, cls: type, **values: Any) -> Any:
        """An instance of the settings class ``cls`` from this config's fields of that name (lists
        back to tuples) and ``values``; ``ValueError`` in one line when a rule is broken."""
        mine = {name: getattr(self, name) for name in fields.fields_of(cls) if name in type(self).model_fields}
        return cls(**{**mine, **values})


def derived(name: str, asset: str, *sources: type, skip: tuple[str, ...] = ()) -> type[CoreConfig]:
    """The ``CoreConfig`` ``name`` with the fields of ``sources`` less ``skip`` (type, bounds,
    description with them), defaulting to ``QUICKSTART[asset]``; its docstring (the Launchpad's
    description) is the first source's."""
    definitions: dict[str, Any] = {}
    for key, info in ((k, i) for source in sources for k, i in fields.fields_of(source).items() if k not in skip):
        if key in definitions:
            raise ValueError(f"{asset}: field {key!r} is declared by two of {sources}")
        hint, default = info.annotation, QUICKSTART.get(asset, {}).get(key, info.get_default(call_default_factory=True))
        if typing.get_origin(hint) is tuple:  # Dagster's config has lists, not tuples
            hint, default = list[typing.get_args(hint)[0]], list(default)
        definitions[key] = hint, pydantic.Field(default, description=fields.describe(info) or None, **fields.bounds(info))
    model = pydantic.create_model(name, __base__=CoreConfig, __module__=__name__, __doc__=sources[0].__doc__,
                                  **definitions)
    model.sources = sources
    return model


RawStoriesConfig = derived("RawStoriesConfig", "raw_stories", StoriesConfig)
BpeTokenizerConfig = derived("BpeTokenizerConfig", "bpe_tokenizer", TokenizerConfig)
TokenizedDatasetConfig = derived("TokenizedDatasetConfig", "tokenized_dataset", DatasetConfig)
ModelEvaluationConfig = derived("ModelEvaluationConfig", "model_evaluation", EvaluationConfig)
SampleGenerationsConfig = derived("SampleGenerationsConfig", "sample_generations", GenerationConfig)


class TrainedModelConfig(derived("TrainedModelFields", "trained_model", GPTConfig, TrainConfig,
                                 skip=("vocab_size",))):
    """The transformer (GPTConfig; vocab_size comes from the tokenizer) and its training (TrainConfig)."""

    initial_checkpoint: str | None = pydantic.Field(
        None, description="Start from this checkpoint's weights (ours, or one made by `gpt-pipeline "
        "import-gpt-rs`) instead of a fresh initialisation; its config must match.")
    export_hf: bool = pydantic.Field(
        False, description="Also export the model as a Hugging Face transformers GPT-2 directory "
        "and log it to MLflow (artifact hf_model).")
    # where the training runs: orchestration only, so not a core field
    launcher: Literal["auto", "in_process", "subprocess", "k8s"] = pydantic.Field(
        "auto", description="Where the training runs: auto (in_process for one process on one "
        "node, else subprocess), in_process (this step's process), subprocess (a Dagster Pipes worker "
        "process, torchrun inside for several), k8s (a pod of its own through dagster-k8s's PipesK8sClient).")
    k8s: K8sLaunchConfig = pydantic.Field(default_factory=K8sLaunchConfig, description="The training pod of launcher k8s.")
