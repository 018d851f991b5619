"""Sweeps: variants of one lineage, each a partition of ``trained_model`` and ``sample_generations``.

A sweep file (YAML) names its variants, each a set of overrides per asset in run-config shape,
on top of a base run config:

    name: learning_rates            # optional; default: the file's stem
    base: quickstart.yaml           # optional: a run config file (relative to this file) or an
                                    # inline run config {ops: {asset: {config: {...}}}}
    variants:
      lr_low:  {trained_model: {learning_rate: 0.001}}
      lr_high: {trained_model: {learning_rate: 0.01}, sample_generations: {temperature: 0.9}}

A sweep may also (or only) declare a ``search:`` space that Optuna samples trial by trial
(``defs.search_space``, run by ``defs.search``).

Nothing here is read when the code location loads: ``gpt-pipeline sweep`` (or the job
``sweep_job``, given the file as config) reads the file, records each variant's config and adds
it as a dynamic partition (``defs.variants``). ``raw_stories``, ``bpe_tokenizer`` and
``tokenized_dataset`` are shared by every variant (set them in ``base``: the data run gets them
as its run config); ``trained_model``, ``sample_generations`` and ``model_evaluation`` (its
evaluation settings, e.g. the check's margins) are partitioned, and a
variant's base and overrides are bound to its partition: a backfill, a schedule or declarative
automation materializes it without any run config.

A bad sweep file is refused before anything runs (``SweepError``, one line naming the variant
and the field): an unknown asset or field, a value of the wrong type or out of its bounds,
duplicate or empty variant names, a name that cannot be a partition key and a file name.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gpt_pipeline import fields
from gpt_pipeline.defs.search_space import SearchSpec, parse_search
from gpt_pipeline.defs.variants import DEFAULT_VARIANT, Variant, is_safe_name
from gpt_pipeline.defs.configs import (
    BpeTokenizerConfig,
    ModelEvaluationConfig,
    RawStoriesConfig,
    SampleGenerationsConfig,
    TokenizedDatasetConfig,
    TrainedModelConfig,
)

SHARED_ASSETS = {"raw_stories": RawStoriesConfig, "bpe_tokenizer": BpeTokenizerConfig,
                 "tokenized_dataset": TokenizedDatasetConfig}
VARIANT_ASSETS = {"trained_model": TrainedModelConfig, "sample_generations": SampleGenerationsConfig,
                  "model_evaluation": ModelEvaluationConfig}
ASSET_CONFIGS = {**SHARED_ASSETS, **VARIANT_ASSETS}


class SweepError(ValueError):
    """A sweep file that cannot run, in one line."""


@dataclass(frozen=True)
class Sweep:
    """A sweep's name, base run config (``{asset: {field: value}}``) and variants
    (``{variant: {asset: {field: value}}}``), in file order."""

    name: str
    base: dict[str, dict[str, Any]] = field(default_factory=dict)
    variants: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: {DEFAULT_VARIANT: {}})
    path: Path | None = None
    search: SearchSpec | None = None  # a search space besides the listed variants (``defs.search_space``)

    def overrides(self, variant: str, asset: str) -> dict[str, Any]:
        return dict(self.variants.get(variant, {}).get(asset, {}))

    def describe(self, variant: str) -> str:
        """The variant's overrides in one line, e.g. ``trained_model.learning_rate=0.01``."""
        parts = [f"{asset}.{key}={value}" for asset, values in self.variants.get(variant, {}).items()
                 for key, value in values.items()]
        return ", ".join(parts) or "(base)"


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key written twice in one mapping (YAML keeps the last)."""


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise SweepError(f"{key!r} is written twice (line {key_node.start_mark.line + 1})")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _run_config_ops(run_config: Any, where: str) -> dict[str, dict[str, Any]]:
    """``{asset: {field: value}}`` of a run config ``{ops: {asset: {config: {...}}}}``."""
    if run_config is None:
        return {}
    if not isinstance(run_config, dict) or set(run_config) - {"ops", "resources", "execution", "loggers"}:
        raise SweepError(f"{where}: a run config must be a mapping {{ops: {{asset: {{config: ...}}}}}}")
    ops = run_config.get("ops") or {}
    result = {}
    for asset, entry in ops.items():
        if asset not in ASSET_CONFIGS:
            raise SweepError(f"{where}: unknown asset {asset!r} (assets: {', '.join(ASSET_CONFIGS)})")
        if not isinstance(entry, dict) or set(entry) - {"config"} or not isinstance(entry.get("config") or {}, dict):
            raise SweepError(f"{where}: ops.{asset} must be {{config: {{field: value}}}}")
        result[asset] = dict(entry.get("config") or {})
    return result


def read_run_config(path: str | os.PathLike) -> dict[str, Any]:
    """A run config YAML file, ``{}`` when empty; ``SweepError`` when missing or not YAML."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"run config {str(path)!r} does not exist")
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as error:
        raise SweepError(f"run config {str(path)!r} is not YAML: {str(error).splitlines()[0]}") from None


def _field_type(asset: str, name: str) -> Any:
    """The Python type of field ``name`` of an asset's config (``list`` for a list), or None."""
    info = ASSET_CONFIGS[asset].model_fields.get(name) if asset in ASSET_CONFIGS else None
    return fields.field_type(info) if info is not None else None


def check_config(asset: str, values: dict[str, Any], where: str) -> None:
    """Refuse an unknown field, a value of the wrong type (no string for a number, as Dagster's
    config) or out of its bounds, and the rules that tie the fields together, in one line naming
    the field: the core settings classes check the values strictly, with the asset's defaults."""
    cls = ASSET_CONFIGS[asset]
    if unknown := sorted(set(values) - set(cls.model_fields)):
        raise SweepError(f"{where}: {asset} has no field {unknown[0]!r}")
    try:
        for source in cls.sources:
            names = [name for name in fields.fields_of(source) if name in cls.model_fields]
            source(**{name: values.get(name, cls.model_fields[name].default) for name in names})
        cls(**values)  # the fields of its own (ConfigRefused, a ValueError in one line)
    except ValueError as error:
        raise SweepError(f"{where}: {asset}: {error}") from None


def check_run_config(run_config: Any, where: str) -> None:
    """``check_config`` for each asset of a run config that has a derived config class (Dagster's
    schema has no bounds); a value from the environment (``{env: NAME}``) is Dagster's to resolve."""
    ops = run_config.get("ops") if isinstance(run_config, dict) else None
    for asset, entry in ops.items() if isinstance(ops, dict) else ():  # the rest: Dagster's schema
        values = entry.get("config") if isinstance(entry, dict) else None
        if asset in ASSET_CONFIGS and isinstance(values, dict):
            check_config(asset, {k: v for k, v in values.items() if not (isinstance(v, dict) and "env" in v)}, where)


def parse_sweep(data: Any, name: str, folder: Path, path: Path | None = None) -> Sweep:
    """A ``Sweep`` from a sweep file's content (``folder``: where a ``base`` file name is
    relative to), checked whole (see the module docstring)."""
    where = str(path) if path else "sweep"
    if not isinstance(data, dict):
        raise SweepError(f"sweep {where}: expected a mapping with 'variants', got {type(data).__name__}")
    unknown = sorted(set(data) - {"name", "base", "variants", "search"})
    if unknown:
        raise SweepError(f"sweep {where}: unknown key {unknown[0]!r} (keys: name, base, variants, search)")
    name = data.get("name", name)
    if not is_safe_name(name):
        raise SweepError(f"sweep {where}: name {name!r} must be letters, digits, _ . = + - (no leading dot, no '..')")
    base_value = data.get("base")
    if isinstance(base_value, str):
        base = _run_config_ops(read_run_config(folder / base_value), f"sweep {where}: base {base_value!r}")
    else:
        base = _run_config_ops(base_value, f"sweep {where}: base")
    for asset, values in base.items():
        check_config(asset, values, f"sweep {where}: base")
    search = None
    if "search" in data:
        def check(asset: str, values: dict[str, Any], at: str) -> None:
            check_config(asset, {**base.get(asset, {}), **values}, at)
        try:
            search = parse_search(data["search"], f"sweep {where}", _field_type, check)
        except ValueError as error:
            raise SweepError(str(error)) from None
    variants = data.get("variants")
    if search is not None and variants is None:
        variants = {}
    elif not isinstance(variants, dict) or not variants:
        raise SweepError(f"sweep {where}: 'variants' must name at least one variant (or declare a 'search')")
    checked: dict[str, dict[str, dict[str, Any]]] = {}
    for variant, overrides in variants.items():
        if not isinstance(variant, str) or not variant.strip():
            raise SweepError(f"sweep {where}: variant name {variant!r} is empty or not a string")
        if not is_safe_name(variant):
            raise SweepError(f"sweep {where}: variant {variant!r}: a name must be 1-64 letters, digits, "
                             "_ . = + - with no leading dot and no '..' (it becomes a partition key and a file name)")
        where_variant = f"sweep {where}: variant {variant!r}"
        overrides = overrides or {}
        if not isinstance(overrides, dict):
            raise SweepError(f"{where_variant}: expected {{asset: {{field: value}}}}, got {overrides!r}")
        for asset, values in overrides.items():
            if asset in SHARED_ASSETS:
                raise SweepError(f"{where_variant}: {asset} is shared by every variant: set it under 'base'")
            if asset not in VARIANT_ASSETS:
                raise SweepError(f"{where_variant}: unknown asset {asset!r} (a variant sets "
                                 f"{' or '.join(VARIANT_ASSETS)})")
            if not isinstance(values, dict):
                raise SweepError(f"{where_variant}: {asset} must be {{field: value}}, got {values!r}")
            check_config(asset, {**base.get(asset, {}), **values}, where_variant)
        checked[variant] = copy.deepcopy(overrides)
    return Sweep(name, base, checked, path, search)


def load_sweep(path: str | os.PathLike) -> Sweep:
    """The sweep file at ``path``, checked whole; ``SweepError`` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {str(path)!r} does not exist")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except SweepError as error:
        raise SweepError(f"sweep {path}: {error}") from None
    except yaml.YAMLError as error:
        raise SweepError(f"sweep {path} is not YAML: {str(error).splitlines()[0]}") from None
    return parse_sweep(data, path.stem, path.parent, path)


def variant_record(sweep: Sweep, variant: str, trial: dict | None = None) -> Variant:
    """The record that binds ``variant`` of ``sweep`` to its config (``defs.variants``): the base
    and overrides of the variant assets only (the data assets are shared)."""
    return Variant(variant, sweep.name, {a: dict(v) for a, v in sweep.base.items() if a in VARIANT_ASSETS},
                   sweep.variants.get(variant, {}), trial)
