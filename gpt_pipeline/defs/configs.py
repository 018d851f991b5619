"""Run config of each asset, as the Dagster Launchpad shows it, derived from the core's dataclasses.

No field is written here: ``config_class`` builds each Dagster config class from the core
dataclasses' declarations (``gpt_pipeline.fields.param``), with the type, the default, the
description (``fields.describe``) and the constraints:

- a field with ``choices`` becomes a ``Literal[...]``: Dagster's schema is an enum, so the
  Launchpad offers the choices and config validation (``isPipelineConfigValid``, the run's
  launch, ``execute_in_process``) refuses any other value;
- a field with bounds (``ge``/``gt``/``lt``/``le``) gets a scalar config type of its own
  (``BoundedInt``, ``BoundedFloat``) whose post-processing checks them: Dagster refuses the value when it
  resolves the run config, before any step runs (the launch of a run, ``execute_in_process``,
  the CLI's ``materialize``), with the core's message (``TrainConfig.learning_rate must be a
  finite number > 0, got -1.0``); pydantic checks the same bounds when the class is built in
  Python. The webserver's ``isPipelineConfigValid`` sees only the schema's types (Dagster's
  config snapshots have no bounds), so a bound is refused when the run is launched;
- tuples become lists; a field without ``param`` metadata keeps its type and default only.

Rules that tie fields together (``head_count`` divides ``embedding_size``, ``num_processes`` at
most ``contexts_per_batch``) stay in the dataclasses' ``validate``, which each asset calls
before any expensive work.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

import dagster as dg
import pydantic
import yaml
from dagster._config.config_type import ConfigScalar, ConfigScalarKind, ScalarUnion
from dagster._config.errors import PostProcessingError
from dagster._config.source import IntSourceType
from pydantic_core import core_schema

from gpt_pipeline import fields
from gpt_pipeline.data.config import DatasetConfig, StoriesConfig
from gpt_pipeline.defs.k8s import K8sLaunchConfig
from gpt_pipeline.evaluation.config import EvaluationConfig
from gpt_pipeline.storage import project_root
from gpt_pipeline.model.gpt import GPTConfig
from gpt_pipeline.model.sampling import GenerationConfig
from gpt_pipeline.tokenizer.config import TokenizerConfig as TokenizerSettings
from gpt_pipeline.training.config import TrainConfig

_BOUND_NAMES = ("gt", "ge", "lt", "le")
QUICKSTART = project_root() / "configs" / "quickstart.yaml"  # the run config of `make run`


class _Bounded:
    """A field's bounds as a Dagster config type: its post-processing refuses a value out of them,
    with ``fields.check``'s message, when Dagster resolves the run config. Also a pydantic
    annotation, with the same bounds in Python."""

    base: type

    def _bind(self, cls: type, field: dataclasses.Field) -> str:
        self.cls, self.field = cls, field
        self.bounds = {name: field.metadata[name] for name in _BOUND_NAMES if name in field.metadata}
        symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
        return ("Int" if self.base is int else "Float") + "[" + ",".join(
            f"{symbols[k]}{v}" for k, v in self.bounds.items()) + "]"

    def _check(self, value: Any) -> Any:
        value = self.base(value)
        try:  # the core's own check, on a default instance with this one value replaced
            fields.check(dataclasses.replace(self.cls(), **{self.field.name: value}))
        except ValueError as error:
            raise PostProcessingError(str(error)) from None
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        if self.base is int:
            return core_schema.int_schema(**self.bounds)
        return core_schema.float_schema(**self.bounds, allow_inf_nan=False)

    def __call__(self, *args: Any) -> Any:  # typing.Optional[...] takes only callables
        raise TypeError(f"{self.key} is a config type, not a constructor")


class BoundedInt(_Bounded, ScalarUnion):
    """An integer field with bounds; like Dagster's ``IntSource`` it also takes ``{env: NAME}``."""

    base = int

    def __init__(self, cls: type, field: dataclasses.Field):
        key = self._bind(cls, field)
        ScalarUnion.__init__(self, scalar_type=int, non_scalar_schema=dg.Selector({"env": str}), _key=key)
        self._description = fields.requirement(cls, field)

    def post_process(self, value: Any) -> Any:
        return self._check(IntSourceType.post_process(self, value))


class BoundedFloat(_Bounded, ConfigScalar):
    """A float field with bounds."""

    base = float

    def __init__(self, cls: type, field: dataclasses.Field):
        key = self._bind(cls, field)
        ConfigScalar.__init__(self, key=key, given_name=key, scalar_kind=ConfigScalarKind.FLOAT,
                              description=fields.requirement(cls, field))

    def post_process(self, value: Any) -> Any:
        return self._check(value)


def _annotation(cls: type, field: dataclasses.Field) -> Any:
    """The pydantic annotation of a dataclass field (see the module docstring)."""
    base, optional = fields.field_type(cls, field)
    meta = field.metadata
    if meta.get("choices"):
        kind: Any = Literal[tuple(meta["choices"])]
    elif base in (int, float) and any(name in meta for name in _BOUND_NAMES):
        kind = (BoundedInt if base is int else BoundedFloat)(cls, field)
    elif base in (tuple, list):
        args = [a for a in typing.get_args(typing.get_type_hints(cls)[field.name]) if a is not Ellipsis]
        kind = list[args[0]] if args else list
    else:
        kind = base
    return typing.Optional[kind] if optional else kind  # noqa: UP045 - kind may be a config type


def _default(field: dataclasses.Field) -> Any:
    value = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    return list(value) if isinstance(value, tuple) else value


def pydantic_fields(cls: type, skip: tuple[str, ...] = (), defaults: dict[str, Any] | None = None
                    ) -> dict[str, tuple[Any, Any]]:
    """``create_model`` field definitions of the dataclass ``cls``'s fields, less ``skip``; a
    field named in ``defaults`` defaults to that value instead of its declared default."""
    defaults = defaults or {}
    return {
        field.name: (_annotation(cls, field),
                     pydantic.Field(default=defaults.get(field.name, _default(field)),
                                    description=fields.describe(field) or None))
        for field in fields.fields_of(cls) if field.name not in skip
    }


def quickstart_defaults(asset: str) -> dict[str, Any]:
    """``asset``'s values in ``configs/quickstart.yaml`` (what ``make run`` runs), which the Dagster
    config of the asset takes as its defaults: a partitioned job's Launchpad opens with its config
    schema's defaults (Dagster turns a partitioned job's ``config`` into a per-partition config
    that the Launchpad loads only once a partition is picked), so these are what it shows, and
    what a run launched without config (the asset graph's Materialize, automation) trains.
    Fields it leaves out keep the core's default (gpt-rs's example value)."""
    if not QUICKSTART.is_file():  # an installed package without the project's configs/
        return {}
    ops = (yaml.safe_load(QUICKSTART.read_text()) or {}).get("ops") or {}
    return dict((ops.get(asset) or {}).get("config") or {})


def config_class(name: str, sources: tuple[type, ...], doc: str, base: type = dg.Config,
                 skip: tuple[str, ...] = (), defaults: dict[str, Any] | None = None,
                 **extra: tuple[Any, Any]) -> type:
    """A Dagster config class ``name`` with the fields of the dataclasses ``sources`` (less
    ``skip``; ``defaults`` replaces declared defaults) and the ``extra`` (annotation,
    ``pydantic.Field``) fields of its own."""
    definitions: dict[str, tuple[Any, Any]] = {}
    for source in sources:
        for key, definition in pydantic_fields(source, skip, defaults).items():
            if key in definitions:
                raise ValueError(f"{name}: field {key!r} is declared by two of {sources}")
            definitions[key] = definition
    model = pydantic.create_model(name, __base__=base, __module__=__name__, __doc__=doc,
                                  **definitions, **extra)
    model.__qualname__ = name
    return model


class CoreConfig(dg.Config):
    """Builds the core dataclasses back from a derived config class."""

    def core(self, cls: type, **values: Any) -> Any:
        """An instance of the dataclass ``cls`` from this config's fields of that name (lists
        back to tuples) and ``values``."""
        for field in fields.fields_of(cls):
            if field.name not in values and field.name in type(self).model_fields:
                value = getattr(self, field.name)
                values[field.name] = tuple(value) if isinstance(value, list) else value
        return cls(**values)


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
ModelEvaluationConfig = config_class("ModelEvaluationConfig", (EvaluationConfig,), EvaluationConfig.__doc__,
                                     _Evaluation, defaults=quickstart_defaults("model_evaluation"))
