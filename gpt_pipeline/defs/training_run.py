"""The ``trained_model`` asset's work: one MLflow run around ``gpt_pipeline.training.loop.train``.

Checkpoints go to ``<data dir>/checkpoints/trained_model/[<variant>/]<hash of config and data>/``, so a
rematerialization of the same configuration on the same data resumes from the last one, and two
runs of one configuration take turns on that folder (a file lock) instead of mixing their files.
The config's ``launcher`` picks where the training runs (``gpt_pipeline.defs.launchers``): in this
process, or in a Dagster Pipes worker (torchrun inside for several processes or nodes; a pod
with ``k8s``) whose rank 0 progress comes back here and is logged to MLflow and the Dagster log
as in one process.
"""

import base64
import dataclasses
import hashlib
import os
import platform
import tempfile
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import torch

from gpt_pipeline import quality
from gpt_pipeline.defs.sources import TRAINING_POOL
from gpt_pipeline.devices import trainings_at_once_declared, training_threads
from gpt_pipeline.fields import result_fields
from gpt_pipeline.defs.asset_step import AssetStep
from gpt_pipeline.defs.checks import BEATS_UNIGRAM, check_result
from gpt_pipeline.training.checkpoint import fingerprint, load_checkpoint
from gpt_pipeline.defs.resources import MLflowResource
from gpt_pipeline.defs.launchers import resolve_launcher, train_in_workers
from gpt_pipeline.defs.metadata import loss_table, mlflow_picture
from gpt_pipeline.interop import hf
from gpt_pipeline.model.gpt import GPT, GPTConfig
from gpt_pipeline.storage import data_dir, exclusive
from gpt_pipeline.data.dataset_files import content_digest, split_characters
from gpt_pipeline.data.table_file import TableFile
from gpt_pipeline.data.tokens import TokenArray
from gpt_pipeline.tracking.plots import loss_curve_png
from gpt_pipeline.tokenizer.bundle import write_bundle
from gpt_pipeline.tracking.registry import log_and_register
from gpt_pipeline.tracking.tracker import TrackedRun
from gpt_pipeline.training.metrics import characters_of, evaluation_metrics, figure, token_characters
from gpt_pipeline.training.loop import Evaluation, TrainConfig, TrainResult, train, validate_training_data
from gpt_pipeline.training.progress import progress_line


SMALL_CURVE = "loss_curve_small.png"  # the loss curve the Dagster UI shows, an artifact of the run
PRUNED_TAG = "gpt_pipeline/pruned"  # MLflow run tag of a trial a search's pruner stopped: "true"
PRUNED_STEP_TAG = "gpt_pipeline/pruned_at_step"


def checkpoint_dir(
    model_config: GPTConfig,
    train_config: TrainConfig,
    train: TokenArray,
    test: TokenArray,
    initial_checkpoint: str | None = None,
    variant: str | None = None,
) -> Path:
    """Where this configuration's checkpoints live: keyed by the variant (each its own folder),
    every field that changes the training's result (``resume`` does not), the data itself and
    the starting weights.

    The data is hashed a few MB at a time (the same digest as hashing it whole), so that
    memory-mapped splits are read, not copied."""
    digest = data_digest(train, test)
    if initial_checkpoint:
        digest.update(Path(initial_checkpoint).read_bytes())
    folder = data_dir() / "checkpoints" / "trained_model"
    return (folder / variant if variant else folder) / fingerprint(
        model_config, result_settings(train_config), digest.hexdigest())


def trainings_at_once(context: dg.AssetExecutionContext) -> int:
    """How many trainings this machine runs at once: ``$GPT_PIPELINE_TRAININGS_AT_ONCE`` (set by
    a user's override), else the limit of the Dagster pool ``training``, else 1."""
    declared = trainings_at_once_declared()
    if declared:
        return declared
    try:
        limit = context.instance.event_log_storage.get_concurrency_info(TRAINING_POOL).limit
    except Exception:  # noqa: BLE001 - a storage without pools: no limit known
        limit = None
    return max(1, int(limit or 1))


def data_digest(train: TokenArray, test: TokenArray):
    """SHA-256 (a ``hashlib`` object) of both splits' tokens and offsets."""
    digest = hashlib.sha256()
    for part in (train.tokens, train.offsets, test.tokens, test.offsets):
        digest.update(np.ascontiguousarray(part).data)  # a memory-mapped split: paged in, not copied
    return digest


def split_character_counts(context, dataset_file, train: TokenArray, test: TokenArray, tokenizer) -> dict[str, int]:
    """Each split's characters: as the dataset file recorded them (``split_characters``), else
    (a file written before they were recorded, or no file) counted from the tokens' texts, which
    is exact (decoding concatenates them), with a warning."""
    recorded = split_characters(dataset_file) if isinstance(dataset_file, TableFile) else None
    if recorded is not None:
        return recorded
    context.log.warning("the tokenized dataset records no character counts of its splits (a file written "
                        "before they were, or none): counting them from the tokens for bits per character")
    lengths = token_characters([tokenizer.token_text(i) for i in range(tokenizer.vocab_size)])
    return {"train": characters_of(train.tokens, lengths), "test": characters_of(test.tokens, lengths)}


def loss_curve_markdown(curve: Path) -> str:
    """A PNG as a Markdown image with the picture inline (``data:`` URI), for Dagster metadata."""
    return f"![loss curve](data:image/png;base64,{base64.b64encode(curve.read_bytes()).decode()})"


def result_settings(train_config: TrainConfig) -> dict:
    """The training settings that key a checkpoint folder: the fields declared
    ``affects_result`` (every one but ``resume`` and ``device``)."""
    values = train_config.to_dict()
    return {name: values[name] for name in result_fields(TrainConfig)}


def system_facts(device: str) -> dict[str, str]:
    return {
        "system.device": device,
        "system.torch_version": torch.__version__,
        "system.threads": str(torch.get_num_threads()),
        "system.python": platform.python_version(),
        "system.platform": platform.platform(),
    }


@dataclass(frozen=True)
class TrainingPlan:
    """A training checked and placed before it starts (``plan_training``)."""
    model_config: GPTConfig
    train_config: TrainConfig  # threads resolved
    train_data: TokenArray
    test_data: TokenArray
    launcher: str  # resolved: in_process, subprocess, torchrun, k8s
    folder: Path  # its checkpoints
    characters: dict[str, int]  # each split's characters, for bits per character
    dataset: tuple[str, str]  # (name, digest) of the training data, as MLflow records it
    dataset_file: TableFile | str | os.PathLike | None = None
    initial_checkpoint: str | None = None
    initial_model: GPT | None = None
    k8s: Any = None

    @property
    def params(self) -> dict:
        return {**self.model_config.to_dict(), **self.train_config.to_dict()}

    @property
    def tokens(self) -> dict[str, int]:
        return {"train": len(self.train_data.tokens), "test": len(self.test_data.tokens)}


def plan_training(context: dg.AssetExecutionContext, model_config: GPTConfig, train_config: TrainConfig,
                  train_data: TokenArray, test_data: TokenArray, tokenizer, initial_checkpoint: str | None = None,
                  dataset_file: TableFile | str | os.PathLike | None = None, launcher: str = "auto",
                  k8s=None) -> TrainingPlan:
    """Everything checked before a training starts (``ValueError`` naming what is wrong): the data
    against the model, the launcher, the starting weights' config; ``threads`` 0 becomes the cores
    divided by ``trainings_at_once``; a partition (the variant) has checkpoints of its own.
    Unless ``launcher`` resolves to ``in_process``, Dagster Pipes workers read ``dataset_file``,
    the stored dataset."""
    if train_config.threads == 0 and train_config.device in ("auto", "cpu"):
        train_config = dataclasses.replace(
            train_config, threads=training_threads(0, trainings_at_once(context)))
    validate_training_data(train_data, test_data, model_config, train_config.contexts_per_batch)
    launcher = resolve_launcher(launcher, train_config)
    initial_model = None
    if initial_checkpoint:
        initial_model, _ = load_checkpoint(initial_checkpoint)
        if initial_model.config != model_config:
            raise ValueError(
                f"initial_checkpoint {initial_checkpoint!r} has config {initial_model.config.to_dict()}, "
                f"not the configured {model_config.to_dict()}"
            )
    variant = context.partition_key if context.has_partition_key else None
    folder = checkpoint_dir(model_config, train_config, train_data, test_data, initial_checkpoint, variant)
    characters = split_character_counts(context, dataset_file, train_data, test_data, tokenizer)
    stored_digest = content_digest(dataset_file) if isinstance(dataset_file, TableFile) else None
    dataset = ("tokenized_dataset", stored_digest or data_digest(train_data, test_data).hexdigest())
    return TrainingPlan(model_config, train_config, train_data, test_data, launcher, folder, characters, dataset,
                        dataset_file, initial_checkpoint, initial_model, k8s)


@dataclass(frozen=True)
class TrainingOutcome:
    model: GPT
    metadata: dict[str, Any]  # the trained model's Dagster metadata (lineage and run link: the step's)
    gate: quality.Gate  # the beats_unigram check, already passed (unless pruned)
    pruned_at: int | None = None  # the step a search's pruner stopped the training at

    def check_result(self) -> dg.AssetCheckResult:
        """``beats_unigram``'s result; for a pruned trial (no failure) a warning that does not block."""
        if self.pruned_at is None:
            return check_result(BEATS_UNIGRAM, self.gate)
        return dg.AssetCheckResult(check_name=BEATS_UNIGRAM.name, asset_key=BEATS_UNIGRAM.asset_key,
                                   passed=self.gate.passed, severity=dg.AssetCheckSeverity.WARN,
                                   description=f"pruned at step {self.pruned_at}: {self.gate.description}")


def run_training(
    step: AssetStep,
    plan: TrainingPlan,
    tokenizer,
    export_hf: bool = False,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
    on_evaluation: Callable[[Evaluation], None] | None = None,
) -> Generator[dg.AssetCheckResult, None, TrainingOutcome]:
    """Train (or resume) in the step's MLflow run (``tags``, nested under ``parent_run_id``), gate
    on ``beats_unigram``, then log and register the model.

    A generator: it yields the failed check result (then raises) when the model does not beat
    the unigram baseline, so that nothing is stored. ``on_evaluation`` (in process only) sees
    each evaluation once it is logged and may raise ``StopTraining`` (a search's pruner): the
    model is then output as it is, marked ``pruned``, unregistered."""
    with step.run(params=plan.params, tags=tags, parent_run_id=parent_run_id) as run, exclusive(plan.folder):
        result, final = train_logged(step.context, run, plan, on_evaluation)
        baseline = quality.unigram_loss(plan.train_data, plan.test_data, plan.model_config.vocab_size)
        outcome = quality.beats_unigram(result.test_loss, baseline)
        run.log_metrics(summary_metrics(result, final, baseline))
        if result.stopped_at is not None:  # pruned: its last metrics, no model logged or registered
            run.set_tags({PRUNED_TAG: "true", PRUNED_STEP_TAG: str(result.stopped_at)})
            return TrainingOutcome(result.model, pruned_metadata(result, final, baseline), outcome, result.stopped_at)
        if not outcome.passed:
            run.log_metrics(final, step=result.steps, dataset=plan.dataset)
        yield from step.gate(outcome)  # a failing model is never logged as a model
        logged = log_model(step.context, run, plan, result, final, tokenizer, export_hf)
    return TrainingOutcome(result.model, model_metadata(step.mlflow, run, plan, result, final, baseline, logged), outcome)


def train_logged(context: dg.AssetExecutionContext, run: TrackedRun, plan: TrainingPlan,
                 on_evaluation: Callable[[Evaluation], None] | None = None) -> tuple[TrainResult, dict[str, float]]:
    """Train with ``plan``, each evaluation logged to ``run`` (and the Dagster log) as it comes;
    the result, and the final evaluation's metrics (logged with the model)."""
    run.set_tags({"checkpoint_dir": str(plan.folder), **system_facts(plan.train_config.device)})
    if isinstance(plan.dataset_file, TableFile):
        run.log_dataset(*plan.dataset, source=str(plan.dataset_file.path))
    final_step = plan.train_config.training_iterations  # its figures are logged with the model
    in_process = plan.launcher == "in_process"
    reported: set[int] = set()

    def report(evaluation: Evaluation) -> None:
        reported.add(evaluation.step)
        if in_process:  # a Pipes worker logs its own line through Pipes
            context.log.info(progress_line(evaluation, plan.train_config.training_iterations))
        if evaluation.step != final_step:
            run.log_metrics(evaluation_metrics(evaluation, plan.tokens, plan.characters), step=evaluation.step)
        if on_evaluation is not None and in_process:
            on_evaluation(evaluation)

    if not in_process:  # workers that read the dataset file themselves
        result = train_in_workers(context, plan.model_config, plan.train_config, plan.dataset_file, plan.folder,
                                  report, plan.initial_checkpoint, plan.launcher, plan.k8s)
    else:
        result = train(plan.model_config, plan.train_config, plan.train_data, plan.test_data, plan.folder, report,
                       plan.initial_model, on_progress=lambda progress: context.log.info(progress.line()),
                       characters=plan.characters)
    for evaluation in result.evaluations:  # restored from a checkpoint when resuming
        if evaluation.step not in reported and evaluation.step != final_step:
            metrics = evaluation_metrics(evaluation, plan.tokens, plan.characters)
            run.log_metrics({k: v for k, v in metrics.items() if k != "tokens_per_second"}, evaluation.step)
    final = evaluation_metrics(result.evaluations[-1], plan.tokens, plan.characters)
    if result.evaluations[-1].step not in reported:  # restored: its throughput was another session's
        final.pop("tokens_per_second")
    run.set_tags({"system.device": str(next(result.model.parameters()).device)})
    return result, final


def summary_metrics(result: TrainResult, final: dict[str, float], baseline: float) -> dict[str, float]:
    """The run's final figures (tokens_per_second is in the history already: no repeat at step 0)."""
    return {
        "final_train_loss": result.train_loss,
        "final_test_loss": result.test_loss,
        "final_train_bits_per_character": final["train_bits_per_character"],
        "final_test_bits_per_character": final["test_bits_per_character"],
        "unigram_test_loss": baseline,
        "training_seconds": result.seconds,
        "parameters": result.model.num_parameters(),
    }


@dataclass(frozen=True)
class LoggedModel:
    uri: str  # models:/<id>
    version: Any  # the registered model version
    curve_markdown: str  # the small loss curve, inline


def log_model(context: dg.AssetExecutionContext, run: TrackedRun, plan: TrainingPlan, result: TrainResult,
              final: dict[str, float], tokenizer, export_hf: bool = False) -> LoggedModel:
    """The model that passed its gate, to MLflow: checkpoint, config, tokenizer bundle, loss
    curves, the logged and registered model (``log_and_register``), its Hugging Face export."""
    run.log_artifact(plan.folder / "final.safetensors", "checkpoint")
    run.log_dict(plan.params, "config.json")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "tokenizer"
        write_bundle(tokenizer, bundle)
        run.log_artifact(bundle, "tokenizer")
        points = [(e.step, e.train_loss, e.test_loss) for e in result.evaluations]
        run.log_artifact(loss_curve_png(points, Path(tmp) / "loss_curve.png", title=f"trained_model {context.run.run_id[:8]}"))
        # small (360 x 240 pixels): it fits the Dagster UI's metadata column, and travels inline
        small = loss_curve_png(points, Path(tmp) / SMALL_CURVE, title="loss", dpi=80, inches=(4.5, 3.0))
        run.log_artifact(small)
        curve_markdown = loss_curve_markdown(small)
        variant = context.partition_key if context.has_partition_key else None
        model_uri, version, reused = log_and_register(
            run, plan.folder / "final.safetensors", bundle / "bpe_tokenizer.json", result.model.state_dict(),
            result.test_loss, plan.params, final, step=result.steps, dataset=plan.dataset, variant=variant)
    if reused:
        context.log.info(f"weights unchanged: registered model version {version.version} ({model_uri}) reused")
    if export_hf:
        with tempfile.TemporaryDirectory() as tmp:
            run.log_artifact(hf.export(result.model.cpu(), tokenizer, Path(tmp) / "hf_model"), "hf_model")
    return LoggedModel(model_uri, version, curve_markdown)


def shown(name: str, value: float | None) -> dict[str, dg.MetadataValue]:
    """Rounded as every table shows it (MLflow has the exact value); no entry when not measured."""
    value = figure(name, value)
    return {} if value is None else {name: dg.MetadataValue.float(float(value))}


def model_metadata(mlflow: MLflowResource, run: TrackedRun, plan: TrainingPlan, result: TrainResult,
                   final: dict[str, float], baseline: float, logged: LoggedModel) -> dict[str, Any]:
    """The trained model's Dagster metadata: its figures, loss curve and MLflow model."""
    return {
        **shown("train_loss", result.train_loss),
        **shown("test_loss", result.test_loss),
        **{key: value for key in ("train_bits_per_character", "test_bits_per_character")
           for key, value in shown(key, final[key]).items()},
        # The curve inline (short Markdown: the UI renders it in place) while the MLflow UI
        # serves the run's loss_curve.png; the figures as a table; the picture itself behind
        # "[Show Markdown]" (its inline data is too long to render in place).
        "loss_curve": dg.MetadataValue.md(mlflow_picture(mlflow.ui_url, run.run_id, SMALL_CURVE)),
        "loss_history": loss_table(result.evaluations),
        "loss_curve_png": dg.MetadataValue.md(logged.curve_markdown),
        **shown("unigram_test_loss", baseline),
        "parameters": dg.MetadataValue.int(result.model.num_parameters()),
        "steps": dg.MetadataValue.int(result.steps),
        # not measured when a finished checkpoint was resumed (nothing trained in this run)
        **shown("tokens_per_second", result.tokens_per_second),
        **shown("training_seconds", result.seconds),
        "device": str(next(result.model.parameters()).device),
        **({"resumed_from_step": dg.MetadataValue.int(result.resumed_from)} if result.resumed_from is not None else {}),
        "checkpoint_dir": dg.MetadataValue.path(str(plan.folder)),
        "mlflow_model_uri": dg.MetadataValue.text(logged.uri),
        "registered_model_version": dg.MetadataValue.int(int(logged.version.version)),
    }


def pruned_metadata(result: TrainResult, final: dict[str, float], baseline: float) -> dict[str, Any]:
    """A trial stopped by its pruner at ``result.stopped_at``: the model as it is, its last metrics."""
    return {
        "pruned": True,
        "pruned_at_step": dg.MetadataValue.int(int(result.stopped_at)),
        **shown("train_loss", result.train_loss),
        **shown("test_loss", result.test_loss),
        **shown("train_bits_per_character", final["train_bits_per_character"]),
        **shown("test_bits_per_character", final["test_bits_per_character"]),
        **shown("unigram_test_loss", baseline),
        "steps": dg.MetadataValue.int(result.steps),
        **shown("training_seconds", result.seconds),
    }
