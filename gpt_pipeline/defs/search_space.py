"""A sweep file's ``search:`` section: a space that Optuna samples, trial by trial.

    search:
      n_trials: 12             # and/or cpu_seconds: 600 (the trials' CPU time, summed)
      seed: 0                  # the sampler's
      sampler: tpe             # tpe | random
      pruner: median           # median | successive_halving | hyperband | none, or
                               # {kind: median, n_startup_trials: 2, n_warmup_steps: 20}
      storage: sqlite:///...   # optional: the study's database (default: ``default_storage``)
      space:
        trained_model.learning_rate: {low: 0.001, high: 0.02, log: true}
        trained_model.training_iterations: {low: 20, high: 80, step: 20}
        trained_model.embedding_size: {choices: [16, 32]}
        sample_generations.temperature: {low: 0.7, high: 1.0}

A range of an integer field samples integers (``step``, default 1); of a float field, floats
(``log``: uniformly in log space). Each trial is a variant ``<sweep>-t<number>`` whose overrides
are the sampled values, over the sweep's base. Everything is checked before anything runs
(``SweepError``, one line): an unknown asset or field, an empty range (low = high), low > high,
a log range with low <= 0, a choice or bound of the wrong type, zero trials, an unknown sampler or
pruner. Optuna is imported only to run a search.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gpt_pipeline.storage import project_root

STUDY_URL_ENV = "GPT_PIPELINE_STUDY_URL"
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "successive_halving", "hyperband", "none")
_PRUNER_OPTIONS = {"median": {"n_startup_trials", "n_warmup_steps", "interval_steps"},
                   "successive_halving": {"min_resource", "reduction_factor"},
                   "hyperband": {"min_resource", "max_resource", "reduction_factor"}, "none": set()}
_KEYS = {"n_trials", "cpu_seconds", "seed", "sampler", "pruner", "storage", "space"}


def default_storage() -> str:
    """``$GPT_PIPELINE_STUDY_URL``, else ``sqlite:///<project>/mlruns/optuna.db`` (beside MLflow's
    store; PostgreSQL in a deployment: ``postgresql+psycopg2://...``)."""
    return os.environ.get(STUDY_URL_ENV) or f"sqlite:///{project_root() / 'mlruns' / 'optuna.db'}"


@dataclass(frozen=True)
class Dimension:
    asset: str
    name: str
    kind: str  # "float" | "int" | "choice"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: int | None = None
    choices: tuple = ()

    @property
    def key(self) -> str:
        return f"{self.asset}.{self.name}"


@dataclass(frozen=True)
class SearchSpec:
    space: tuple[Dimension, ...]
    n_trials: int | None = None
    cpu_seconds: float | None = None
    seed: int = 0
    sampler: str = "tpe"
    pruner: dict[str, Any] = field(default_factory=lambda: {"kind": "median"})
    storage: str | None = None

    def storage_url(self) -> str:
        return self.storage or default_storage()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_search(data: Any, where: str, field_type: Callable[[str, str], type | None],
                 check: Callable[[str, dict[str, Any], str], None]) -> SearchSpec:
    """The ``search`` section at ``where`` (for messages). ``field_type(asset, field)``: the
    field's Python type (None: no such field); ``check(asset, values, where)`` refuses a value."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: search must be a mapping (space, n_trials, ...), got {data!r}")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ValueError(f"{where}: search has no key {unknown[0]!r} (keys: {', '.join(sorted(_KEYS))})")
    n_trials, cpu = data.get("n_trials"), data.get("cpu_seconds")
    if n_trials is None and cpu is None:
        raise ValueError(f"{where}: search needs n_trials or cpu_seconds (or both)")
    if n_trials is not None and (not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1):
        raise ValueError(f"{where}: search.n_trials must be a whole number of at least 1, got {n_trials!r}")
    if cpu is not None and (not _number(cpu) or not cpu > 0 or not math.isfinite(cpu)):
        raise ValueError(f"{where}: search.cpu_seconds must be a positive number, got {cpu!r}")
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"{where}: search.seed must be a whole number >= 0, got {seed!r}")
    sampler = data.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise ValueError(f"{where}: search.sampler {sampler!r} is unknown (samplers: {', '.join(SAMPLERS)})")
    pruner = data.get("pruner", "median")
    pruner = {"kind": pruner} if isinstance(pruner, str) else pruner
    if not isinstance(pruner, dict) or pruner.get("kind") not in PRUNERS:
        shown = pruner.get("kind") if isinstance(pruner, dict) else pruner
        raise ValueError(f"{where}: search.pruner {shown!r} is unknown (pruners: {', '.join(PRUNERS)})")
    extra = sorted(set(pruner) - {"kind"} - _PRUNER_OPTIONS[pruner["kind"]])
    if extra:
        raise ValueError(f"{where}: search.pruner {pruner['kind']} has no option {extra[0]!r}")
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for k, v in pruner.items() if k != "kind"):
        raise ValueError(f"{where}: search.pruner options must be whole numbers >= 0, got {pruner!r}")
    storage = data.get("storage")
    if storage is not None and (not isinstance(storage, str) or "://" not in storage):
        raise ValueError(f"{where}: search.storage must be a database URL (sqlite:///..., postgresql://...), got {storage!r}")
    space = data.get("space")
    if not isinstance(space, dict) or not space:
        raise ValueError(f"{where}: search.space must name at least one field (asset.field: range or choices)")
    dims = tuple(_dimension(key, spec, f"{where}: search.space {key!r}", field_type, check)
                 for key, spec in space.items())
    return SearchSpec(dims, n_trials, float(cpu) if cpu is not None else None, seed, sampler, pruner, storage)


def _dimension(key: Any, spec: Any, where: str, field_type, check) -> Dimension:
    asset, _, name = str(key).partition(".")
    kind = field_type(asset, name) if name else None
    if asset not in ("trained_model", "sample_generations") or kind is None:
        raise ValueError(f"{where}: unknown field (a trained_model.<field> or sample_generations.<field>)")
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected {{low, high[, log, step]}} or {{choices: [...]}}, got {spec!r}")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
            raise ValueError(f"{where}: choices must be a non-empty list, alone")
        for value in choices:
            check(asset, {name: value}, where)
        return Dimension(asset, name, "choice", choices=tuple(choices))
    unknown = sorted(set(spec) - {"low", "high", "log", "step"})
    if unknown or "low" not in spec or "high" not in spec:
        raise ValueError(f"{where}: a range is {{low, high[, log, step]}}"
                         + (f", not {unknown[0]!r}" if unknown else ""))
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    if kind not in (int, float):
        raise ValueError(f"{where}: a range needs a number field ({asset}.{name} is {kind.__name__}): use choices")
    for bound in (low, high):
        if not _number(bound) or (kind is int and not isinstance(bound, int)) or not math.isfinite(bound):
            raise ValueError(f"{where}: low and high must be {'whole numbers' if kind is int else 'numbers'}, "
                             f"got {bound!r}")
    if low > high:
        raise ValueError(f"{where}: low {low} > high {high}")
    if low == high:
        raise ValueError(f"{where}: empty range (low = high = {low})")
    if not isinstance(log, bool):
        raise ValueError(f"{where}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise ValueError(f"{where}: a log range needs low > 0, got {low}")
    if step is not None and (kind is not int or not isinstance(step, int) or isinstance(step, bool) or step < 1 or log):
        raise ValueError(f"{where}: step is a whole number >= 1 of a linear integer range, got {step!r}")
    for bound in (low, high):
        check(asset, {name: bound}, where)
    return Dimension(asset, name, "int" if kind is int else "float", low, high, log, step)


def suggest(trial, spec: SearchSpec) -> dict[str, dict[str, Any]]:
    """The overrides ``{asset: {field: value}}`` of one Optuna trial."""
    overrides: dict[str, dict[str, Any]] = {}
    for dim in spec.space:
        if dim.kind == "choice":
            value = trial.suggest_categorical(dim.key, list(dim.choices))
        elif dim.kind == "int":
            value = trial.suggest_int(dim.key, dim.low, dim.high, step=dim.step or 1, log=dim.log)
        else:
            value = trial.suggest_float(dim.key, float(dim.low), float(dim.high), log=dim.log)
        overrides.setdefault(dim.asset, {})[dim.name] = value
    return overrides


def make_sampler(spec: SearchSpec, asked: int = 0):
    """The Optuna sampler of ``spec``, seeded with its seed plus ``asked`` (the trials asked of the
    study so far): a search asks each trial afresh (the sensor, tick by tick), so the seed must
    move on with the study, not start over with each sampler."""
    import optuna

    seed = None if spec.seed is None else spec.seed + asked
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, spec.n_trials or 10) // 2 or 1)


def make_pruner(pruner: dict[str, Any]):
    """The Optuna pruner of a ``pruner`` section (the trial's process builds it again from the
    variant's record: a pruner is not stored with the study)."""
    import optuna

    options = {k: v for k, v in pruner.items() if k != "kind"}
    kind = pruner.get("kind", "median")
    if kind == "median":
        return optuna.pruners.MedianPruner(**{"n_startup_trials": 2, **options})
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**options)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(**options)
    return optuna.pruners.NopPruner()
