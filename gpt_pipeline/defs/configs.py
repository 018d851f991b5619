"""Each asset's Dagster config class (pydantic), derived from the core settings' fields.

``config_class`` copies each field's type, description (with its bounds or choices) and bounds;
the defaults are ``configs/quickstart.yaml``'s (``quickstart_defaults``). A ``Literal`` is an
enum of Dagster's schema, refused before a run starts; a tuple becomes a list. The schema has no
bounds: the step refuses a value out of them when it builds its config, before any work, in one
line with the core's words (``ConfigRefused``); the CLI and the sweeps check them up front.
"""

from __future__ import annotations

import functools
import typing
from typing import Any, ClassVar, Literal

import dagster as dg
import pydantic
import yaml

from gpt_pipeline import fields
from gpt_pipeline.data.config import DatasetConfig, StoriesConfig
from gpt_pipeline.defs.k8s import K8sLaunchConfig
from gpt_pipeline.evaluation.config import EvaluationConfig
from gpt_pipeline.storage import project_root
from gpt_pipeline.model.gpt import GPTConfig
from gpt_pipeline.model.generations import GenerationConfig
from gpt_pipeline.tokenizer.config import TokenizerConfig
from gpt_pipeline.training.config import TrainConfig

QUICKSTART = project_root() / "configs" / "quickstart.yaml"  # the run config of `make run`


def _definition(info: Any, default: Any) -> tuple[Any, Any]:
    """``create_model``'s (annotation, ``pydantic.Field``) of a core field, defaulting to ``default``."""
    hint = info.annotation
    if typing.get_origin(hint) is tuple:  # Dagster's config has lists, not tuples
        hint, default = list[typing.get_args(hint)[0]], list(default)
    finite = {"allow_inf_nan": False} if fields.field_type(info)[0] is float else {}
    return hint, pydantic.Field(default=default, description=fields.describe(info) or None,
                                **fields.bounds(info), **finite)


@functools.cache
def quickstart_run_config() -> dict[str, Any]:
    """``configs/quickstart.yaml``, read once ({} in an installed package without configs/)."""
    return (yaml.safe_load(QUICKSTART.read_text()) or {}) if QUICKSTART.is_file() else {}


def quickstart_defaults(asset: str) -> dict[str, Any]:
    """``asset``'s values in ``configs/quickstart.yaml`` (``make run``'s), its Dagster config's
    defaults: a partitioned job's Launchpad opens with the schema's defaults, and runs launched
    without config (the asset graph's Materialize, automation) train them. Other fields keep the
    core's default (gpt-rs's example value)."""
    return dict(((quickstart_run_config().get("ops") or {}).get(asset) or {}).get("config") or {})


class ConfigRefused(dg.Failure, ValueError):
    """A config value refused in one line: a ``ValueError`` as the core's, and to Dagster a
    ``Failure`` (its description is what the step shows; no retry)."""

    def __init__(self, message: str):
        super().__init__(description=message, allow_retries=False)


class CoreConfig(dg.Config):
    """A Dagster config class derived from core settings classes (``sources``), which it builds back."""

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


def config_class(name: str, asset: str, sources: tuple[type, ...], base: type = CoreConfig,
                 doc: str | None = None, skip: tuple[str, ...] = (), **extra: tuple[Any, Any]) -> type:
    """The Dagster config class ``name`` of ``asset``: the fields of ``sources`` less ``skip``,
    defaulting to ``quickstart_defaults(asset)``, and its own ``extra`` (annotation, Field)."""
    defaults, definitions = quickstart_defaults(asset), {}
    for key, info in ((k, i) for source in sources for k, i in fields.fields_of(source).items() if k not in skip):
        if key in definitions:
            raise ValueError(f"{name}: field {key!r} is declared by two of {sources}")
        definitions[key] = _definition(info, defaults.get(key, info.get_default(call_default_factory=True)))
    model = pydantic.create_model(name, __base__=base, __module__=__name__, __doc__=doc or sources[0].__doc__,
                                  **definitions, **extra)
    model.__qualname__, model.sources = name, sources
    return model


class _TrainedModel(CoreConfig):
    def gpt_config(self, vocab_size: int) -> GPTConfig:
        return self.core(GPTConfig, vocab_size=vocab_size)

    def training_config(self) -> TrainConfig:
        return self.core(TrainConfig)


class _SampleGenerations(CoreConfig):
    def generation_config(self) -> GenerationConfig:
        return self.core(GenerationConfig)


class _Evaluation(CoreConfig):
    def evaluation_config(self) -> EvaluationConfig:
        return self.core(EvaluationConfig)


RawStoriesConfig = config_class("RawStoriesConfig", "raw_stories", (StoriesConfig,))
BpeTokenizerConfig = config_class("BpeTokenizerConfig", "bpe_tokenizer", (TokenizerConfig,))
TokenizedDatasetConfig = config_class("TokenizedDatasetConfig", "tokenized_dataset", (DatasetConfig,))
TrainedModelConfig = config_class(
    "TrainedModelConfig", "trained_model", (GPTConfig, TrainConfig), _TrainedModel,
    "The transformer (GPTConfig; vocab_size comes from the tokenizer) and its training (TrainConfig).",
    skip=("vocab_size",),
    initial_checkpoint=(str | None, pydantic.Field(
        default=None, description="Start from this checkpoint's weights (ours, or one made by `gpt-pipeline "
        "import-gpt-rs`) instead of a fresh initialisation; its config must match.")),
    export_hf=(bool, pydantic.Field(
        default=False, description="Also export the model as a Hugging Face transformers GPT-2 directory "
        "and log it to MLflow (artifact hf_model).")),
    # where the training runs: orchestration only, so not a core field
    launcher=(Literal["auto", "in_process", "subprocess", "k8s"], pydantic.Field(
        default="auto", description="Where the training runs: auto (in_process for one process on one "
        "node, else subprocess), in_process (this step's process), subprocess (a Dagster Pipes worker "
        "process, torchrun inside for several), k8s (a pod of its own through dagster-k8s's PipesK8sClient).")),
    k8s=(K8sLaunchConfig, pydantic.Field(default_factory=K8sLaunchConfig, description="The training pod of launcher k8s.")),
)
SampleGenerationsConfig = config_class("SampleGenerationsConfig", "sample_generations", (GenerationConfig,),
                                       _SampleGenerations)
ModelEvaluationConfig = config_class("ModelEvaluationConfig", "model_evaluation", (EvaluationConfig,), _Evaluation)
