"""Where ``trained_model``'s training runs, chosen by its ``launcher`` config, and how a failure
is retried.

- ``in_process``: ``gpt_pipeline.training.loop.train`` in the step's own process (one process on
  one node only). ``auto`` (the default) picks it for one process: no second interpreter or
  torch import (docs/deployment.md's figures).
- ``subprocess``: the worker ``gpt_pipeline.defs.pipes_worker`` (torchrun around it for several
  processes or nodes) started here in a Dagster Pipes session (``dg.open_pipes_session`` with the
  temp-file injector and reader that ``PipesSubprocessClient`` uses; the process is started here
  so that it dies with the step and its custom messages are read while it runs). Rank 0's
  evaluations arrive as Pipes logs (the Dagster event log) and custom messages (handed to
  ``report``, which logs them to MLflow); its final report is a Pipes materialization whose
  metadata names the final checkpoint. ``auto`` picks it for more than one process or node.
- ``k8s``: the same worker in a pod of its own through dagster-k8s's ``PipesK8sClient`` (the
  ``k8s`` extra), the pod spec from ``gpt_pipeline.defs.k8s``.

Retries (``retry_transient`` around the asset's body): a worker that died without a bad-input
error (killed by a signal, out of memory, a vanished peer) and any other unexpected error (an
MLflow server that went away) raise ``dg.RetryRequested`` with ``TRAINING_RETRY_POLICY``'s limit
and exponential backoff, and the retry resumes from the last checkpoint (the checkpoint folder is
keyed by the configuration); bad config, bad data and a failed ``beats_unigram`` are
``dg.Failure`` with ``allow_retries=False``. The policy is not attached to the asset itself:
Dagster 1.13 turns an interrupt (SIGTERM, a terminated run) into a retry when an op has a
``RetryPolicy`` (``op_execution_error_boundary``), so a terminated run would train again
instead of stopping.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shlex
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg

from gpt_pipeline.defs.k8s import K8sLaunchConfig, check_pod_settings, pod_command, pod_spec
from gpt_pipeline.data.table_file import TableFile
from gpt_pipeline.model.gpt import GPTConfig
from gpt_pipeline.training.loop import Evaluation, TrainConfig, TrainResult
from gpt_pipeline.training.torchrun import (
    WORKER_MODULE,
    DistributedTrainingError,
    check_launchable,
    failure,
    final_result,
    torchrun_command,
    watch,
    worker_command,
    worker_environment,
)

LAUNCHERS = ("auto", "in_process", "subprocess", "k8s")
PIPES_WORKER = "gpt_pipeline.defs.pipes_worker"
TRAINING_RETRY_POLICY = dg.RetryPolicy(max_retries=2, delay=2, backoff=dg.Backoff.EXPONENTIAL)


@contextlib.contextmanager
def retry_transient(context: dg.AssetExecutionContext) -> Iterator[None]:
    """Turn an unexpected error into ``dg.RetryRequested`` (``TRAINING_RETRY_POLICY``'s limit and
    backoff); ``dg.Failure`` (bad input, a failed check) and interrupts pass through."""
    try:
        yield
    except (dg.Failure, dg.RetryRequested, dg.DagsterError):
        raise
    except Exception as error:
        attempt = context.retry_number + 1
        if attempt > TRAINING_RETRY_POLICY.max_retries:
            raise
        wait = TRAINING_RETRY_POLICY.calculate_delay(attempt)
        context.log.warning(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}; "
                            f"retry {attempt} of {TRAINING_RETRY_POLICY.max_retries} in {wait:.0f} s "
                            "(it resumes from the last checkpoint)")
        raise dg.RetryRequested(max_retries=TRAINING_RETRY_POLICY.max_retries, seconds_to_wait=wait) from error


def resolve_launcher(launcher: str, config: TrainConfig) -> str:
    """The launcher that will run: ``auto`` resolved; ``ValueError`` naming the field for a
    combination that cannot run, before anything starts."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"TrainedModelConfig.launcher must be one of {LAUNCHERS}, got {launcher!r}")
    several = config.num_processes > 1 or config.nnodes > 1
    if config.node_rank != 0:
        raise ValueError(f"TrainedModelConfig.node_rank={config.node_rank}: the asset runs node 0 (it evaluates, "
                         "checkpoints and reports); start the other nodes with the command it logs")
    if launcher == "auto":
        return "subprocess" if several else "in_process"
    if launcher == "in_process" and several:
        raise ValueError(f"TrainedModelConfig.launcher='in_process' trains one process, not num_processes="
                         f"{config.num_processes} on nnodes={config.nnodes}: use 'subprocess' or 'k8s'")
    if launcher == "k8s" and importlib.util.find_spec("dagster_k8s") is None:
        raise ValueError("TrainedModelConfig.launcher='k8s' needs dagster-k8s, which is not installed: "
                         "pip install 'gpt-pipeline[k8s]'")
    return launcher


def _dataset_path(config: TrainConfig, dataset_file: TableFile | str | os.PathLike | None) -> Path:
    if dataset_file is None:
        raise ValueError(f"training out of process (num_processes={config.num_processes}) needs the tokenized "
                         "dataset as a stored file (dataset_file), got none")
    return dataset_file.path if isinstance(dataset_file, TableFile) else Path(dataset_file)


def _relay(messages, seen: list[int], report: Callable[[Evaluation], None] | None) -> None:
    for message in messages[seen[0]:]:
        if isinstance(message, dict) and "evaluation" in message and report is not None:
            report(Evaluation(**message["evaluation"]))
    seen[0] = len(messages)


def _result(results, checkpoint_dir: Path) -> TrainResult:
    reported = [r for r in results if isinstance(r, dg.MaterializeResult)]
    if not reported:
        raise DistributedTrainingError("distributed training failed: the worker exited with status 0 but "
                                       "reported no result through Dagster Pipes")
    meta = {k: v.value for k, v in (reported[-1].metadata or {}).items()}
    resumed = int(meta["resumed_from_step"])
    done = {"steps": int(meta["steps"]), "resumed_from": None if resumed < 0 else resumed,
            "seconds": float(meta["training_seconds"]), "tokens_per_second": float(meta["tokens_per_second"]) or None,
            "device": str(meta["device"])}
    return final_result(Path(meta["checkpoint"]).parent if meta.get("checkpoint") else checkpoint_dir, done)


def other_nodes_command(model_config: GPTConfig, config: TrainConfig, dataset: Path, checkpoint_dir: Path,
                        initial_checkpoint: str | None) -> str:
    """What to run on nodes 1..nnodes-1 (same paths: a shared volume), ``<RANK>`` to fill in."""
    command = torchrun_command(model_config, config, dataset, checkpoint_dir, None, initial_checkpoint,
                               WORKER_MODULE, checkpoint_dir / "errors")
    command = ["python", *command[1:]]
    return shlex.join(command).replace("--node-rank=0", "--node-rank=<RANK>")


def train_through_pipes(context: dg.AssetExecutionContext, model_config: GPTConfig, train_config: TrainConfig,
                        dataset: Path, checkpoint_dir: Path, report: Callable[[Evaluation], None] | None,
                        initial_checkpoint: str | None) -> TrainResult:
    """The ``subprocess`` launcher (see the module)."""
    config = check_launchable(model_config, train_config, dataset)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if config.nnodes > 1:
        context.log.info("start nodes 1 to %d on their machines with: %s" % (
            config.nnodes - 1, other_nodes_command(model_config, config, dataset, checkpoint_dir, initial_checkpoint)))
    with tempfile.TemporaryDirectory(prefix="gpt_pipeline_pipes.") as tmp:
        folder, seen = Path(tmp), [0]
        command = worker_command(model_config, config, dataset, checkpoint_dir, folder, initial_checkpoint,
                                 PIPES_WORKER)
        with dg.open_pipes_session(context=context, context_injector=dg.PipesTempFileContextInjector(),
                                   message_reader=dg.PipesTempFileMessageReader()) as session:
            env = worker_environment(config, session.get_bootstrap_env_vars())
            returncode = watch(command, env, folder, lambda: _relay(session.get_custom_messages(), seen, report))
        _relay(session.get_custom_messages(), seen, report)  # those read as the session closed
        if returncode != 0:
            single = config.num_processes == 1 and config.nnodes == 1
            raise failure(returncode, folder, "the training worker" if single else "torchrun")
        return _result(session.get_reported_results(), checkpoint_dir)


def train_in_pod(context: dg.AssetExecutionContext, model_config: GPTConfig, train_config: TrainConfig,
                 dataset: Path, checkpoint_dir: Path, report: Callable[[Evaluation], None] | None,
                 initial_checkpoint: str | None, settings: K8sLaunchConfig) -> TrainResult:
    """The ``k8s`` launcher: ``PipesK8sClient`` with our pod spec; the dataset and the checkpoint
    folder must lie on the volume that both pods mount at the same path (the data directory)."""
    from dagster_k8s import PipesK8sClient  # the k8s extra; resolve_launcher checked it is there

    config = check_launchable(model_config, train_config, dataset)
    check_pod_settings(settings, config)
    errors = checkpoint_dir / "errors"  # pod_command's --error-dir, on the shared volume
    for stale in errors.glob("error.*.json"):
        stale.unlink()
    try:
        invocation = PipesK8sClient().run(
            context=context, image=settings.image, namespace=settings.namespace or None,
            command=pod_command(model_config, config, dataset, checkpoint_dir, initial_checkpoint),
            base_pod_spec=pod_spec(settings),
        )
    except Exception as error:  # the pod failed: its workers' error records say whether a retry helps
        raise failure(1, errors, "the training pod") from error
    _relay(invocation.get_custom_messages(), [0], report)
    return _result(invocation.get_results(), checkpoint_dir)


def train_in_workers(context: dg.AssetExecutionContext, model_config: GPTConfig, train_config: TrainConfig,
                     dataset_file: TableFile | str | os.PathLike | None, folder: Path,
                     report: Callable[[Evaluation], None] | None, initial_checkpoint: str | None,
                     launcher: str = "subprocess", k8s: K8sLaunchConfig | None = None) -> TrainResult:
    """Train out of the step's process; a worker's failure fails the step with its one-line
    error (its output's end goes to the log): ``dg.Failure`` for bad input, else the
    ``DistributedTrainingError`` itself, which ``retry_transient`` retries."""
    path = _dataset_path(train_config, dataset_file)
    try:
        if launcher == "k8s":
            return train_in_pod(context, model_config, train_config, path, folder, report, initial_checkpoint,
                                k8s or K8sLaunchConfig())
        return train_through_pipes(context, model_config, train_config, path, folder, report, initial_checkpoint)
    except DistributedTrainingError as error:
        retry = " (retryable: the step is retried and resumes from its last checkpoint)" if error.retryable else ""
        context.log.error(f"{error}{retry}\nthe workers' output ends with:\n{error.log_tail}")
        if error.retryable:
            raise  # retry_transient retries it
        raise dg.Failure(description=str(error), allow_retries=False) from error
