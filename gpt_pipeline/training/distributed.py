"""Data-parallel training: ``train`` in several processes started by torchrun, with DDP.

``gpt_pipeline.training.torchrun`` builds the command line (one machine, or ``nnodes`` machines
meeting at ``rdzv_endpoint``) and watches it. Each worker (``run_worker`` below) loads the
dataset file itself (``data.dataset_files.load_splits``: memory-mapped where the file has token companions),
joins the process group (gloo on CPU, nccl on CUDA, or as configured) and calls
``training.loop.train`` with a ``DDPReplica``:

- every process draws the same global batch from the shared seed and keeps its rows (rank r of
  N: rows ``[r*B//N, (r+1)*B//N)``); DDP averages the gradients, so that the step is the
  single-process step on the whole batch, up to float summation order (unequal shares are
  weighted by their size);
- clamping or clipping and the AdamW step then run on identical gradients in every process;
- rank 0 alone evaluates, writes checkpoints (same file and resume rules as one process; the
  other processes' dropout generators are saved in it too) and reports progress through the
  ``report`` its front end gives it: ``main`` here writes JSON lines to ``--events`` (the
  command line's ``launch``), ``gpt_pipeline.defs.pipes_worker`` reports through Dagster Pipes.

Without torchrun (one process, no ``RANK`` in the environment) ``run_worker`` trains in this
process, without a process group. A worker that fails records its error as one line in
``--error-dir`` (``torchrun.record_error``). Checkpoints are written atomically by
``checkpoint.py``. Not here: MLflow or Dagster.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.distributed as dist

from gpt_pipeline.training import local_launch
from gpt_pipeline.training.checkpoint import (
    load_checkpoint,
    load_training_checkpoint,
    read_checkpoint_metadata,
    training_state_of,
)
from gpt_pipeline.model.gpt import GPT, GPTConfig
from gpt_pipeline.training.loop import Evaluation, Replica, TrainConfig, TrainResult, resolve_device, train
from gpt_pipeline.training.torchrun import (  # noqa: F401 - resolve_backend is also part of this module's API
    die_with_parent,
    record_error,
    resolve_backend,
)

logger = logging.getLogger(__name__)


def share_of(rank: int, world_size: int, batch: int) -> tuple[int, int]:
    """Rows ``[start, end)`` of a batch of ``batch`` rows that process ``rank`` trains on.

    Example:
        >>> [share_of(r, 3, 8) for r in range(3)]
        [(0, 2), (2, 5), (5, 8)]
    """
    return rank * batch // world_size, (rank + 1) * batch // world_size


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


def ranks() -> tuple[int, int]:
    """``(RANK, WORLD_SIZE)`` from torchrun's environment; ``(0, 1)`` outside torchrun."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def parse_arguments(argv: list[str] | None = None, prog: str = "python -m gpt_pipeline.training.distributed"):
    parser = argparse.ArgumentParser(prog=prog)
    for name in ("--dataset", "--model-config", "--train-config", "--checkpoint-dir", "--error-dir"):
        parser.add_argument(name, required=True)
    parser.add_argument("--events")
    parser.add_argument("--initial-checkpoint")
    return parser.parse_args(argv)


def done_record(result: TrainResult, device: torch.device) -> dict:
    """What rank 0 reports at the end (``torchrun.final_result`` reads the rest from the checkpoint)."""
    return {"steps": result.steps, "resumed_from": result.resumed_from, "seconds": result.seconds,
            "tokens_per_second": result.tokens_per_second, "device": str(device),
            "checkpoint": str(result.checkpoint_path)}


def run_worker(args: argparse.Namespace, rank: int, world_size: int,
               report: Callable[[Evaluation], None] | None) -> tuple[TrainResult, torch.device]:
    """Train this worker's part (``report`` is called on rank 0 only)."""
    from gpt_pipeline.data.dataset_files import load_splits
    from gpt_pipeline.data.table_file import TableFile

    model_config = GPTConfig.from_json(args.model_config)
    config = TrainConfig.from_dict(json.loads(args.train_config))
    if world_size != config.num_processes * config.nnodes:
        raise ValueError(f"torchrun started {world_size} processes, num_processes={config.num_processes} "
                         f"on each of nnodes={config.nnodes}")
    device = resolve_device(config.device)
    if device.type == "cuda" and world_size > 1:  # one GPU per process
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
        config = replace(config, device=str(device))
    elif device.type not in ("cpu", "cuda") and world_size > 1:
        raise ValueError(f"num_processes > 1 trains on cpu or cuda, not {device.type!r}")
    train_data, test_data = load_splits(TableFile.stored_at(args.dataset))
    initial_model = load_checkpoint(args.initial_checkpoint)[0] if args.initial_checkpoint else None
    if world_size == 1:
        result = train(model_config, config, train_data, test_data, Path(args.checkpoint_dir), report,
                       initial_model)
        return result, device
    dist.init_process_group(resolve_backend(config.distributed_backend, device), rank=rank,
                            world_size=world_size, store=local_launch.store(rank, world_size))
    try:
        result = train(model_config, config, train_data, test_data, Path(args.checkpoint_dir),
                       report if rank == 0 else None, initial_model,
                       DDPReplica(rank, world_size, device, config.seed))
    finally:
        dist.destroy_process_group()
    return result, device


def _append_event(path: Path, event: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(event) + "\n")
        handle.flush()


def exit_now(code: int) -> None:
    """End a worker without the interpreter's teardown: every file is closed by now
    (checkpoints are fsynced and renamed into place); the teardown with torch and gloo loaded
    is slow (docs/benchmarks.md)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """One torchrun worker of the command line's ``launch``: rank 0's progress goes to ``--events``."""
    args = parse_arguments(argv)
    rank, world_size = ranks()
    die_with_parent()  # torchrun starts each worker in a session of its own
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    events = Path(args.events) if args.events else None
    try:
        report = None
        if events is not None:
            report = lambda e: _append_event(events, {"event": "evaluation", **asdict(e)})  # noqa: E731
        result, device = run_worker(args, rank, world_size, report)
        if rank == 0 and events is not None:
            _append_event(events, {"event": "done", **done_record(result, device)})
    except BaseException as error:
        record_error(args.error_dir, rank, error)
        raise
    return 0


if __name__ == "__main__":
    exit_now(main())  # on an error it raises: the traceback goes to torchrun's log
