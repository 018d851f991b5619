"""Blocking asset checks and clear step failures.

The checks run inside their asset, on the value *before* it is stored: a failing check yields
its failed ``AssetCheckResult`` and then fails the step, so the IO manager never replaces the
last good file and the downstream assets do not run. The gates themselves are plain functions
in ``gpt_pipeline.quality``.

``user_errors`` turns the core's ``ValueError`` (bad config, bad data) and friends into a
``dagster.Failure`` whose description is the core's one-line message, so the step's failure
reads as that message instead of a wrapped traceback.
"""

import contextlib
import re
from collections.abc import Iterator

import dagster as dg

from gpt_pipeline.defs.sweeps import check_run_config
from gpt_pipeline.quality import Gate
from gpt_pipeline.storage import StorageFault
from gpt_pipeline.tracking.tracker import TrackingError


def blocking_check(asset: str, name: str, description: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(name, asset=asset, blocking=True, description=description)


ROUND_TRIP = blocking_check(
    "bpe_tokenizer", "round_trip", "Encoding then decoding a sample of the stories gives them back exactly."
)
IDS_IN_VOCAB = blocking_check(
    "tokenized_dataset", "token_ids_in_vocab", "Every token id is below the tokenizer's vocabulary size."
)
BEATS_UNIGRAM = blocking_check(
    "trained_model",
    "beats_unigram",
    "The final test loss is finite and below the loss of a unigram model of the same data.",
)
GENERATIONS_DECODE = blocking_check(
    "sample_generations", "generations_decode", "Every generation is non-empty and decodes."
)


def check_result(spec: dg.AssetCheckSpec, gate: Gate) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=spec.name,
        asset_key=spec.asset_key,
        passed=gate.passed,
        description=gate.description,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={k: v for k, v in gate.figures.items() if isinstance(v, (int, float, str))},
    )


def gate(spec: dg.AssetCheckSpec, outcome: Gate) -> Iterator[dg.AssetCheckResult]:
    """Yield a failing check's result, then fail the step before anything is stored."""
    if not outcome.passed:
        yield check_result(spec, outcome)
        raise dg.Failure(
            description=f"blocking check {spec.name} failed: {outcome.description}; "
            f"the stored {spec.asset_key.to_user_string()} was left as it was",
            allow_retries=False,
        )


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Re-raise bad-input errors from the core as a ``dagster.Failure`` with their message; a
    storage fault (full disk, permission denied, ...) also names the asset of the step. Inside a
    step, the whole run's config is checked first (the bounds Dagster's schema does not hold), so
    a run whose later step has a value out of bounds stops at its first step, before any work."""
    try:
        _check_run_config()
        yield
    except StorageFault as exc:
        raise dg.Failure(description=f"{current_asset()}: {exc}", allow_retries=False) from exc
    except (ValueError, FileNotFoundError, IsADirectoryError, TrackingError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise dg.Failure(description=message, allow_retries=False) from exc


def _check_run_config() -> None:
    try:
        run_config = dg.AssetExecutionContext.get().run.run_config
    except Exception:  # no step running, or not an asset step
        return
    check_run_config(run_config, "run config")


def current_asset() -> str:
    """The asset the running step materializes ("asset" outside a step)."""
    try:
        return dg.AssetExecutionContext.get().asset_key.to_user_string()
    except Exception:  # no step running, or not an asset step
        return "asset"


def failure_line(error) -> str:
    """The first line of a step's error (a ``SerializableErrorInfo``), looking through Dagster's
    "Error occurred while executing op" (or loading an input, or storing an output) wrapper to
    the error it wraps."""
    while error.cause is not None and (error.cls_name or "").startswith("DagsterExecution"):
        error = error.cause  # DagsterExecutionStepExecutionError, ...LoadInputError, ...HandleOutputError
    line = (error.message.strip().splitlines() or [error.cls_name or "error"])[0]
    return re.sub(rf"^(?:[\w.]+\.)?(?:Failure|{re.escape(error.cls_name or 'Error')}): ", "", line)  # the class
