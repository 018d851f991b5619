"""Starting training workers: the torchrun command line (one machine or several), watching the
processes, and turning a failed run into one line that says whether a retry can help.

- ``torchrun_command`` builds the command of a run: on one machine ``local_launch`` (torchrun's
  ``--standalone`` listens on every interface; ``local_launch`` on 127.0.0.1 only); with
  ``nnodes`` > 1 ``python -m torch.distributed.run ... -m <worker module> ...``, a static
  rendezvous at ``rdzv_endpoint`` (``host:port``, served by node 0's TCPStore, which listens on
  every interface of node 0: the nodes' network must be trusted) and this node's ``node_rank``,
  so that global rank 0 (evaluations, checkpoints, progress) always runs on node 0.
  ``num_processes`` is the number of processes on each node (one per GPU): the world is
  ``nnodes * num_processes`` processes.
- ``worker_command`` is the same without torchrun, for one process on one node.
- ``watch`` starts a command in a session of its own that dies with its parent (Linux
  ``PR_SET_PDEATHSIG``), calls ``poll`` while it runs and stops it (SIGTERM, then SIGKILL) when
  the caller is interrupted; ``failure`` reads the workers' error records
  (``record_error``) and classifies the run: a worker that raised a bad-input error
  (``ValueError``, a missing file) is the user's, anything else (killed by a signal, out of
  memory, a peer that vanished) is transient and worth a retry from the last checkpoint.
- ``launch`` (``gpt_pipeline.training.distributed``'s own workers, for the command line):
  rank 0's evaluations come back as JSON lines in an events file.

Not here: the Dagster side (``gpt_pipeline.defs.launchers`` runs the same commands through
Dagster Pipes), the worker itself (``gpt_pipeline.training.distributed``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from gpt_pipeline.devices import resolve_device
from gpt_pipeline.model.gpt import GPTConfig
from gpt_pipeline.training import local_launch
from gpt_pipeline.training.local_launch import die_with_parent  # also part of this module's API
from gpt_pipeline.training.checkpoint import FINAL_CHECKPOINT, load_checkpoint, training_state_of
from gpt_pipeline.training.config import TrainConfig
from gpt_pipeline.training.loop import Evaluation, TrainResult

logger = logging.getLogger(__name__)

WORKER_MODULE = "gpt_pipeline.training.distributed"
EVENTS_FILE = "events.jsonl"  # the command line's launch: rank 0's progress, one JSON object a line
LOG_FILE = "torchrun.log"  # torchrun's and the workers' stdout and stderr
LOG_TAIL_LINES = 120  # of that log, in a failure
USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError)


class DistributedTrainingError(RuntimeError):
    """A training run whose workers failed; ``str()`` is one line, ``log_tail`` the end of their
    output, ``retryable`` whether it died of something else than bad input (a signal, memory)."""

    def __init__(self, message: str, log_tail: str = "", retryable: bool = False):
        super().__init__(message)
        self.log_tail, self.retryable = log_tail, retryable


def resolve_backend(backend: str, device: torch.device) -> str:
    """The process-group backend: ``"auto"`` is nccl on CUDA and gloo elsewhere.

    Example:
        >>> resolve_backend("auto", torch.device("cpu")), resolve_backend("gloo", torch.device("cpu"))
        ('gloo', 'gloo')
    """
    if backend not in ("auto", "gloo", "nccl"):
        raise ValueError(f"distributed_backend must be 'auto', 'gloo' or 'nccl', got {backend!r}")
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(f"distributed_backend='nccl' needs CUDA; the device is {device.type!r} (use gloo)")
    return backend


def check_launchable(model_config: GPTConfig, train_config: TrainConfig, dataset: str | os.PathLike) -> TrainConfig:
    """``ValueError`` (or ``FileNotFoundError``) for what would fail once workers run."""
    config = train_config
    resolve_backend(config.distributed_backend, resolve_device(config.device))
    if config.num_processes * config.nnodes > 1 and not dist.is_available():
        raise ValueError("this torch build has no torch.distributed: use num_processes=1 and nnodes=1")
    if not Path(dataset).is_file():
        raise FileNotFoundError(f"dataset file {str(dataset)!r} does not exist")
    return config


def worker_arguments(model_config: GPTConfig, config: TrainConfig, dataset: str | os.PathLike,
                     checkpoint_dir: str | os.PathLike, error_dir: str | os.PathLike,
                     initial_checkpoint: str | None = None, events: str | os.PathLike | None = None) -> list[str]:
    """The worker's own arguments (``gpt_pipeline.training.distributed.parse_arguments``)."""
    arguments = ["--dataset", str(dataset), "--model-config", model_config.to_json(),
                 "--train-config", json.dumps(config.to_dict()), "--checkpoint-dir", str(checkpoint_dir),
                 "--error-dir", str(error_dir)]
    if events is not None:
        arguments += ["--events", str(events)]
    return arguments + (["--initial-checkpoint", str(initial_checkpoint)] if initial_checkpoint else [])


def torchrun_command(model_config: GPTConfig, config: TrainConfig, dataset: str | os.PathLike,
                     checkpoint_dir: str | os.PathLike, events: str | os.PathLike | None = None,
                     initial_checkpoint: str | None = None, module: str = WORKER_MODULE,
                     error_dir: str | os.PathLike | None = None) -> list[str]:
    """The command line of a run on this node: one machine, ``local_launch`` (meeting on 127.0.0.1
    only); several, torchrun of this interpreter's torch (a static rendezvous at ``rdzv_endpoint``)."""
    error_dir = error_dir if error_dir is not None else Path(events).parent if events else checkpoint_dir
    arguments = worker_arguments(model_config, config, dataset, checkpoint_dir, error_dir, initial_checkpoint, events)
    if config.nnodes == 1:
        return local_launch.command(config.num_processes, module, arguments)
    nodes = [f"--nnodes={config.nnodes}", f"--node-rank={config.node_rank}", "--rdzv-backend=static",
             f"--rdzv-endpoint={config.rdzv_endpoint}"]
    return [sys.executable, "-m", "torch.distributed.run", *nodes, f"--nproc_per_node={config.num_processes}",
            "--max_restarts=0", "--monitor_interval=0.2", "-m", module, *arguments]


def worker_command(model_config: GPTConfig, config: TrainConfig, dataset: str | os.PathLike,
                   checkpoint_dir: str | os.PathLike, error_dir: str | os.PathLike,
                   initial_checkpoint: str | None = None, module: str = WORKER_MODULE) -> list[str]:
    """One process on one node: the worker module itself, or torchrun around it otherwise."""
    if config.num_processes == 1 and config.nnodes == 1:
        return [sys.executable, "-m", module,
                *worker_arguments(model_config, config, dataset, checkpoint_dir, error_dir, initial_checkpoint)]
    return torchrun_command(model_config, config, dataset, checkpoint_dir, None, initial_checkpoint, module,
                            error_dir)


def worker_environment(config: TrainConfig, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // config.num_processes)))
    return env


def record_error(error_dir: str | os.PathLike, rank: int, error: BaseException) -> None:
    """A worker's error as one line for ``failure``: ``error.<rank>.json`` in ``error_dir``."""
    lines = str(error).strip().splitlines()
    record = {"rank": rank, "time": time.time(), "user_error": isinstance(error, USER_ERRORS),
              "message": f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__}
    Path(error_dir).mkdir(parents=True, exist_ok=True)
    (Path(error_dir) / f"error.{rank}.json").write_text(json.dumps(record))


def failure(returncode: int, folder: Path, what: str = "torchrun") -> DistributedTrainingError:
    """The one-line error of a failed run: the exit status and the first worker error."""
    if returncode < 0:
        status = f"was killed by {signal.Signals(-returncode).name}"
    else:
        status = f"exited with status {returncode}"
    log = (folder / LOG_FILE).read_text(errors="replace") if (folder / LOG_FILE).exists() else ""
    errors = sorted((json.loads(p.read_text()) for p in folder.glob("error.*.json")), key=lambda e: e["time"])
    if errors:
        detail = f"rank {errors[0]['rank']}: {errors[0]['message']}"
    else:  # a worker that died before it could say why: its last error line in the log
        lines = [line.strip() for line in log.splitlines() if line.strip()]
        found = [line for line in lines if "Error" in line or "Exception" in line]
        detail = (found or lines or ["no output"])[-1]
    tail = "\n".join(log.splitlines()[-LOG_TAIL_LINES:])
    retryable = not any(e.get("user_error") for e in errors)
    return DistributedTrainingError(f"distributed training failed: {what} {status}; {detail}", tail, retryable)


def stop(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process (torchrun stops its workers), then SIGKILL if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()  # the workers follow it (their parent-death signal)
            process.wait()


def watch(command: list[str], env: dict[str, str], folder: Path, poll: Callable[[], None],
          poll_seconds: float = 0.1) -> int:
    """Run ``command`` (output to ``folder/LOG_FILE``), calling ``poll`` until it ends and once
    after; its exit status. Stops it when the caller is interrupted."""
    logger.info("starting %s", " ".join(command[:6]))
    with open(folder / LOG_FILE, "wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True, preexec_fn=die_with_parent)
    try:
        while True:
            returncode = process.poll()
            poll()  # after poll(): nothing is missed at the end
            if returncode is not None:
                return returncode
            time.sleep(poll_seconds)
    finally:
        stop(process)


def final_result(checkpoint_dir: Path, done: dict) -> TrainResult:
    """``train``'s result from rank 0's final checkpoint and its last report (``done``)."""
    final = checkpoint_dir / FINAL_CHECKPOINT
    model, metadata = load_checkpoint(final, device=done["device"])
    evaluations = [Evaluation(**e) for e in training_state_of(final, metadata)["evaluations"]]
    return TrainResult(
        model=model, evaluations=evaluations, train_loss=evaluations[-1].train_loss,
        test_loss=evaluations[-1].test_loss, seconds=done["seconds"],
        tokens_per_second=done["tokens_per_second"], steps=done["steps"],
        resumed_from=done["resumed_from"], checkpoint_path=final,
    )


class _EventReader:
    """The complete lines appended to a JSON-lines file since the last read."""

    def __init__(self, path: Path):
        self.path, self.offset, self.pending = path, 0, b""

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        self.offset += len(chunk)
        *lines, self.pending = (self.pending + chunk).split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]


def launch(
    model_config: GPTConfig,
    train_config: TrainConfig,
    dataset: str | os.PathLike,
    checkpoint_dir: str | os.PathLike,
    on_evaluation: Callable[[Evaluation], None] | None = None,
    initial_checkpoint: str | None = None,
    poll_seconds: float = 0.1,
) -> TrainResult | None:
    """Train with torchrun workers of ``gpt_pipeline.training.distributed`` on the stored
    dataset file ``dataset`` (the command line's way; the asset uses Dagster Pipes); the result
    is ``train``'s, its model loaded from ``final.safetensors``. On a node other than node 0
    (``node_rank`` > 0) the result is None: rank 0 runs on node 0.

    ``on_evaluation`` gets rank 0's evaluations as they come, in this process. Raises
    ``ValueError`` for a bad config before anything starts, ``DistributedTrainingError`` when
    a worker fails.
    """
    config = check_launchable(model_config, train_config, dataset)
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpt_pipeline_torchrun.") as tmp:
        folder = Path(tmp)
        events = _EventReader(folder / EVENTS_FILE)
        done = {}

        def read_events() -> None:
            for event in events.read():
                if event["event"] == "evaluation" and on_evaluation is not None:
                    on_evaluation(Evaluation(**{k: v for k, v in event.items() if k != "event"}))
                elif event["event"] == "done":
                    done.update(event)

        command = torchrun_command(model_config, config, dataset, checkpoint_dir, events.path, initial_checkpoint)
        returncode = watch(command, worker_environment(config), folder, read_events, poll_seconds)
        if returncode != 0:
            raise failure(returncode, folder)
        if config.node_rank != 0:
            return None
        if not done:
            raise DistributedTrainingError("distributed training failed: torchrun exited with status 0 "
                                           "but rank 0 reported no result", "")
    return final_result(checkpoint_dir, done)
