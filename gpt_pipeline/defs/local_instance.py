"""The project's local Dagster instance: ``$DAGSTER_HOME``, else ``dagster_home/`` (what ``make``
uses), and the one ``dagster.yaml`` it starts with.

Its pools take one run at a time (``default_limit: 1``), counted per run (``granularity: run``):
a launched run (UI, schedule, sensor, backfill) whose pool is full waits in the run queue, where
the daemon holds it without a process; with the per-step default, Dagster 1.13's executor would
start the run and spin a core while its step waits (``defs.pool_turn``). Runs executed in process
(``gpt-pipeline materialize``) wait in ``defs.pool_turn``, asleep, for the same pool. The run
queue looks every second (Dagster's default: 5 s), so a sweep's next run starts soon after the
one before it ends.

    python -m gpt_pipeline.defs.local_instance dagster_home/dagster.yaml   # the Makefile's recipe
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gpt_pipeline.storage import atomic_write_text, project_root

LOCAL_INSTANCE_YAML = """\
telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1
    granularity: run
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
"""


def write_instance_yaml(path: Path) -> None:
    """``LOCAL_INSTANCE_YAML`` at ``path`` (its folder created), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, LOCAL_INSTANCE_YAML)


def instance_home() -> Path:
    """``$DAGSTER_HOME``, else the project's ``dagster_home``; its dagster.yaml written as ``make``
    writes it when missing."""
    home = Path(os.environ.get("DAGSTER_HOME") or project_root() / "dagster_home")
    if not (home / "dagster.yaml").is_file():
        write_instance_yaml(home / "dagster.yaml")
    return home


if __name__ == "__main__":
    write_instance_yaml(Path(sys.argv[1]))
