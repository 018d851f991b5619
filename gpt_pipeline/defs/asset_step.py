"""``AssetStep``: what every asset of the lineage does around its own work, in one place.

An asset builds its step first thing, then does only what is its own::

    step = AssetStep(context, mlflow, config, check=ROUND_TRIP)  # partition key and config: first
    with step.run() as run:  # one-line errors; its MLflow run, tagged, with its params
        tokenizer, stats = train_tokenizer(...)
        step.made(provenance.tokenizer_digest(tokenizer), {"raw_stories": stories}, value=tokenizer)
        yield from step.gate(quality.tokenizer_round_trip(tokenizer, raw_stories))  # nothing stored if failed
    yield from step.results(tokenizer, {"merges": ...})  # Output, data version, lineage, run link; check

The steps, in order: the variant of a partitioned asset is checked (``check_variant``) and the
config resolved (``resolve_config``) before any work; the stored inputs are checked to belong
together (``check_inputs``); the MLflow run (``run``) carries the sweep's tags and the params and
turns the core's errors into one-line failures (``user_errors``); the blocking check gates the
value before it is yielded (``gate``); the Output carries the provenance's digest as its data
version, the lineage (``content_digest``, ``made_from.<input>``) and the MLflow run's link, and
the check's result follows it (``results``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from gpt_pipeline import provenance
from gpt_pipeline.defs.checks import check_result, gate, user_errors
from gpt_pipeline.defs.resources import MLflowResource
from gpt_pipeline.defs.variants import Variant, check_variant, resolve_config, sweep_tags
from gpt_pipeline.quality import Gate
from gpt_pipeline.tracking.tracker import TrackedRun


class AssetStep:
    """One materialization of an asset (see the module docstring).

    ``config``: the asset's Dagster config, resolved (a partitioned asset's variant checked
    first); ``like``: an asset configured as another (``resolve_config``), under ``like_variant``'s
    settings when given; ``check``: its blocking check."""

    def __init__(self, context: dg.AssetExecutionContext, mlflow: MLflowResource, config: dg.Config | None = None,
                 *, check: dg.AssetCheckSpec | None = None, like: str | None = None,
                 like_variant: Variant | None = None):
        self.context, self.mlflow, self.check = context, mlflow, check
        self.asset = context.asset_key.to_user_string()
        # first: a partition key that is no known variant (unknown, unsafe) is refused before any work
        self.variant = check_variant(context) if context.assets_def.partitions_def is not None else None
        self.config = None if config is None else resolve_config(
            context, self.asset, config, like=like, variant=like_variant if like else self.variant)
        self.inputs: dict[str, provenance.Provenance] = {}
        self.record: provenance.Provenance | None = None
        self.outcome: Gate | None = None
        self.mlflow_run: TrackedRun | None = None

    def check_inputs(self, **values) -> dict[str, provenance.Provenance]:
        """The stored inputs' provenance (``checked_inputs``), refused as one line when they do
        not belong together."""
        with user_errors():
            self.inputs = checked_inputs(self.context, self.asset, **values)
        return self.inputs

    @contextlib.contextmanager
    def run(self, params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None,
            parent_run_id: str | None = None) -> Iterator[TrackedRun]:
        """The step's MLflow run (``MLflowResource.asset_run``) tagged with the sweep (and variant)
        and ``tags``, nested under ``parent_run_id``, with ``params`` (the config's fields unless
        given) logged; the core's bad-input errors inside become one-line failures."""
        with user_errors(), self.mlflow.asset_run(self.context, tags={**sweep_tags(self.context, self.variant),
                                                                      **(tags or {})},
                                                  parent_run_id=parent_run_id) as run:
            self.mlflow_run = run
            params = self.config.model_dump() if params is None and self.config is not None else params
            if params:
                run.log_params(params)
            yield run

    def made(self, digest: str, inputs: Mapping[str, provenance.Provenance | str] | None = None, value: Any = None):
        """The provenance of what this step made (from its checked inputs, unless ``inputs``),
        attached to ``value`` (what its writer stores) when given; returns ``value``."""
        self.record = provenance.made(self.asset, digest, self.inputs if inputs is None else inputs)
        return value if value is None else provenance.attach(value, self.record)

    def gate(self, outcome: Gate) -> Iterator[dg.AssetCheckResult]:
        """The blocking check on the value before it is stored: a failure yields its result and
        fails the step (``checks.gate``)."""
        self.outcome = outcome
        yield from gate(self.check, outcome)

    def output(self, value: Any, metadata: Mapping[str, Any]) -> dg.Output:
        """``value`` with its data version (the provenance digest), ``metadata``, the lineage and
        the MLflow run's link. Dagster marks ``data_version`` beta (it keeps the UI's staleness
        true): its BetaWarning is silenced for this call, not the process."""
        with warnings.catch_warnings(action="ignore", category=dg.BetaWarning):
            return dg.Output(value, data_version=dg.DataVersion(self.record.digest),
                             metadata={**metadata, **lineage(self.record), **run_link(self.mlflow, self.mlflow_run)})

    def results(self, value: Any, metadata: Mapping[str, Any]) -> Iterator[dg.Output | dg.AssetCheckResult]:
        """The Output (``output``), then the blocking check's result, when the asset has one."""
        yield self.output(value, metadata)
        if self.check is not None:
            yield check_result(self.check, self.outcome)


def checked_inputs(context: dg.AssetExecutionContext, asset: str, **values) -> dict[str, provenance.Provenance]:
    """The provenance of ``asset``'s stored inputs (``initial_checkpoint``: a path or None),
    refused (``ProvenanceError``) when they do not belong together; files that record none are
    accepted with a warning in the log."""
    inputs = {}
    for name, value in values.items():
        if name != "initial_checkpoint":
            inputs[name] = provenance.of(value, name)
        elif value and Path(value).is_file():  # only its tokenizer must be ours: it may start a new dataset
            start = provenance.of_checkpoint(value)
            inputs[name] = provenance.Provenance(name, start.digest, {k: v for k, v in (start.inputs or {}).items() if k == "bpe_tokenizer"})
    for warning in provenance.check_inputs(asset, inputs):
        context.log.warning(warning)
    return inputs


def lineage(record: provenance.Provenance) -> dict[str, dg.MetadataValue]:
    """``content_digest`` (also the data version) and ``made_from.<input>`` digests."""
    return {name: dg.MetadataValue.text(value) for name, value in record.metadata().items()}


def run_link(mlflow: MLflowResource, run: TrackedRun) -> dict[str, dg.MetadataValue]:
    return {
        "mlflow_run_id": dg.MetadataValue.text(run.run_id),
        "mlflow_run": dg.MetadataValue.url(mlflow.run_url(run)),
    }


def latest_metadata(context: dg.AssetExecutionContext, asset: str, key: str) -> Any:
    """The value of ``key`` in the latest materialization of ``asset``'s partition of the same key
    as this step's (a variant reads its own model's, whatever ran since), if any."""
    partition = context.partition_key if context.has_partition_key else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1).records
    if not records or records[0].asset_materialization is None:
        return None
    value = records[0].asset_materialization.metadata.get(key)
    return value.value if value is not None else None


def upstream_mlflow_run(context: dg.AssetExecutionContext, asset: str) -> str | None:
    """The MLflow run id recorded by ``asset``'s latest materialization of this step's partition."""
    return latest_metadata(context, asset, "mlflow_run_id")
