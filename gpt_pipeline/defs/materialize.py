"""One Dagster run of the project's job in this process: what ``gpt-pipeline materialize`` (so
``make run``) runs. A sweep's runs are queued and launched by the daemon instead
(``defs.sweep_sensor``), each in a process of its own.

``materialize_run`` returns the run's result; a bad run config is a ``ValueError`` in one line, a
failed run a ``RuntimeError`` naming its first failed step's reason, and an interrupted run
(Ctrl-C, or SIGTERM where the command made it one) a ``KeyboardInterrupt`` again: Dagster ends
the run FAILURE and returns, the caller stops.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import dagster as dg

from gpt_pipeline.defs.checks import failure_line
from gpt_pipeline.defs.console import reader_logger
from gpt_pipeline.defs.pool_turn import training_turn
from gpt_pipeline.defs.sweeps import VARIANT_ASSETS
from gpt_pipeline.defs.variants import DEFAULT_VARIANT, require_variant

JOB = "train_gpt_job"  # the job of every asset (``definitions``), which the callers resolve
_INTERRUPTS = ("KeyboardInterrupt", "DagsterExecutionInterruptedError")


def _config_problem(error) -> str:
    """One Dagster config error (a wrong type, an unknown field, a value not among the choices)
    in a line."""
    return error.message.split(". Expected")[0]


@contextlib.contextmanager
def sigterm_kept() -> Iterator[None]:
    """Put SIGTERM's disposition back as it was after the block. Dagster's in-process run leaves
    SIGTERM with SIGINT's handler (mapped "for k8s"); in a background process SIGINT is ignored, so
    SIGTERM would be ignored from then on, by this process and every process it starts (a
    ``terminate()`` of Dagster's own log-tailing processes then waits 30 s)."""
    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        yield
    finally:
        if previous is not None:  # None: not set from Python, or not the main thread
            signal.signal(signal.SIGTERM, previous)


def with_console(job: dg.JobDefinition) -> dg.JobDefinition:
    """``job`` with the terminal's logger (``defs.console``) as its console logger."""
    return job.with_logger_defs({"console": reader_logger})


def materialize_run(instance: dg.DagsterInstance, job: dg.JobDefinition, run_config: dict[str, Any],
                    select: str | None = None, partition: str | None = None, quiet: bool = False,
                    config_name: str | None = None, log=print) -> dg.ExecuteInProcessResult:
    """Run ``job`` (``with_console``; only the comma-separated assets ``select``, the others read
    as stored) on ``partition`` (default ``default`` when a variant asset runs) in ``instance``;
    see the module docstring for what it raises. ``config_name`` names the run config in errors."""
    selection, names = None, set()
    if select:
        selection = [dg.AssetKey(name.strip()) for name in select.split(",") if name.strip()]
        names = {key.to_user_string() for key in selection}
        ops = run_config.get("ops") or {}
        run_config = {**run_config, "ops": {name: ops[name] for name in ops if name in names}}
    if partition is None and (selection is None or names & set(VARIANT_ASSETS)):
        partition = DEFAULT_VARIANT  # what `make run` trains: added as a partition beside every other
    if partition is not None:
        require_variant(instance, partition)
    # Headlines, progress and warnings on the terminal (defs.console); every event in the run's event log
    run_config = {**run_config, "loggers": {"console": {"config": {"log_level": "WARNING" if quiet else "INFO"}}}}
    run_id = str(uuid.uuid4())  # Dagster's run ids are UUID4s
    try:
        with training_turn(instance, job, selection, run_id, log), sigterm_kept():  # asleep (Dagster's executor spins)
            result = job.execute_in_process(run_config=run_config, instance=instance, raise_on_error=False,
                                            asset_selection=selection, partition_key=partition, run_id=run_id)
    except dg.DagsterInvalidConfigError as exc:
        problems = "; ".join(_config_problem(error) for error in exc.errors) or str(exc)
        raise ValueError(f"run config {config_name!r} is invalid: {problems}") from None
    if not result.success:
        failure = next((e for e in result.all_events if e.is_step_failure), None)
        error = failure.step_failure_data.error if failure else None
        if error is not None and error.cls_name in _INTERRUPTS:
            raise KeyboardInterrupt  # Dagster ended the run FAILURE and returned: the caller stops too
        reason = failure_line(error) if error is not None else "see the Dagster logs"
        raise RuntimeError(f"job {job.name} failed: {reason}")
    return result
