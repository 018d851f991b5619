"""The ``trained_model`` asset's work: one MLflow run around ``gpt_pipeline.training.loop.train``.

Checkpoints go to ``<data dir>/checkpoints/trained_model/<hash of config and data>/``, so a
rematerialization of the same configuration on the same data resumes from the last one, and two
runs of one configuration take turns on that folder (a file lock) instead of mixing their files.
The config's ``launcher`` picks where the training runs (``gpt_pipeline.defs.launchers``): in this
process, or in a Dagster Pipes worker (torchrun inside for several processes or nodes; a pod
with ``k8s``) whose rank 0 progress comes back here and is logged to MLflow and the Dagster log
as in one process.
"""

import hashlib
import os
import platform
import tempfile
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import torch

from gpt_pipeline import quality
from gpt_pipeline.fields import result_fields
from gpt_pipeline.defs.checks import BEATS_UNIGRAM, gate
from gpt_pipeline.training.checkpoint import fingerprint, load_checkpoint
from gpt_pipeline.defs.resources import MLflowResource
from gpt_pipeline.defs.launchers import resolve_launcher, train_in_workers
from gpt_pipeline.interop import hf
from gpt_pipeline.model.gpt import GPTConfig
from gpt_pipeline.storage import data_dir, exclusive
from gpt_pipeline.data.table_file import TableFile
from gpt_pipeline.data.tokens import TokenArray
from gpt_pipeline.tracking.plots import loss_curve_png
from gpt_pipeline.tracking.pyfunc import log_pyfunc_model
from gpt_pipeline.tokenizer.bundle import write_bundle
from gpt_pipeline.tracking.registry import register_training
from gpt_pipeline.training.loop import Evaluation, TrainConfig, TrainResult, train, validate_training_data
from gpt_pipeline.training.progress import progress_line


@dataclass(frozen=True)
class TrainingOutcome:
    output: dg.Output  # the trained GPT with its metadata, for the IO manager
    gate: quality.Gate  # the beats_unigram check, already passed


def checkpoint_dir(
    model_config: GPTConfig,
    train_config: TrainConfig,
    train: TokenArray,
    test: TokenArray,
    initial_checkpoint: str | None = None,
) -> Path:
    """Where this configuration's checkpoints live: keyed by every field that changes the
    training's result (``resume`` does not), the data itself and the starting weights.

    The data is hashed a few MB at a time (the same digest as hashing it whole), so that
    memory-mapped splits are read, not copied."""
    digest = hashlib.sha256()
    for part in (train.tokens, train.offsets, test.tokens, test.offsets):
        step = max(1, (1 << 24) // max(1, part.itemsize))
        for start in range(0, len(part), step):
            digest.update(np.ascontiguousarray(part[start : start + step]).data)
    if initial_checkpoint:
        digest.update(Path(initial_checkpoint).read_bytes())
    return data_dir() / "checkpoints" / "trained_model" / fingerprint(
        model_config, result_settings(train_config), digest.hexdigest())


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


def run_training(
    context: dg.AssetExecutionContext,
    mlflow: MLflowResource,
    model_config: GPTConfig,
    train_config: TrainConfig,
    train_data: TokenArray,
    test_data: TokenArray,
    tokenizer,
    initial_checkpoint: str | None = None,
    export_hf: bool = False,
    dataset_file: TableFile | str | os.PathLike | None = None,
    launcher: str = "auto",
    k8s=None,
) -> Generator[dg.AssetCheckResult, None, TrainingOutcome]:
    """Train (or resume), log to MLflow, and gate on ``beats_unigram`` before returning the output.

    A generator: it yields the failed check result (then raises) when the model does not beat
    the unigram baseline, so that nothing is stored. Unless ``launcher`` resolves to
    ``in_process``, the training runs in Dagster Pipes workers (``train_in_workers``) that read
    ``dataset_file``, the stored dataset."""
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
    folder = checkpoint_dir(model_config, train_config, train_data, test_data, initial_checkpoint)
    with mlflow.asset_run(context) as run, exclusive(folder):
        params = {**model_config.to_dict(), **train_config.to_dict()}
        run.log_params(params)
        run.set_tags({"checkpoint_dir": str(folder), **system_facts(train_config.device)})
        reported: set[int] = set()

        def report(evaluation: Evaluation) -> None:
            reported.add(evaluation.step)
            if launcher == "in_process":  # a Pipes worker logs its own line through Pipes
                context.log.info(progress_line(evaluation, train_config.training_iterations))
            run.log_metrics(
                {
                    "train_loss": evaluation.train_loss,
                    "test_loss": evaluation.test_loss,
                    "tokens_per_second": evaluation.tokens_per_second or float("nan"),
                    "learning_rate": evaluation.learning_rate,
                },
                step=evaluation.step,
            )

        if launcher != "in_process":  # workers that read the dataset file themselves
            result = train_in_workers(context, model_config, train_config, dataset_file, folder, report,
                                      initial_checkpoint, launcher, k8s)
        else:
            result = train(model_config, train_config, train_data, test_data, folder, report, initial_model,
                           on_progress=lambda progress: context.log.info(progress.line()))
        for evaluation in result.evaluations:  # restored from a checkpoint when resuming
            if evaluation.step not in reported:
                run.log_metrics({"train_loss": evaluation.train_loss, "test_loss": evaluation.test_loss}, evaluation.step)
        device = str(next(result.model.parameters()).device)
        run.set_tags({"system.device": device})
        baseline = quality.unigram_loss(train_data, test_data, model_config.vocab_size)
        outcome = quality.beats_unigram(result.test_loss, baseline)
        summary = {
            "final_train_loss": result.train_loss,
            "final_test_loss": result.test_loss,
            "unigram_test_loss": baseline,
            "training_seconds": result.seconds,
            "tokens_per_second": result.tokens_per_second or float("nan"),
            "parameters": result.model.num_parameters(),
        }
        run.log_metrics(summary)
        yield from gate(BEATS_UNIGRAM, outcome)  # a failing model is never logged as a model
        run.log_artifact(folder / "final.safetensors", "checkpoint")
        run.log_dict(params, "config.json")
        with tempfile.TemporaryDirectory() as tmp:
            bundle = Path(tmp) / "tokenizer"
            write_bundle(tokenizer, bundle)
            run.log_artifact(bundle, "tokenizer")
            curve = loss_curve_png(
                [(e.step, e.train_loss, e.test_loss) for e in result.evaluations],
                Path(tmp) / "loss_curve.png",
                title=f"trained_model {context.run_id[:8]}",
            )
            run.log_artifact(curve)
            model_uri = log_pyfunc_model(run, folder / "final.safetensors", bundle)
        version = register_training(run, result.test_loss, model_uri)
        if export_hf:
            with tempfile.TemporaryDirectory() as tmp:
                run.log_artifact(hf.export(result.model.cpu(), tokenizer, Path(tmp) / "hf_model"), "hf_model")
    history = [
        {"step": e.step, "train_loss": round(e.train_loss, 4), "test_loss": round(e.test_loss, 4)}
        for e in result.evaluations
    ]
    output = dg.Output(
        result.model,
        metadata={
            "train_loss": dg.MetadataValue.float(result.train_loss),
            "test_loss": dg.MetadataValue.float(result.test_loss),
            "unigram_test_loss": dg.MetadataValue.float(baseline),
            "parameters": dg.MetadataValue.int(summary["parameters"]),
            "steps": dg.MetadataValue.int(result.steps),
            "tokens_per_second": dg.MetadataValue.float(summary["tokens_per_second"]),
            "training_seconds": dg.MetadataValue.float(result.seconds),
            "device": device,
            "resumed_from_step": dg.MetadataValue.int(-1 if result.resumed_from is None else result.resumed_from),
            "checkpoint_dir": dg.MetadataValue.path(str(folder)),
            "loss_history": dg.MetadataValue.json(history),
            "mlflow_model_uri": dg.MetadataValue.text(model_uri),
            "registered_model_version": dg.MetadataValue.int(int(version.version)),
            "mlflow_run_id": dg.MetadataValue.text(run.run_id),
            "mlflow_run": dg.MetadataValue.url(mlflow.run_url(run)),
        },
    )
    return TrainingOutcome(output, outcome)
