"""Two ``make run`` at once in one clone: does the one waiting for the ``training`` pool sleep?

``make run`` trains through the Dagster pool ``training`` (one training at a time on a machine,
dagster.yaml's ``default_limit: 1``). Two started together must take turns; the one waiting
should cost nothing, so that both finish within the sum of their times alone (plus 10%).
Before ``defs.pool_turn``, Dagster's in-process executor spun while it waited (one core flat out),
and two runs took 627 s and 640 s instead of ~118 s each.

Runs ``make <target>`` twice alone, then twice at once, in the clone ``--clone`` (default: this
repository) with a fresh DAGSTER_HOME (the recipe writes its dagster.yaml), each alone run and the
pair after ``make clean`` (so that every alone run trains from scratch; of the two at once, the one
that waits finds the other's finished checkpoint and resumes from it), and prints each run's
wall time and CPU time (the run's whole process tree, ``os.wait4``), then the verdict: the later
of the two at once against the sum of the two alone x 1.1.

    .venv/bin/python benchmarks/bench_pool_wait.py [--clone .] [--target run]
    .venv/bin/python benchmarks/bench_pool_wait.py --config gpt_pipeline_tests/tiny_config.yaml  # quick

With ``--config FILE`` each run is ``gpt-pipeline materialize --config FILE`` (what ``make run``
runs, with another config) under the same fresh DAGSTER_HOME and its pool limit of 1: minutes
instead of ~8 x 118 s, for a machine that others share.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from gpt_pipeline.defs.local_instance import LOCAL_INSTANCE_YAML


def _start(clone: Path, command: list[str], home: str, log: Path) -> tuple[subprocess.Popen, float]:
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=clone, env={**os.environ, "DAGSTER_HOME": home},
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return process, time.monotonic()


def _finish(process: subprocess.Popen, started: float, log: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the run and every process it waited for); fails loudly."""
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise SystemExit(f"make failed ({process.returncode}); {log} ends with:\n{tail}")
    return wall, usage.ru_utime + usage.ru_stime


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clone", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--target", default="run", help="make target (default: run)")
    parser.add_argument("--config", type=Path, help="run `gpt-pipeline materialize --config FILE` instead of make")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_pool_wait_") as tmp:
        home = str(Path(tmp) / "dagster_home")
        command = ["make", args.target]
        if args.config:
            Path(home).mkdir()
            (Path(home) / "dagster.yaml").write_text(  # what the Makefile writes
                LOCAL_INSTANCE_YAML)
            command = [str(args.clone / ".venv/bin/python"), "-m", "gpt_pipeline", "materialize", "--config",
                       str(args.config.resolve()), "--quiet"]
        alone = []
        clean = lambda: subprocess.run(["make", "clean"], cwd=args.clone, check=True, capture_output=True)
        print(f"CPU: {_cpu_name()}; {os.cpu_count()} cores", flush=True)
        for index in range(2):
            clean()
            log = Path(tmp) / f"alone{index}.log"
            alone.append(_finish(*_start(args.clone, command, home, log), log))
            print(f"alone {index + 1}: {alone[-1][0]:7.1f} s wall, {alone[-1][1]:7.1f} s CPU", flush=True)
        clean()
        logs = [Path(tmp) / f"together{index}.log" for index in range(2)]
        started = [_start(args.clone, command, home, log) for log in logs]
        together = [_finish(*run, log) for run, log in zip(started, logs)]
        for index, (wall, cpu) in enumerate(together):
            print(f"at once {index + 1}: {wall:7.1f} s wall, {cpu:7.1f} s CPU", flush=True)
        bound = 1.1 * sum(wall for wall, _ in alone)
        later = max(wall for wall, _ in together)
        print(f"the later of the two at once: {later:.1f} s; sum alone x 1.1: {bound:.1f} s -> "
              f"{'OK' if later <= bound else 'SLOWER'}")


if __name__ == "__main__":
    main()
