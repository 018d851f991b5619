"""gpt_pipeline.defs.configs: each asset's Dagster config class derived from the core settings
classes; a value that is not among a field's choices refused by Dagster's config schema before any
run starts (execute_in_process, and the webserver's GraphQL config validation against a real code
server), a value out of its bounds when the step builds its config, before any work."""

from __future__ import annotations

import copy
import re
import typing
from pathlib import Path

import dagster as dg
import pydantic
import pytest
import yaml
from dagster._config import ConfigTypeKind  # tests only: the schema Dagster derives
from dagster._config.pythonic_config import infer_schema_from_config_class

from gpt_pipeline import fields
from gpt_pipeline.data.config import DatasetConfig, StoriesConfig
from gpt_pipeline.defs.sweeps import ASSET_CONFIGS
from gpt_pipeline.defs.configs import (
    QUICKSTART,
    BpeTokenizerConfig,
    RawStoriesConfig,
    SampleGenerationsConfig,
    TokenizedDatasetConfig,
    TrainedModelConfig,
)
from gpt_pipeline.defs.training_run import result_settings
from gpt_pipeline.definitions import defs
from gpt_pipeline.model.gpt import GPTConfig
from gpt_pipeline.model.generations import GenerationConfig
from gpt_pipeline.training.checkpoint import fingerprint
from gpt_pipeline.tokenizer.config import TokenizerConfig
from gpt_pipeline.training.config import TrainConfig
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG, with_default_variant

QUICKSTART_OPS = yaml.safe_load((Path(__file__).parents[2] / "configs" / "quickstart.yaml").read_text())["ops"]
DERIVED = [  # (config class, the core classes it derives from, its own fields in order)
    (RawStoriesConfig, (StoriesConfig,), ()),
    (BpeTokenizerConfig, (TokenizerConfig,), ()),
    (TokenizedDatasetConfig, (DatasetConfig,), ()),
    (TrainedModelConfig, (GPTConfig, TrainConfig), ("initial_checkpoint", "export_hf", "launcher", "k8s")),
    (SampleGenerationsConfig, (GenerationConfig,), ()),
]
BAD_VALUES = [  # (asset, field, value, the core's message)
    ("sample_generations", "temperature", -1, "GenerationConfig.temperature must be a finite number > 0, got -1"),
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
    declared = [(name, info) for source in sources for name, info in fields.fields_of(source).items()
                if not (source is GPTConfig and name == "vocab_size")]  # the tokenizer's
    assert list(config_class.model_fields) == [name for name, _ in declared] + list(extra)
    defaults = config_class()
    schema = infer_schema_from_config_class(config_class).config_type.fields
    asset = {"RawStoriesConfig": "raw_stories", "BpeTokenizerConfig": "bpe_tokenizer",
             "TokenizedDatasetConfig": "tokenized_dataset", "TrainedModelConfig": "trained_model",
             "SampleGenerationsConfig": "sample_generations"}[config_class.__name__]
    quickstart = QUICKSTART_OPS[asset]["config"]  # `make run`'s values are the Launchpad's defaults
    for name, info in declared:
        default = info.get_default(call_default_factory=True)
        if name in quickstart:
            default = quickstart[name]
            default = tuple(default) if isinstance(default, list) else default
        value = getattr(defaults, name)
        assert (tuple(value) if isinstance(value, list) else value) == default, name
        assert config_class.model_fields[name].description == (fields.describe(info) or None)
        assert schema[name].description == (fields.describe(info) or None)
        assert fields.bounds(config_class.model_fields[name]) == fields.bounds(info), name
    assert ASSET_CONFIGS[{"RawStoriesConfig": "raw_stories", "BpeTokenizerConfig": "bpe_tokenizer",
                          "TokenizedDatasetConfig": "tokenized_dataset", "TrainedModelConfig": "trained_model",
                          "SampleGenerationsConfig": "sample_generations"}[config_class.__name__]] is config_class


def test_the_defaults_are_the_quickstart_file_and_the_job_config():
    """One place per default: ``QUICKSTART`` (Python, read at no import) is configs/quickstart.yaml's
    content, and train_gpt_job's config, so `make run` and a run without config train the same model."""
    assert QUICKSTART_OPS == {asset: {"config": values} for asset, values in QUICKSTART.items()}
    assert defs.resolve_job_def("train_gpt_job").partitioned_config.get_run_config_for_partition_key("default") == {"ops": QUICKSTART_OPS}


def test_choices_are_enums_of_the_schema_and_bounds_are_in_the_description():
    schema = infer_schema_from_config_class(TrainedModelConfig).config_type.fields
    assert typing.get_args(TrainedModelConfig.model_fields["lr_schedule"].annotation) == ("constant", "cosine")
    enum = schema["lr_schedule"].config_type
    assert enum.kind == ConfigTypeKind.ENUM and [v.config_value for v in enum.enum_values] == ["constant", "cosine"]
    inner = schema["learning_rate"].config_type.inner_type  # Noneable, as Dagster makes every defaulted field
    assert inner.key == "Float" and schema["learning_rate"].description.endswith("(> 0)")
    assert schema["training_iterations"].config_type.inner_type.key == "IntSourceType"  # {env: NAME} too
    generation = infer_schema_from_config_class(SampleGenerationsConfig).config_type.fields
    assert generation["prompts"].config_type.inner_type.key == "Array.StringSourceType"  # a list


def _quickstart(asset: str, cls: type, **values):
    """``cls`` with the quickstart's values of ``asset`` (the Dagster defaults) under ``values``."""
    names = set(fields.fields_of(cls))
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in QUICKSTART_OPS[asset]["config"].items() if k in names}
    return cls(**{**given, **values})


def test_methods_build_the_core_configs():
    config = TrainedModelConfig(embedding_size=32, learning_rate=0.01, lr_schedule="cosine", export_hf=True)
    assert config.core(GPTConfig, vocab_size=300) == _quickstart("trained_model", GPTConfig, vocab_size=300, embedding_size=32)
    assert config.core(TrainConfig) == _quickstart("trained_model", TrainConfig, learning_rate=0.01, lr_schedule="cosine")
    generation = SampleGenerationsConfig(prompts=["Once", "The dog"], top_k=5).core(GenerationConfig)
    assert generation == _quickstart("sample_generations", GenerationConfig, prompts=("Once", "The dog"), top_k=5)
    assert RawStoriesConfig(num_stories=9).core(StoriesConfig) == _quickstart("raw_stories", StoriesConfig, num_stories=9)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: SampleGenerationsConfig(temperature=-1), "GenerationConfig.temperature must be a finite number > 0, got -1"),
    (lambda: SampleGenerationsConfig(top_k=0), "GenerationConfig.top_k must be a positive integer, got 0"),
    (lambda: TrainedModelConfig(lr_schedule="linear"), "TrainConfig.lr_schedule must be one of ('constant', 'cosine'), got 'linear'"),
    (lambda: TrainedModelConfig(learning_rate=float("inf")), "TrainConfig.learning_rate must be a finite number > 0, got inf"),
    (lambda: TrainedModelConfig(launcher="pod"), "TrainedModelConfig.launcher must be one of"),
])
def test_python_construction_checks_the_same_bounds_in_one_line(make, message):
    with pytest.raises(ValueError) as refused:
        make()
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


@pytest.mark.parametrize(("asset", "field", "value", "message"), BAD_VALUES)
def test_each_bad_value_is_refused_in_the_core_words(asset, field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ASSET_CONFIGS[asset](**{field: value})
    with pytest.raises(pydantic.ValidationError):  # model_validate (the sweeps') keeps pydantic's error
        SampleGenerationsConfig.model_validate({"temperature": -1})


def test_checkpoint_key_is_unchanged_for_existing_configs():
    """The keys of checkpoint folders made before the fields were declared: a resume must find them."""
    assert fingerprint(GPTConfig(), result_settings(TrainConfig()), "abc") == "5eace2d47c324727"
    changed = TrainConfig(learning_rate=1e-3, lr_schedule="cosine", num_processes=2, device="cpu", resume=False)
    assert fingerprint(GPTConfig(), result_settings(changed), "abc") == "5d2dff7b23e95d50"


@pytest.mark.parametrize(("asset", "field", "value"), BAD_CHOICES)
def test_bad_choices_are_refused_before_any_run_starts(tmp_path, asset, field, value):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        with pytest.raises(dg.DagsterInvalidConfigError) as refused:
            defs.resolve_job_def("train_gpt_job").execute_in_process(
                run_config=with_value(asset, field, value), instance=instance)
        errors = refused.value.errors
        assert len(errors) == 1 and errors[0].stack.levels == ["ops", asset, "config", field]
        assert "not in enum type" in errors[0].message
        assert instance.get_runs() == []  # nothing ran, nothing was materialized


@pytest.mark.parametrize(("asset", "field", "value", "message"), [
    ("raw_stories", "num_stories", 0, "StoriesConfig.num_stories must be a positive integer, got 0"),
    ("trained_model", "training_iterations", 0,
     "run config: trained_model: TrainConfig.training_iterations must be a positive integer, got 0")])
def test_bad_values_are_refused_in_one_line_before_the_step_works(tmp_path, asset, field, value, message):
    """Dagster's schema has no bounds: the run's first step refuses a value out of them, its own
    when it builds its config, a later step's when its body starts (``checks.user_errors`` checks
    the whole run config), with the core's one-line message; nothing is materialized."""
    from gpt_pipeline.defs.checks import failure_line

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = defs.resolve_job_def("train_gpt_job").execute_in_process(
            run_config=with_value(asset, field, value), instance=with_default_variant(instance),
            raise_on_error=False, partition_key="default")
        assert not result.success
        failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert [f.step_key for f in failures] == ["raw_stories"]  # the first step: no work done
        assert failure_line(failures[0].step_failure_data.error) == message
        assert not [e for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]


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


def test_graphql_config_validation_refuses_bad_choices(tmp_path):
    """The webserver's view, against a real code server: ``isPipelineConfigValid`` refuses a value
    that is not among a field's choices (the schema's enum), so no run starts."""
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
        assert instance.get_runs() == []
