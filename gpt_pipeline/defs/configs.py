"""Run config of each asset, as the Dagster Launchpad shows it, derived from the core's settings.

No field is written here: ``config_class`` builds each Dagster config class (a pydantic model)
from the core classes' pydantic fields (``gpt_pipeline.fields``): the type, the default, the
description with its bounds or choices, and the bounds themselves. A ``Literal`` becomes an enum
of Dagster's schema, so the Launchpad offers the choices and Dagster refuses any other value
before a run starts; a tuple becomes a list. Dagster's schema has no bounds: a value out of them
is refused when the step builds its config, before any work, in one line with the core's message
(``TrainConfig.learning_rate must be a finite number > 0, got -1.0``). Rules that tie fields
together run when the step builds the core settings (``core``), also before any work.
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
from gpt_pipeline.storage import project_root
from gpt_pipeline.model.gpt import GPTConfig
from gpt_pipeline.model.sampling import GenerationConfig
from gpt_pipeline.tokenizer.config import TokenizerConfig as TokenizerSettings
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
def _quickstart_ops() -> dict[str, Any]:
    if not QUICKSTART.is_file():  # an installed package without the project's configs/
        return {}
    return (yaml.safe_load(QUICKSTART.read_text()) or {}).get("ops") or {}


def quickstart_defaults(asset: str) -> dict[str, Any]:
    """``asset``'s values in ``configs/quickstart.yaml`` (what ``make run`` runs), which the Dagster
    config of the asset takes as its defaults: a partitioned job's Launchpad opens with its config
    schema's defaults (Dagster turns a partitioned job's ``config`` into a per-partition config
    that the Launchpad loads only once a partition is picked), so these are what it shows, and
    what a run launched without config (the asset graph's Materialize, automation) trains.
    Fields it leaves out keep the core's default (gpt-rs's example value)."""
    return dict((_quickstart_ops().get(asset) or {}).get("config") or {})


def refusal(cls: type, sources: tuple[type, ...], error: pydantic.ValidationError) -> str:
    """``error`` in one line, in the words of the core class that declares the field."""
    loc = error.errors()[0]["loc"]
    owner = next((source for source in sources if loc and loc[0] in fields.fields_of(source)), cls)
    return fields.one_line(owner, error)


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
            raise ConfigRefused(refusal(type(self), self.sources, error)) from None

    def core(self, cls: type, **values: Any) -> Any:
        """An instance of the settings class ``cls`` from this config's fields of that name (lists
        back to tuples) and ``values``; ``ValueError`` in one line when a rule is broken."""
        mine = {name: getattr(self, name) for name in fields.fields_of(cls) if name in type(self).model_fields}
        return cls(**{**mine, **values})


def config_class(name: str, sources: tuple[type, ...], doc: str, base: type = CoreConfig,
                 skip: tuple[str, ...] = (), defaults: dict[str, Any] | None = None,
                 **extra: tuple[Any, Any]) -> type:
    """A Dagster config class ``name`` with the fields of the settings classes ``sources`` (less
    ``skip``; ``defaults`` replaces declared defaults) and the ``extra`` (annotation,
    ``pydantic.Field``) fields of its own."""
    definitions: dict[str, tuple[Any, Any]] = {}
    for source in sources:
        for key, info in fields.fields_of(source).items():
            if key in definitions:
                raise ValueError(f"{name}: field {key!r} is declared by two of {sources}")
            if key not in skip:
                default = (defaults or {}).get(key, info.get_default(call_default_factory=True))
                definitions[key] = _definition(info, default)
    model = pydantic.create_model(name, __base__=base, __module__=__name__, __doc__=doc,
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


RawStoriesConfig = config_class("RawStoriesConfig", (StoriesConfig,), StoriesConfig.__doc__, CoreConfig,
                                defaults=quickstart_defaults("raw_stories"))
TokenizerConfig = config_class("TokenizerConfig", (TokenizerSettings,), TokenizerSettings.__doc__, CoreConfig,
                               defaults=quickstart_defaults("bpe_tokenizer"))
TokenizedDatasetConfig = config_class("TokenizedDatasetConfig", (DatasetConfig,), DatasetConfig.__doc__,
                                      CoreConfig, defaults=quickstart_defaults("tokenized_dataset"))
TrainedModelConfig = config_class(
    "TrainedModelConfig", (GPTConfig, TrainConfig),
    "The transformer (GPTConfig; vocab_size comes from the tokenizer) and its training (TrainConfig).",
    _TrainedModel, skip=("vocab_size",), defaults=quickstart_defaults("trained_model"),
    initial_checkpoint=(str | None, pydantic.Field(
        default=None,
        description="Start from this checkpoint's weights (ours, or one made by `gpt-pipeline "
        "import-gpt-rs`) instead of a fresh initialisation; its config must match.")),
    export_hf=(bool, pydantic.Field(
        default=False,
        description="Also export the model as a Hugging Face transformers GPT-2 directory and log "
        "it to MLflow (artifact hf_model).")),
    # where the training runs: orchestration only, so not a core field
    launcher=(Literal["auto", "in_process", "subprocess", "k8s"], pydantic.Field(
        default="auto",
        description="Where the training runs: auto (in_process for one process on one node, else "
        "subprocess), in_process (this step's process), subprocess (a Dagster Pipes worker process, "
        "torchrun inside for several), k8s (a pod of its own through dagster-k8s's PipesK8sClient).")),
    k8s=(K8sLaunchConfig, pydantic.Field(
        default_factory=K8sLaunchConfig, description="The training pod of launcher k8s.")),
)
SampleGenerationsConfig = config_class("SampleGenerationsConfig", (GenerationConfig,),
                                       GenerationConfig.__doc__, _SampleGenerations,
                                       defaults=quickstart_defaults("sample_generations"))

