"""gpt_pipeline.defs.configs: each asset's Dagster config class derived from the core dataclasses,
and bad values refused by Dagster's config schema before any step runs (execute_in_process, and
the webserver's GraphQL config validation and launch against a real code server)."""

from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path

import dagster as dg
import pydantic
import pytest
import yaml
from dagster._config import ConfigTypeKind
from dagster._config.pythonic_config import infer_schema_from_config_class

from gpt_pipeline import fields
from gpt_pipeline.data.config import DatasetConfig, StoriesConfig
from gpt_pipeline.defs.sweeps import ASSET_CONFIGS
from gpt_pipeline.defs.configs import (
    RawStoriesConfig,
    SampleGenerationsConfig,
    TokenizedDatasetConfig,
    TokenizerConfig,
    TrainedModelConfig,
)
from gpt_pipeline.defs.training_run import result_settings
from gpt_pipeline.definitions import defs
from gpt_pipeline.model.gpt import GPTConfig
from gpt_pipeline.model.sampling import GenerationConfig
from gpt_pipeline.training.checkpoint import fingerprint
from gpt_pipeline.tokenizer.config import TokenizerConfig as TokenizerSettings
from gpt_pipeline.training.config import TrainConfig
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG

QUICKSTART_OPS = yaml.safe_load((Path(__file__).parents[2] / "configs" / "quickstart.yaml").read_text())["ops"]
DERIVED = [  # (config class, the core classes it derives from, its own fields in order)
    (RawStoriesConfig, (StoriesConfig,), ()),
    (TokenizerConfig, (TokenizerSettings,), ()),
    (TokenizedDatasetConfig, (DatasetConfig,), ()),
    (TrainedModelConfig, (GPTConfig, TrainConfig), ("initial_checkpoint", "export_hf", "launcher", "k8s")),
    (SampleGenerationsConfig, (GenerationConfig,), ()),
]
BAD_VALUES = [  # (asset, field, value, the core's message)
    ("sample_generations", "temperature", -1, "GenerationConfig.temperature must be a finite number > 0, got -1.0"),
    ("trained_model", "learning_rate", -0.001, "TrainConfig.learning_rate must be a finite number > 0, got -0.001"),
    ("trained_model", "training_iterations", 0, "TrainConfig.training_iterations must be a positive integer, got 0"),
    ("tokenized_dataset", "training_percentage", 1.5, "DatasetConfig.training_percentage must be in (0, 1), got 1.5"),
]
BAD_CHOICES = [("trained_model", "lr_schedule", "linear"), ("trained_model", "grad_clip", "global"),
               ("sample_generations", "unknown", "ignore")]


def with_value(asset: str, field: str, value) -> dict:
    config = copy.deepcopy(TINY_RUN_CONFIG)
    config["ops"][asset]["config"][field] = value
    return config


@pytest.mark.parametrize(("config_class", "sources", "extra"), DERIVED, ids=lambda v: getattr(v, "__name__", ""))
def test_every_field_comes_from_the_core_declaration(config_class, sources, extra):
    declared = [f for source in sources for f in fields.fields_of(source)
                if not (source is GPTConfig and f.name == "vocab_size")]  # the tokenizer's
    assert list(config_class.model_fields) == [f.name for f in declared] + list(extra)
    defaults = config_class()
    schema = infer_schema_from_config_class(config_class).config_type.fields
    asset = {"RawStoriesConfig": "raw_stories", "TokenizerConfig": "bpe_tokenizer",
             "TokenizedDatasetConfig": "tokenized_dataset", "TrainedModelConfig": "trained_model",
             "SampleGenerationsConfig": "sample_generations"}[config_class.__name__]
    quickstart = QUICKSTART_OPS[asset]["config"]  # `make run`'s values are the Launchpad's defaults
    for field in declared:
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if field.name in quickstart:
            default = quickstart[field.name]
            default = tuple(default) if isinstance(default, list) else default
        value = getattr(defaults, field.name)
        assert (tuple(value) if isinstance(value, list) else value) == default, field.name
        assert config_class.model_fields[field.name].description == (fields.describe(field) or None)
        assert schema[field.name].description == (fields.describe(field) or None)
    assert ASSET_CONFIGS[{"RawStoriesConfig": "raw_stories", "TokenizerConfig": "bpe_tokenizer",
                          "TokenizedDatasetConfig": "tokenized_dataset", "TrainedModelConfig": "trained_model",
                          "SampleGenerationsConfig": "sample_generations"}[config_class.__name__]] is config_class


def test_choices_are_enums_and_bounds_are_types_of_the_schema():
    schema = infer_schema_from_config_class(TrainedModelConfig).config_type.fields
    assert typing.get_args(TrainedModelConfig.model_fields["lr_schedule"].annotation) == ("constant", "cosine")
    enum = schema["lr_schedule"].config_type
    assert enum.kind == ConfigTypeKind.ENUM and [v.config_value for v in enum.enum_values] == ["constant", "cosine"]
    inner = schema["learning_rate"].config_type.inner_type  # Noneable, as Dagster makes every defaulted field
    assert inner.key == "Float[>0]" and inner.description == "a finite number > 0"
    assert schema["training_iterations"].config_type.inner_type.key == "Int[>=1]"
    generation = infer_schema_from_config_class(SampleGenerationsConfig).config_type.fields
    assert generation["prompts"].config_type.inner_type.key == "Array.StringSourceType"  # a list


def _quickstart(asset: str, cls: type, **values):
    """``cls`` with the quickstart's values of ``asset`` (the Dagster defaults) under ``values``."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in QUICKSTART_OPS[asset]["config"].items() if k in names}
    return cls(**{**given, **values})


def test_methods_build_the_core_configs():
    config = TrainedModelConfig(embedding_size=32, learning_rate=0.01, lr_schedule="cosine", export_hf=True)
    assert config.gpt_config(300) == _quickstart("trained_model", GPTConfig, vocab_size=300, embedding_size=32)
    assert config.training_config() == _quickstart("trained_model", TrainConfig, learning_rate=0.01, lr_schedule="cosine")
    generation = SampleGenerationsConfig(prompts=["Once", "The dog"], top_k=5).generation_config()
    assert generation == _quickstart("sample_generations", GenerationConfig, prompts=("Once", "The dog"), top_k=5)
    assert RawStoriesConfig(num_stories=9).core(StoriesConfig) == _quickstart("raw_stories", StoriesConfig, num_stories=9)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: SampleGenerationsConfig(temperature=-1), "greater than 0"),
    (lambda: SampleGenerationsConfig(top_k=0), "greater than or equal to 1"),
    (lambda: TrainedModelConfig(lr_schedule="linear"), "'constant' or 'cosine'"),
    (lambda: TrainedModelConfig(learning_rate=float("inf")), "finite"),
])
def test_python_construction_checks_the_same_bounds(make, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        make()


def test_checkpoint_key_is_unchanged_for_existing_configs():
    """The keys of checkpoint folders made before the fields were declared: a resume must find them."""
    assert fingerprint(GPTConfig(), result_settings(TrainConfig()), "abc") == "5eace2d47c324727"
    changed = TrainConfig(learning_rate=1e-3, lr_schedule="cosine", num_processes=2, device="cpu", resume=False)
    assert fingerprint(GPTConfig(), result_settings(changed), "abc") == "5d2dff7b23e95d50"


@pytest.mark.parametrize(("asset", "field", "value", "message"), BAD_VALUES + [(*c, "not in enum type") for c in BAD_CHOICES])
def test_bad_values_are_refused_before_any_step_runs(tmp_path, asset, field, value, message):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        with pytest.raises(dg.DagsterInvalidConfigError) as refused:
            defs.resolve_job_def("train_gpt_job").execute_in_process(
                run_config=with_value(asset, field, value), instance=instance)
        errors = refused.value.errors
        assert len(errors) == 1 and errors[0].stack.levels == ["ops", asset, "config", field]
        text = errors[0].error_data.message if errors[0].error_data and hasattr(errors[0].error_data, "cls_name") \
            else errors[0].message
        assert message in text
        assert instance.get_runs() == []  # nothing ran, nothing was materialized
        assert instance.get_latest_materialization_event(dg.AssetKey("raw_stories")) is None


VALIDATE = """
query Validate($selector: PipelineSelector!, $runConfigData: RunConfigData!) {
  isPipelineConfigValid(pipeline: $selector, runConfigData: $runConfigData, mode: "default") {
    __typename
    ... on PipelineConfigValidationInvalid { errors { message reason } }
  }
}
"""
ROOT_DEFAULTS = """
query Defaults($selector: PipelineSelector!) {
  runConfigSchemaOrError(selector: $selector, mode: "default") {
    ... on RunConfigSchema { rootDefaultYaml }
  }
}
"""
LAUNCH = """
mutation Launch($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on PipelineConfigValidationInvalid { errors { message } }
    ... on PythonError { message }
    ... on LaunchRunSuccess { run { runId } }
  }
}
"""


def test_graphql_config_validation_and_launch_refuse_bad_values(tmp_path):
    """The webserver's view, against a real code server: ``isPipelineConfigValid`` refuses a value
    that is not among a field's choices (the schema's enum); a value out of its bounds is refused
    when the run is launched (Dagster resolves the run config in the code server), so no run starts."""
    from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql, infer_job_selector

    import gpt_pipeline.definitions as definitions

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance, \
            define_out_of_process_context(definitions.__file__, "defs", instance) as context:
        selector = infer_job_selector(context, "train_gpt_job")

        def validate(run_config):
            result = execute_dagster_graphql(context, VALIDATE, {"selector": selector, "runConfigData": run_config})
            return result.data["isPipelineConfigValid"]

        assert validate({})["__typename"] == "PipelineConfigValidationValid"  # every default
        # The Launchpad opens with rootDefaultYaml (a partitioned job has no preset): make run's config
        defaults = execute_dagster_graphql(context, ROOT_DEFAULTS, {"selector": selector}).data
        opened = yaml.safe_load(defaults["runConfigSchemaOrError"]["rootDefaultYaml"])["ops"]
        for asset, values in QUICKSTART_OPS.items():
            assert {k: opened[asset]["config"][k] for k in values["config"]} == values["config"], asset
        assert validate(TINY_RUN_CONFIG)["__typename"] == "PipelineConfigValidationValid"
        for asset, field, value in BAD_CHOICES:
            answer = validate(with_value(asset, field, value))
            assert answer["__typename"] == "RunConfigValidationInvalid", (field, answer)
            assert "not in enum type" in answer["errors"][0]["message"] and field in answer["errors"][0]["message"]
        for asset, field, value, message in BAD_VALUES:
            launched = execute_dagster_graphql(context, LAUNCH, {"executionParams": {
                "selector": selector, "runConfigData": with_value(asset, field, value), "mode": "default"}})
            answer = launched.data["launchPipelineExecution"]
            assert answer["__typename"] != "LaunchRunSuccess" and message in answer["message"], (field, answer)
        assert instance.get_runs() == []
