"""Data-parallel training: ``train`` in several processes started by torchrun, with DDP.

``launch`` runs ``python -m torch.distributed.run --standalone --nproc_per_node N -m
gpt_pipeline.training.distributed ...`` and waits for it. Each worker (``main`` below) loads the dataset
file itself (``data.load_splits``: memory-mapped where the file has token companions), joins the
process group (gloo on CPU, nccl on CUDA, or as configured) and calls ``training.train`` with a
``DDPReplica``:

- every process draws the same global batch from the shared seed and keeps its rows (rank r of
  N: rows ``[r*B//N, (r+1)*B//N)``); DDP averages the gradients, so that the step is the
  single-process step on the whole batch, up to float summation order (unequal shares are
  weighted by their size);
- clamping or clipping and the AdamW step then run on identical gradients in every process;
- rank 0 alone evaluates, writes checkpoints (same file and resume rules as one process; the
  other processes' dropout generators are saved in it too) and reports progress, as JSON lines
  in an events file that ``launch`` reads and hands to ``on_evaluation``.

A worker that fails writes its error as one line beside the events file; ``launch`` then raises
``DistributedTrainingError`` naming torchrun's exit status and that line. ``launch`` stops
torchrun when it is interrupted, and torchrun and the workers die with their parent (Linux
``PR_SET_PDEATHSIG``), so none is left behind. Checkpoints are written atomically by
``checkpoint.py``. Not here: MLflow or Dagster (the caller logs what ``on_evaluation`` gets).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.distributed as dist

from gpt_pipeline.training.checkpoint import (
    FINAL_CHECKPOINT,
    load_checkpoint,
    load_training_checkpoint,
    read_checkpoint_metadata,
    training_state_of,
)
from gpt_pipeline.model.gpt import GPT, GPTConfig
from gpt_pipeline.training.loop import Evaluation, Replica, TrainConfig, TrainResult, resolve_device, train

logger = logging.getLogger(__name__)

EVENTS_FILE = "events.jsonl"  # rank 0's progress: one JSON object a line
LOG_FILE = "torchrun.log"  # torchrun's and the workers' stdout and stderr
LOG_TAIL_LINES = 120  # of that log, in a failure
_PR_SET_PDEATHSIG = 1


class DistributedTrainingError(RuntimeError):
    """A torchrun run that failed; ``str()`` is one line, ``log_tail`` the end of its output."""

    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message)
        self.log_tail = log_tail


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


def share_of(rank: int, world_size: int, batch: int) -> tuple[int, int]:
    """Rows ``[start, end)`` of a batch of ``batch`` rows that process ``rank`` trains on.

    Example:
        >>> [share_of(r, 3, 8) for r in range(3)]
        [(0, 2), (2, 5), (5, 8)]
    """
    return rank * batch // world_size, (rank + 1) * batch // world_size


_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent ends (Linux; elsewhere nothing).

    Safe between fork and exec (``preexec_fn``): one system call through a function looked up
    at import."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


class _Loss(torch.nn.Module):
    """The model's mean loss as ``forward``: what DDP wraps (it hooks ``forward`` only)."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model.loss(x, y)


class DDPReplica(Replica):
    """Process ``rank`` of ``world_size`` in an initialised process group (see the module)."""

    def __init__(self, rank: int, world_size: int, device: torch.device, seed: int):
        self.rank, self.world_size, self.device, self.seed = rank, world_size, device, seed
        # nccl moves CUDA tensors only; gloo moves CPU tensors
        self.comm_device = device if dist.get_backend() == "nccl" else torch.device("cpu")

    def dropout_seed(self, seed: int) -> int:
        return seed + (self.rank << 32)  # rank 0 keeps the single-process stream

    def _broadcast_text(self, text: str) -> str:
        data = torch.tensor(list(text.encode()), dtype=torch.uint8, device=self.comm_device)
        size = torch.tensor([len(data)], dtype=torch.int64, device=self.comm_device)
        dist.broadcast(size, 0)
        if self.rank != 0:
            data = torch.empty(int(size.item()), dtype=torch.uint8, device=self.comm_device)
        dist.broadcast(data, 0)
        return bytes(data.cpu().tolist()).decode()

    def resume(self, resume_main, model, optimizer, generators):
        """Rank 0 picks the checkpoint (and alone deletes stale ones); the others load it."""
        if self.rank == 0:
            found = resume_main()
            self._broadcast_text("" if found is None else str(found[0]))
            return None if found is None else found[1]
        path = self._broadcast_text("")
        if not path:
            return None
        saved = training_state_of(Path(path), read_checkpoint_metadata(path))
        name = f"dropout.rank{self.rank}"
        own = (saved.get("dropout_device") == self.device.type
               and self.rank < saved.get("dropout_processes", 1))
        restore = {"batch": generators["batch"], "evaluation": generators["evaluation"]}
        if own:
            restore[name] = generators["dropout"]
        state = load_training_checkpoint(path, model, optimizer, restore)
        if not own:  # saved by fewer processes or on another device type: reseed deterministically
            generators["dropout"].manual_seed(self.dropout_seed(self.seed + 3 + state["step"]))
        return state

    def loss_function(self, model):
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(_Loss(model), device_ids=ids)  # GPT has no buffers

    def share(self, x, y):
        start, end = share_of(self.rank, self.world_size, len(x))
        return x[start:end], y[start:end], (end - start) * self.world_size / len(x)

    def other_generators(self, generators):
        state = generators["dropout"].get_state().to(self.comm_device)
        gathered = [torch.empty_like(state) for _ in range(self.world_size)]
        dist.all_gather(gathered, state)
        if self.rank != 0:
            return {}
        others = {}
        for rank in range(1, self.world_size):
            others[f"dropout.rank{rank}"] = torch.Generator(device=self.device)
            others[f"dropout.rank{rank}"].set_state(gathered[rank].cpu())
        return others


# --- the worker ---------------------------------------------------------------------------------


def _append_event(path: Path, event: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(event) + "\n")
        handle.flush()


def _work(args: argparse.Namespace, rank: int, world_size: int) -> None:
    from gpt_pipeline.data.dataset_files import load_splits
    from gpt_pipeline.data.table_file import TableFile

    model_config = GPTConfig.from_json(args.model_config)
    config = TrainConfig.from_dict(json.loads(args.train_config))
    if world_size != config.num_processes:
        raise ValueError(f"torchrun started {world_size} processes, num_processes={config.num_processes}")
    device = resolve_device(config.device)
    if device.type == "cuda":  # one GPU per process
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
        config = replace(config, device=str(device))
    elif device.type != "cpu":
        raise ValueError(f"num_processes > 1 trains on cpu or cuda, not {device.type!r}")
    train_data, test_data = load_splits(TableFile.stored_at(args.dataset))
    initial_model = load_checkpoint(args.initial_checkpoint)[0] if args.initial_checkpoint else None
    events = Path(args.events)
    dist.init_process_group(resolve_backend(config.distributed_backend, device), rank=rank,
                            world_size=world_size)
    try:
        report = (lambda e: _append_event(events, {"event": "evaluation", **asdict(e)})) if rank == 0 else None
        result = train(model_config, config, train_data, test_data, Path(args.checkpoint_dir), report,
                       initial_model, DDPReplica(rank, world_size, device, config.seed))
        if rank == 0:
            _append_event(events, {
                "event": "done", "steps": result.steps, "resumed_from": result.resumed_from,
                "seconds": result.seconds, "tokens_per_second": result.tokens_per_second,
                "device": str(device), "checkpoint": str(result.checkpoint_path),
            })
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """One torchrun worker (``RANK``, ``WORLD_SIZE`` from torchrun's environment)."""
    parser = argparse.ArgumentParser(prog="python -m gpt_pipeline.training.distributed")
    for name in ("--dataset", "--model-config", "--train-config", "--checkpoint-dir", "--events"):
        parser.add_argument(name, required=True)
    parser.add_argument("--initial-checkpoint")
    args = parser.parse_args(argv)
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    _die_with_parent()  # torchrun starts each worker in a session of its own
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    try:
        _work(args, rank, world_size)
    except BaseException as error:
        lines = str(error).strip().splitlines()
        record = {"rank": rank, "time": time.time(),
                  "message": f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__}
        (Path(args.events).parent / f"error.{rank}.json").write_text(json.dumps(record))
        raise
    return 0


# --- the launcher -------------------------------------------------------------------------------


def torchrun_command(model_config: GPTConfig, config: TrainConfig, dataset: str | os.PathLike,
                     checkpoint_dir: str | os.PathLike, events: str | os.PathLike,
                     initial_checkpoint: str | None = None) -> list[str]:
    """The torchrun command line of a run (torchrun of this interpreter's torch)."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={config.num_processes}", "--max_restarts=0", "--monitor_interval=0.2",
        "-m", "gpt_pipeline.training.distributed", "--dataset", str(dataset),
        "--model-config", model_config.to_json(), "--train-config", json.dumps(config.to_dict()),
        "--checkpoint-dir", str(checkpoint_dir), "--events", str(events),
    ]
    return command + (["--initial-checkpoint", str(initial_checkpoint)] if initial_checkpoint else [])


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


def _failure(returncode: int, folder: Path) -> DistributedTrainingError:
    """The one-line error of a failed run: torchrun's status and the first worker error."""
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
    return DistributedTrainingError(f"distributed training failed: torchrun {status}; {detail}", tail)


def _stop(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM torchrun (it stops its workers), then SIGKILL if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()  # the workers follow it (their parent-death signal)
            process.wait()


def launch(
    model_config: GPTConfig,
    train_config: TrainConfig,
    dataset: str | os.PathLike,
    checkpoint_dir: str | os.PathLike,
    on_evaluation: Callable[[Evaluation], None] | None = None,
    initial_checkpoint: str | None = None,
    poll_seconds: float = 0.1,
) -> TrainResult:
    """Train with ``train_config.num_processes`` torchrun workers on the stored dataset file
    ``dataset``; the result is ``train``'s, its model loaded from ``final.safetensors``.

    ``on_evaluation`` gets rank 0's evaluations as they come, in this process. Raises
    ``ValueError`` for a bad config before anything starts, ``DistributedTrainingError`` when
    a worker fails.
    """
    model_config.validate()
    config = train_config.validate()
    resolve_backend(config.distributed_backend, resolve_device(config.device))
    if not dist.is_available():
        raise ValueError("this torch build has no torch.distributed: use num_processes=1")
    if not Path(dataset).is_file():
        raise FileNotFoundError(f"dataset file {str(dataset)!r} does not exist")
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // config.num_processes)))
    with tempfile.TemporaryDirectory(prefix="gpt_pipeline_torchrun.") as tmp:
        folder = Path(tmp)
        events = _EventReader(folder / EVENTS_FILE)
        command = torchrun_command(model_config, config, dataset, checkpoint_dir, events.path, initial_checkpoint)
        logger.info("starting %s", " ".join(command[:6]))
        with open(folder / LOG_FILE, "wb") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       env=env, start_new_session=True, preexec_fn=_die_with_parent)
        done = None
        try:
            while True:
                returncode = process.poll()
                for event in events.read():  # read after poll: nothing is missed at the end
                    if event["event"] == "evaluation" and on_evaluation is not None:
                        on_evaluation(Evaluation(**{k: v for k, v in event.items() if k != "event"}))
                    elif event["event"] == "done":
                        done = event
                if returncode is not None:
                    break
                time.sleep(poll_seconds)
        finally:
            _stop(process)
        if returncode != 0:
            raise _failure(returncode, folder)
        if done is None:
            raise DistributedTrainingError("distributed training failed: torchrun exited with status 0 "
                                           "but rank 0 reported no result", "")
    final = Path(done["checkpoint"])
    model, metadata = load_checkpoint(final, device=done["device"])
    evaluations = [Evaluation(**e) for e in training_state_of(final, metadata)["evaluations"]]
    return TrainResult(
        model=model, evaluations=evaluations, train_loss=evaluations[-1].train_loss,
        test_loss=evaluations[-1].test_loss, seconds=done["seconds"],
        tokens_per_second=done["tokens_per_second"], steps=done["steps"],
        resumed_from=done["resumed_from"], checkpoint_path=checkpoint_dir / FINAL_CHECKPOINT,
    )


if __name__ == "__main__":
    code = main()  # on an error it raises: the traceback goes to torchrun's log
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Every file is closed by now (checkpoints are fsynced and renamed into place); the
    # interpreter's own teardown with torch and gloo loaded took 3 s of a 15 s test run here.
    os._exit(code)
