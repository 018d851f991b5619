"""The training worker that talks to Dagster through Dagster Pipes.

``python -m gpt_pipeline.defs.pipes_worker --dataset ... --model-config ... --train-config ...
--checkpoint-dir ... --error-dir ...`` (one process), or the same module under torchrun (one
per process, ``gpt_pipeline.training.torchrun.worker_command`` builds either). The training is
the core's (``gpt_pipeline.training.distributed.run_worker``); this module adds the Pipes side,
in the process of global rank 0 only (the others train and stay quiet):

- each evaluation: one Pipes log line (the Dagster event log shows it as it comes) and a custom
  message ``{"evaluation": {step, train_loss, test_loss, tokens_per_second, ...}}`` that the
  orchestrating asset logs to MLflow (``gpt_pipeline.defs.launchers``);
- at the end: ``report_asset_materialization`` with where the final checkpoint is and the run's
  figures (steps, resumed_from_step, seconds, tokens/s, device).

A node other than node 0 (``node_rank`` > 0 with ``nnodes`` > 1) holds no rank 0 and opens no
Pipes session: start it with the same command outside Dagster. Errors are recorded for the
orchestrator (``record_error``) and raised, so that Pipes reports them too.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

from dagster_pipes import PipesContext, open_dagster_pipes

from gpt_pipeline.training.progress import progress_line
from gpt_pipeline.training.distributed import done_record, exit_now, parse_arguments, ranks, run_worker
from gpt_pipeline.training.loop import Evaluation
from gpt_pipeline.training.torchrun import die_with_parent, record_error

PROG = "python -m gpt_pipeline.defs.pipes_worker"


def reporter(pipes: PipesContext, total_steps: int):
    def report(evaluation: Evaluation) -> None:
        pipes.log.info(progress_line(evaluation, total_steps))
        pipes.report_custom_message({"evaluation": asdict(evaluation)})

    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv, PROG)
    rank, world_size = ranks()
    die_with_parent()
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    try:
        if rank != 0:
            run_worker(args, rank, world_size, None)
            return 0
        with open_dagster_pipes() as pipes:
            total = int(json.loads(args.train_config)["training_iterations"])
            result, device = run_worker(args, rank, world_size, reporter(pipes, total))
            done = done_record(result, device)
            pipes.report_asset_materialization(metadata={
                "checkpoint": {"raw_value": done["checkpoint"], "type": "path"},
                "steps": {"raw_value": done["steps"], "type": "int"},
                "resumed_from_step": {"raw_value": -1 if done["resumed_from"] is None else done["resumed_from"],
                                      "type": "int"},
                "training_seconds": {"raw_value": done["seconds"], "type": "float"},
                "tokens_per_second": {"raw_value": done["tokens_per_second"] or 0.0, "type": "float"},
                "device": {"raw_value": done["device"], "type": "text"},
            })
    except BaseException as error:
        record_error(args.error_dir, rank, error)
        raise
    return 0


if __name__ == "__main__":
    exit_now(main())
