"""Runs whose process is gone.

A run launched by Dagster's default run launcher is a process on the machine of the code server
that launched it. Killed with everything else (``kill -9`` of the daemon and its runs, a crash),
it stays STARTED (or CANCELING) in the instance for ever, holding its pool's slot: Dagster's run
monitoring cannot tell, as the default launcher does not check its workers' health
(``supports_check_run_worker_health`` is False). ``settle_gone_runs`` does, for a sweep's runs:
a run whose worker (the pid of Dagster's "Started process for run" event) is no longer there is
marked failed and tagged ``WORKER_GONE_TAG`` (a CANCELING one canceled), so that the pool frees
and ``sweep_sensor`` runs its step again (a trial resumes from its checkpoint). A run whose
process was killed while its code server lived was failed by that server ("Run execution
process for ... was terminated by signal 9"): it is tagged alike.

It judges only runs of the default launcher whose code server (the run's ``.dagster/grpc_info``
tag) is on this machine: their processes are this machine's (one daemon serves an instance, as
Dagster requires).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import dagster as dg

WORKER_GONE_TAG = "gpt_pipeline/worker_gone"  # its value: the pid that was the run's process
_STARTED_PROCESS = "Started process for run"
GRPC_INFO_TAG = ".dagster/grpc_info"  # where DefaultRunLauncher launched the run: host and port, or socket
_CRASHED = "Run execution process for "  # the code server's line for a run whose process died


def _engine_lines(instance: dg.DagsterInstance, run_id: str):
    return [r.event_log_entry for r in instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records]


def _worker_pid(instance: dg.DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """The pid of the run's process and when Dagster recorded it, None when not recorded yet."""
    for entry in reversed(_engine_lines(instance, run_id)):
        if entry.message.startswith(_STARTED_PROCESS):
            pid = entry.dagster_event.engine_event_data.metadata.get("pid")
            if pid is not None and str(pid.value).isdigit():
                return int(pid.value), entry.timestamp
    return None


def _alive_since(pid: int, recorded: float) -> bool:
    """Whether process ``pid`` exists and started before ``recorded`` (else the pid was reused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: the process's start, in clock ticks after boot
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return True  # cannot tell: alive
    return boot + ticks / os.sysconf("SC_CLK_TCK") <= recorded + 2.0  # btime is whole seconds


def _launched_here(run: dg.DagsterRun) -> bool:
    """Whether the run's code server (so its process) is on this machine."""
    try:
        server = json.loads(run.tags.get(GRPC_INFO_TAG) or "null")
    except ValueError:
        return False
    if not isinstance(server, dict):
        return False
    return bool(server.get("socket")) or server.get("host") in ("localhost", "127.0.0.1", "::1", socket.gethostname())


def worker_gone(instance: dg.DagsterInstance, run: dg.DagsterRun) -> int | None:
    """The pid of ``run``'s process when the run is in progress and that process is gone."""
    if run.status not in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING) or not isinstance(
            instance.run_launcher, dg.DefaultRunLauncher) or not _launched_here(run):
        return None
    found = _worker_pid(instance, run.run_id)
    if found is None or _alive_since(*found):
        return None
    return found[0]


def settle_gone_runs(instance: dg.DagsterInstance, runs: list[dg.DagsterRun]) -> bool:
    """Mark each of ``runs`` whose process is gone as ended (see the module docstring); whether
    any was."""
    settled = False
    for run in runs:
        if run.status == dg.DagsterRunStatus.FAILURE and WORKER_GONE_TAG not in run.tags and any(
                line.message.startswith(_CRASHED + run.run_id) for line in _engine_lines(instance, run.run_id)):
            instance.add_run_tags(run.run_id, {WORKER_GONE_TAG: "ended by a signal or crash"})
            settled = True
            continue
        pid = worker_gone(instance, run)
        if pid is None:
            continue
        settled = True
        message = f"the run's process (pid {pid}) is gone: killed or crashed"
        if run.status == dg.DagsterRunStatus.CANCELING:
            instance.report_run_canceled(run, message)
            continue
        instance.add_run_tags(run.run_id, {WORKER_GONE_TAG: str(pid)})
        instance.report_run_failed(instance.get_run_by_id(run.run_id), message)
    return settled


def interrupted(run: dg.DagsterRun) -> bool:
    """Whether ``run`` ended because its process went away (``settle_gone_runs``)."""
    return run.is_finished and WORKER_GONE_TAG in run.tags
