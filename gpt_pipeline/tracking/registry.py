"""The MLflow model registry: a version of ``gpt-pipeline`` per training, and the ``champion`` alias.

``register_training`` registers a training run's pyfunc model (``tracking_pyfunc``) as a new
version of the registered model, with the run's final test loss as the version tag ``test_loss``.
It does not move the alias ``champion``: the ``champion_model`` asset elects the champion among
the variants trained on the current data, by bits per character (comparable across tokenizers,
unlike losses per token), and calls ``set_champion``; ``make serve`` serves it
(``mlflow models serve -m models:/gpt-pipeline@champion``, docs/serving.md), resolving the alias
when the server starts.

A version is registered once per set of weights and variant: ``weights_digest`` (of the model's
tensors) and ``variant`` are version tags, and a registration of a variant whose weights have a
version already (a rematerialization that changed nothing, resumed at its last step) returns that
version; another variant that trains the same weights gets a version of its own, naming its run.
Each version carries ``test_bits_per_character``; ``set_champion`` tags the elected version with
the variant and run that won.

Several processes may register at once (a sweep, a schedule and a user): every store call is
retried on transient failures (SQLite "database is locked", a version number taken by a
concurrent writer) and registration is idempotent (a model already registered returns its
version). ``log_and_register`` logs a training's
pyfunc model, its parameters and final metrics (linked to the logged model, so that
``mlflow.search_logged_models(order_by=[{"field_name": "metrics.test_bits_per_character"}])``
ranks trained models) and registers it; nothing else here logs models or runs.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections.abc import Callable
from typing import TypeVar

from mlflow.entities import LoggedModelOutput
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag  # noqa: F401 - used by the examples
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from gpt_pipeline.provenance import weights_digest
from gpt_pipeline.tracking.pyfunc import MODEL_NAME as LOGGED_MODEL_NAME
from gpt_pipeline.tracking.pyfunc import log_pyfunc_model

MODEL_NAME = "gpt-pipeline"  # the registered model
CHAMPION_ALIAS = "champion"  # alias of the version champion_model elected
TEST_LOSS_TAG = "test_loss"  # version tag: the training's final test loss
RUN_ID_TAG = "run_id"  # version tag: the training run
MODEL_ID_TAG = "model_id"  # version tag: the logged model it registers
WEIGHTS_DIGEST_TAG = "weights_digest"  # version tag: weights_digest of its model's tensors
VARIANT_TAG = "variant"  # version tag: the variant (partition) whose training registered it
BITS_TAG = "test_bits_per_character"  # version tag: the training's final test bits per character
CHAMPION_VARIANT_TAG, CHAMPION_RUN_TAG = "champion_variant", "champion_run_id"  # set by set_champion
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_ALREADY_EXISTS = ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")
T = TypeVar("T")


def _code(error: BaseException) -> str:
    return getattr(error, "error_code", "") or ""


def retrying(call: Callable[[], T], attempts: int = 8, first_wait: float = 0.05) -> T:
    """``call()``, again after a growing random pause when the store fails transiently (locked
    database, lost write race); errors that retrying cannot fix (not found, already exists, bad
    input) are raised at once, and so is the last one.

    Example:
        >>> tries = []
        >>> def flaky():
        ...     tries.append(1)
        ...     if len(tries) < 3:
        ...         raise MlflowException("database is locked")
        ...     return "ok"
        >>> retrying(flaky, first_wait=0), len(tries)
        ('ok', 3)
    """
    for attempt in range(attempts):
        try:
            return call()
        except MlflowException as error:
            if _code(error) in _ALREADY_EXISTS + _NOT_FOUND + ("INVALID_PARAMETER_VALUE",):
                raise
            if attempt == attempts - 1:
                raise
        except Exception as error:  # noqa: BLE001 - SQLAlchemy errors surface unwrapped
            if "locked" not in str(error).lower() and "unique" not in str(error).lower():
                raise
            if attempt == attempts - 1:
                raise
        time.sleep(first_wait * (2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def _check_name(model_name: str) -> None:
    if not isinstance(model_name, str) or not _NAME.match(model_name):
        raise ValueError(
            f"registered model name must be letters, digits, '_', '.' or '-', got {model_name!r}"
        )


def model_versions(client: MlflowClient, model_name: str = MODEL_NAME) -> list[ModelVersion]:
    """Every version of ``model_name`` (all pages), oldest first; [] if it is not registered."""
    _check_name(model_name)
    found: list[ModelVersion] = []
    token = None
    while True:
        page = retrying(
            lambda: client.search_model_versions(f"name = '{model_name}'", page_token=token)
        )
        found.extend(page)
        token = page.token
        if not token:
            return sorted(found, key=lambda v: int(v.version))


def champion(client: MlflowClient, model_name: str = MODEL_NAME) -> ModelVersion | None:
    """The version the ``champion`` alias points at, or None."""
    try:
        return retrying(lambda: client.get_model_version_by_alias(model_name, CHAMPION_ALIAS))
    except MlflowException as error:
        if _code(error) in _NOT_FOUND or "not found" in str(error).lower():
            return None
        raise


def set_champion(client: MlflowClient, version: str | int, model_name: str = MODEL_NAME, variant: str | None = None,
                 run_id: str | None = None, bits_per_character: float | None = None) -> ModelVersion:
    """Point ``champion`` at ``version`` of ``model_name`` and return that version; with
    ``variant`` and ``run_id`` (the election's winner) the version's tags ``champion_variant`` and
    ``champion_run_id`` and its description name them, so that the registry never names another
    run as the champion's source (a version registered by an earlier training of the same weights)."""
    _check_name(model_name)
    if variant is not None and run_id is not None:
        tags = {CHAMPION_VARIANT_TAG: variant, CHAMPION_RUN_TAG: run_id}
        if bits_per_character is not None:
            tags[BITS_TAG] = repr(float(bits_per_character))
        for key, value in tags.items():
            retrying(lambda k=key, v=value: client.set_model_version_tag(model_name, str(version), k, v))
        shown = f", test bits per character {bits_per_character:.4f}" if bits_per_character is not None else ""
        retrying(lambda: client.update_model_version(
            model_name, str(version), description=f"Champion: variant {variant}, MLflow run {run_id}{shown}."))
    retrying(lambda: client.set_registered_model_alias(model_name, CHAMPION_ALIAS, str(version)))
    return retrying(lambda: client.get_model_version(model_name, str(version)))


def champion_run_id(version: ModelVersion | None) -> str | None:
    """The run that won the election behind ``version`` (its ``champion_run_id`` tag), else the
    run that registered it."""
    if version is None:
        return None
    return (version.tags or {}).get(CHAMPION_RUN_TAG) or version.run_id


def _ensure_registered_model(client: MlflowClient, model_name: str) -> None:
    try:
        retrying(lambda: client.create_registered_model(
            model_name, description="gpt-rs's transformer trained by gpt-pipeline; alias "
            f"'{CHAMPION_ALIAS}' is the best variant's version (lowest test bits per character), elected by "
            "the champion_model asset.",
        ))
    except MlflowException as error:
        if _code(error) not in _ALREADY_EXISTS and "already exists" not in str(error).lower():
            raise


def version_with_weights(client: MlflowClient, digest: str, model_name: str = MODEL_NAME,
                         variant: str | None = None) -> ModelVersion | None:
    """The oldest version of ``model_name`` whose ``weights_digest`` tag is ``digest`` (and, with
    ``variant``, whose ``variant`` tag is that variant: two variants that train the same weights
    each have a version, each naming its own run), or None."""
    return next((v for v in model_versions(client, model_name)
                 if (v.tags or {}).get(WEIGHTS_DIGEST_TAG) == digest
                 and (variant is None or (v.tags or {}).get(VARIANT_TAG) == variant)), None)


def run_logged_model_uri(client: MlflowClient, run_id: str, name: str = LOGGED_MODEL_NAME) -> str:
    """``models:/<id>`` of the latest logged model called ``name`` that ``run_id`` produced."""
    run = client.get_run(run_id)
    outputs = {o.model_id: o.step for o in (run.outputs.model_outputs if run.outputs else [])}
    found = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    models = [m for m in found if m.name == name]
    if not models:
        raise ValueError(f"run {run_id} has no logged model named {name!r}: log one with "
                         "tracking_pyfunc.log_pyfunc_model first")
    latest = max(models, key=lambda m: (outputs.get(m.model_id, -1), m.creation_timestamp))
    return f"models:/{latest.model_id}"


def register_training(
    run,
    test_loss: float,
    model_uri: str | None = None,
    model_name: str = MODEL_NAME,
    weights: str | None = None,
    variant: str | None = None,
    extra_tags: dict[str, str] | None = None,
) -> ModelVersion:
    """Register ``run``'s pyfunc model (``model_uri``, by default the run's logged model
    ``model``) as a version of ``model_name`` tagged with ``test_loss``.

    ``weights`` (``weights_digest`` of the model) is tagged too, and when a version already has
    that digest it is returned as it is: the same weights are never registered twice.

    ``run`` is anything with ``client`` and ``run_id`` (``tracking.TrackedRun``). Registering
    the same model twice returns the existing version. Returns the version (its ``aliases``
    are not filled in; see ``champion``).
    """
    _check_name(model_name)
    if isinstance(test_loss, bool) or not isinstance(test_loss, (int, float)) or not math.isfinite(test_loss):
        raise ValueError(f"test_loss must be a finite number, got {test_loss!r}")
    client: MlflowClient = run.client
    model_uri = model_uri or run_logged_model_uri(client, run.run_id)
    if not model_uri.startswith("models:/m-"):
        raise ValueError(f"model_uri must be a logged model URI 'models:/m-...', got {model_uri!r}")
    model_id = model_uri.removeprefix("models:/")
    # The artifact location, not the models:/ URI, as the source: MLflow resolves a models:/
    # source with the global tracking URI, which need not be this client's.
    source = retrying(lambda: client.get_logged_model(model_id)).artifact_location
    _ensure_registered_model(client, model_name)
    tags = {TEST_LOSS_TAG: repr(float(test_loss)), RUN_ID_TAG: run.run_id, MODEL_ID_TAG: model_id,
            **({WEIGHTS_DIGEST_TAG: weights} if weights else {}), **({VARIANT_TAG: variant} if variant else {}),
            **(extra_tags or {})}

    def existing() -> ModelVersion | None:
        return next((v for v in model_versions(client, model_name) if v.source == source), None)

    same_weights = version_with_weights(client, weights, model_name, variant) if weights else None
    if same_weights is not None:
        return same_weights
    version = existing()
    attempts = 6
    for attempt in range(attempts):
        if version is not None:
            break
        try:
            version = client.create_model_version(
                model_name, source=source, run_id=run.run_id, tags=tags, model_id=model_id,
                await_creation_for=0,
            )
        except Exception:  # noqa: BLE001 - a lost race or a locked database: see what landed
            version = existing()
            if version is None and attempt == attempts - 1:
                raise
            time.sleep(0.05 * (2**attempt) * (0.5 + random.random()))
    for key, value in tags.items():  # a version found (not created) may lack them
        if (version.tags or {}).get(key) != value:
            retrying(lambda k=key, v=value: client.set_model_version_tag(model_name, version.version, k, v))
    _link_logged_model(client, model_id, model_name, version.version)
    return version


def _link_logged_model(client: MlflowClient, model_id: str, model_name: str, version) -> None:
    """Record the version on the logged model (tag ``mlflow.modelVersions``), as
    ``mlflow.register_model`` does, so the MLflow UI links the two."""
    key = "mlflow.modelVersions"
    entry = {"name": model_name, "version": version}
    for _ in range(5):  # read-modify-write: re-check that our entry stuck
        known = json.loads(client.get_logged_model(model_id).tags.get(key) or "[]")
        if entry in known:
            return
        retrying(lambda: client.set_logged_model_tags(model_id, {key: json.dumps([*known, entry])}))


def log_and_register(
    run,
    checkpoint_path,
    tokenizer_path,
    state_dict,
    test_loss: float,
    params: dict,
    metrics: dict,
    step: int = 0,
    dataset: tuple[str, str] | None = None,
    model_name: str = MODEL_NAME,
    variant: str | None = None,
) -> tuple[str, ModelVersion, bool]:
    """Log ``run``'s (a ``tracking.TrackedRun``) pyfunc model with ``params`` and its final
    ``metrics`` at ``step`` (measured on ``dataset``, (name, digest)), and register it; return
    ``(model URI, version, reused)``.

    When a version already has these weights (``weights_digest`` of ``state_dict``: a
    rematerialization that changed nothing), nothing new is logged or registered: the run's
    output is that version's logged model, its metrics are the run's only, and ``reused`` is True.
    """
    digest = weights_digest(state_dict)
    same = version_with_weights(run.client, digest, model_name, variant)
    model_id = ((same.tags or {}).get(MODEL_ID_TAG) or getattr(same, "model_id", None)) if same else None
    if model_id:
        retrying(lambda: run.client.log_outputs(run.run_id, [LoggedModelOutput(model_id, step=step)]))
        run.log_metrics(metrics, step=step, dataset=dataset)
        return f"models:/{model_id}", same, True
    model_uri = log_pyfunc_model(run, checkpoint_path, tokenizer_path, step=step,
                                 **({"name": variant} if variant else {}))  # the Models tab names the variant
    model_id = model_uri.removeprefix("models:/")
    run.log_model_params(model_id, params)
    run.log_metrics(metrics, step=step, model_id=model_id, dataset=dataset)
    bits = metrics.get(BITS_TAG)
    extra = {BITS_TAG: repr(float(bits))} if isinstance(bits, (int, float)) and math.isfinite(bits) else {}
    return model_uri, register_training(run, test_loss, model_uri, model_name, weights=digest, variant=variant,
                                        extra_tags=extra), False
