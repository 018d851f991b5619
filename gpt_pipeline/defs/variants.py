"""Variants: the dynamic partitions of ``trained_model`` and ``sample_generations``, each bound
to the config it is trained with.

A variant exists once a sweep, a search or ``gpt-pipeline materialize`` adds it to the Dagster
instance (``VARIANTS``, dynamic partitions named ``variants``): every variant ever trained stays
a partition, visible and comparable however the code location was started. Nothing is read at
import time to decide what exists.

Its config is a JSON record, ``<data dir>/variants/<variant>.json`` (written atomically, once):
the sweep it belongs to, the base config of the variant assets, its overrides, and for a search
trial the study and trial number. A backfill, a schedule or declarative automation materializes
a variant with that config and no run config. A record is never rewritten with another config:
a variant names one configuration for good (another configuration is another variant).
``default`` (what ``make run`` trains) needs no record: its config is the run's run config.

An asset's config, from weakest to strongest (``resolve_config``): the field defaults, the
variant's base, the run config the run was launched with, the variant's overrides.

``check_variant`` is the first thing a partitioned asset does: a key that is not a safe name, not
a partition of the instance, or without a record is refused before any file, MLflow run or model
version is made, however the run was launched (CLI, UI, GraphQL, schedule, sensor).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from gpt_pipeline.storage import atomic_write_text, data_dir, exclusive

VARIANTS_NAME = "variants"
VARIANTS = dg.DynamicPartitionsDefinition(name=VARIANTS_NAME)
DEFAULT_VARIANT = "default"
VARIANT_ASSET_NAMES = ("trained_model", "sample_generations", "model_evaluation")
# a partition key and a file name at once: no path separator, no "..", no leading dot
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=+-]{0,63}")


class VariantError(ValueError):
    """A variant that cannot be used, in one line."""


def is_safe_name(name: Any) -> bool:
    """Whether ``name`` can be a partition key and a file name.

    Example:
        >>> [is_safe_name(n) for n in ("lr_low", "t-3", "../x", ".hidden", "a..b", "", 7)]
        [True, True, False, False, False, False, False]
    """
    return isinstance(name, str) and bool(NAME.fullmatch(name)) and ".." not in name


def _shown(name: Any) -> str:
    text = repr(name)
    return text if len(text) <= 80 else text[:77] + "...'"


@dataclass(frozen=True)
class Variant:
    """A variant's binding: its sweep, the base config and overrides of the variant assets
    (``{asset: {field: value}}``), and for a search trial ``{"study", "number", "storage"}``."""

    name: str
    sweep: str = DEFAULT_VARIANT
    base: dict[str, dict[str, Any]] = field(default_factory=dict)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    trial: dict[str, Any] | None = None

    def describe(self) -> str:
        """The overrides in one line, e.g. ``trained_model.learning_rate=0.01``."""
        parts = [f"{asset}.{key}={value}" for asset, values in self.overrides.items() for key, value in values.items()]
        return ", ".join(parts) or "(base)"

    def to_json(self) -> dict[str, Any]:
        return {"variant": self.name, "sweep": self.sweep, "base": self.base, "overrides": self.overrides,
                "trial": self.trial}


def records_dir() -> Path:
    return data_dir() / "variants"


def record_path(name: str) -> Path:
    if not is_safe_name(name):
        raise VariantError(f"variant {_shown(name)}: a name must be 1-64 letters, digits, _ . = + - with no "
                           "leading dot and no '..' (it becomes a partition key and a file name)")
    return records_dir() / f"{name}.json"


def read_variant(name: str) -> Variant | None:
    """The record of variant ``name``; ``Variant(default)`` for ``default`` without one; None
    when there is none."""
    path = record_path(name)
    if not path.is_file():
        return Variant(name) if name == DEFAULT_VARIANT else None
    try:
        data = json.loads(path.read_text())
        return Variant(name, data["sweep"], data.get("base") or {}, data.get("overrides") or {}, data.get("trial"))
    except (ValueError, KeyError, TypeError) as error:
        raise VariantError(f"variant {name!r}: its record {path.name} cannot be read: {error}") from None


def save_variant(instance: dg.DagsterInstance, variant: Variant) -> Variant:
    """Record ``variant`` (once; the same config again is a no-op) and add it to the instance's
    partitions. A variant already recorded with another config is refused (``VariantError``)."""
    path = record_path(variant.name)
    with exclusive(records_dir() / ".lock-dir"):
        existing = read_variant(variant.name) if path.is_file() else None
        if existing is not None:
            if (existing.base, existing.overrides) != (variant.base, variant.overrides):
                raise VariantError(
                    f"variant {variant.name!r} was trained with {existing.describe()} (sweep {existing.sweep}), "
                    f"not {variant.describe()}: give the new configuration a name of its own")
            variant = existing
        else:
            atomic_write_text(path, json.dumps(variant.to_json(), indent=1, sort_keys=True))
    add_partition(instance, variant.name)
    return variant


def add_partition(instance: dg.DagsterInstance, name: str) -> None:
    """Add ``name`` (a safe name) to the instance's variants when it is not there yet."""
    record_path(name)  # refuses an unsafe name
    if instance.has_dynamic_partition(VARIANTS_NAME, name):
        return
    try:
        instance.add_dynamic_partitions(VARIANTS_NAME, [name])
    except Exception:  # noqa: BLE001 - another process added it meanwhile (a unique key): fine
        if not instance.has_dynamic_partition(VARIANTS_NAME, name):
            raise


def require_variant(instance: dg.DagsterInstance, name: str) -> None:
    """``name`` as a run's partition: ``default`` is added (what ``make run`` trains); any other
    must be a variant of ``instance`` already. ``ValueError`` (one line) for an unsafe or unknown name."""
    record_path(name)  # an unsafe name: refused in one line
    if name == DEFAULT_VARIANT:
        add_partition(instance, name)
    elif not instance.has_dynamic_partition(VARIANTS_NAME, name):
        known = ", ".join(known_variants(instance)) or "none"
        raise ValueError(f"--partition {name!r} is not a variant of this Dagster instance (known: {known}): "
                         "add variants with `gpt-pipeline sweep`")


def known_variants(instance: dg.DagsterInstance) -> list[str]:
    """Every variant partition of the instance, in the order they were added."""
    return list(instance.get_dynamic_partitions(VARIANTS_NAME))


def check_variant(context: dg.AssetExecutionContext) -> Variant:
    """The variant of this step's partition, or a ``dagster.Failure`` (one line, no retry) when
    the run has no partition, or its key is unsafe, unknown to the instance or unrecorded."""
    asset = context.asset_key.to_user_string()
    if not context.has_partition_key:
        raise dg.Failure(description=f"{asset} has one partition per variant: launch it with a partition "
                         f"key (known: {', '.join(known_variants(context.instance)) or 'none yet'})",
                         allow_retries=False)
    key = context.partition_key
    if not is_safe_name(key):
        raise dg.Failure(description=f"{asset}: partition key {_shown(key)} is not a variant name (1-64 letters, "
                         "digits, _ . = + -, no leading dot, no '..'): nothing was run", allow_retries=False)
    if not context.instance.has_dynamic_partition(VARIANTS_NAME, key):
        raise dg.Failure(description=f"{asset}: {key!r} is not a variant of this instance (add it with a sweep, "
                         "a search or `gpt-pipeline materialize --partition`): nothing was run", allow_retries=False)
    try:
        variant = read_variant(key)
    except VariantError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None
    if variant is None:
        raise dg.Failure(description=f"{asset}: variant {key!r} has no recorded config "
                         f"({record_path(key).parent.name}/{key}.json): nothing was run", allow_retries=False)
    return variant


def given_config(context: dg.AssetExecutionContext, asset: str) -> dict[str, Any]:
    """The fields of ``asset`` that the run's own run config sets (not the defaults)."""
    ops = (context.run.run_config or {}).get("ops") or {}
    return dict(((ops.get(asset) or {}).get("config")) or {})


def resolve_config(context: dg.AssetExecutionContext, asset: str, config: dg.Config, like: str | None = None,
                   variant: Variant | None = None):
    """``config`` (defaults and the run's run config, resolved by Dagster) with the variant's base
    under the fields the run config does not set, and the variant's overrides over all.

    ``like``: an asset configured as another (``champion_generations`` as ``sample_generations``):
    the other's run config applies first (under ``variant``'s base and overrides of it, when
    given: ``champion_evaluation`` judges as the champion's ``model_evaluation`` did), then this
    asset's own."""
    given = given_config(context, asset)
    values = config.model_dump()
    if like is not None:
        other = given_config(context, like)
        if variant is not None:
            values.update({k: v for k, v in variant.base.get(like, {}).items() if k not in other})
        values.update(other)
        if variant is not None:
            values.update(variant.overrides.get(like, {}))
        values.update(given)
        return type(config)(**values)
    if asset in VARIANT_ASSET_NAMES:
        variant = variant or check_variant(context)
        values.update({k: v for k, v in variant.base.get(asset, {}).items() if k not in given})
        values.update(variant.overrides.get(asset, {}))
    return type(config)(**values)


def sweep_tags(context: dg.AssetExecutionContext, variant: Variant | None = None) -> dict[str, str]:
    """``gpt_pipeline/sweep`` and, for a variant, ``gpt_pipeline/variant`` (and a search trial's
    study and number): on every MLflow run."""
    if variant is None:
        return {"gpt_pipeline/sweep": context.run.tags.get("gpt_pipeline/sweep", DEFAULT_VARIANT)}
    tags = {"gpt_pipeline/sweep": variant.sweep, "gpt_pipeline/variant": variant.name}
    if variant.trial:
        tags.update({"gpt_pipeline/study": str(variant.trial["study"]),
                     "gpt_pipeline/trial": str(variant.trial["number"])})
    return tags
