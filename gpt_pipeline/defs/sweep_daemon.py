"""The Dagster daemon that serves a sweep: its sensors (``sweep_sensor``) and its run queue.

``serving(instance)``: when a daemon already beats for the instance (``dagster dev``, a
deployment's daemon), nothing to do; otherwise ``dagster-daemon run`` for the project's code
location (``workspace.yaml``) as a child, with ``DAGSTER_HOME`` the instance's folder, in a
session of its own (a Ctrl-C in the terminal reaches the command, which cancels its runs through
the daemon's code server first), stopped when the ``with`` block ends. Its log is
``<instance>/sweeps/daemon.log`` (Dagster keeps ``logs/`` for itself).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from gpt_pipeline.storage import atomic_write_text, project_root
from gpt_pipeline.tracking.tracker import _process_alive, _process_tags

SERVING = ("SENSOR", "QUEUED_RUN_COORDINATOR")  # the daemons a sweep needs
FRESH_SECONDS = 75.0  # Dagster's daemons beat every 30 s
TICK_SECONDS = 60.0  # sweep_sensor ticks every 2-5 s where a daemon serves it, later on a busy machine
STOPPED_SECONDS = 180.0  # no tick for this long with our own daemon running: the sensor was stopped
STOP_GRACE = 20.0
START_SECONDS = 240.0  # a daemon child's first sensor tick comes within this, even on a busy machine


def tick_stamp(instance: dg.DagsterInstance) -> Path:
    """The file ``sweep_sensor`` writes at each tick, naming the process that ticked (the daemon's
    code server): a daemon that stopped leaves heartbeats that look fresh for a minute, a sensor
    that stopped ticking does not, and a killed one names a process that is gone."""
    return Path(instance.root_directory) / "sweeps" / "sensor-tick"


def touch_tick(instance: dg.DagsterInstance) -> None:
    stamp = tick_stamp(instance)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stamp, json.dumps(_process_tags(), sort_keys=True))


def _ticker_alive(stamp: Path) -> bool:
    try:
        ticker = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(ticker, dict) and _process_alive(ticker)


def daemon_alive(instance: dg.DagsterInstance) -> bool:
    """Whether a daemon serves ``instance``: its sensor and run-queue daemons beat, and
    ``sweep_sensor`` ticked lately in a process still there."""
    beats = instance.get_daemon_heartbeats()
    now = time.time()
    stamp = tick_stamp(instance)
    return (all(kind in beats and now - beats[kind].timestamp < FRESH_SECONDS for kind in SERVING)
            and stamp.is_file() and now - stamp.stat().st_mtime < TICK_SECONDS and _ticker_alive(stamp))


class DaemonChild:
    """``dagster-daemon run`` in a process (and session) of its own."""

    def __init__(self, home: Path):
        (home / "sweeps").mkdir(parents=True, exist_ok=True)
        self.log_path = home / "sweeps" / "daemon.log"
        executable = Path(sys.executable).parent / "dagster-daemon"
        # its runs divide the cores by the pool's limit (``training_run.trainings_at_once``)
        env = {**os.environ, "DAGSTER_HOME": str(home)}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(executable), "run", "-w", str(project_root() / "workspace.yaml")], cwd=project_root(),
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def check(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"the Dagster daemon stopped (exit status {self.process.returncode}); its log: "
                               f"{self.log_path.parent.name}/{self.log_path.name} in the instance's folder")

    def stop(self) -> None:
        """SIGTERM to the daemon and what it started (its code server, in its session), then
        SIGKILL to what is left after ``STOP_GRACE`` seconds."""
        group = self.process.pid  # its own session and process group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=STOP_GRACE)
        while _group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.process.wait(timeout=10)
        (self.log_path.parent / "sensor-tick").unlink(missing_ok=True)  # its ticks are over: the next sweep sees so at once


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


class Serving:
    """The daemon of a sweep: the one serving the instance, else (or once it stops) a child."""

    def __init__(self, instance: dg.DagsterInstance, home: Path, log):
        self.instance, self.home, self.log, self.child = instance, home, log, None
        self.check()

    def check(self) -> None:
        """A child that stopped: ``RuntimeError``; no daemon serving the instance: a child started."""
        if self.child is not None:
            self.child.check()
            stamp = tick_stamp(self.instance)
            if time.monotonic() - self.started > START_SECONDS and (
                    not stamp.is_file() or time.time() - stamp.stat().st_mtime > STOPPED_SECONDS):
                raise RuntimeError("sweep_sensor does not tick: it was stopped in this instance; start it in the "
                                   "Dagster UI (Automation) or with `dagster sensor start sweep_sensor`")
        elif not daemon_alive(self.instance):
            self.log(f"starting the Dagster daemon for this instance (its log: {self.home.name}/sweeps/daemon.log)")
            self.child, self.started = DaemonChild(self.home), time.monotonic()

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()


@contextlib.contextmanager
def serving(instance: dg.DagsterInstance, home: Path, log=print) -> Iterator[Serving]:
    """A daemon serving ``instance`` for the ``with`` block (``Serving``); a child started for it
    is stopped at the end."""
    daemon = Serving(instance, home, log)
    try:
        yield daemon
    finally:
        daemon.stop()
