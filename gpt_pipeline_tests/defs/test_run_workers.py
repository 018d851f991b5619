"""Runs whose process is gone (``defs.run_workers``), end to end with `gpt-pipeline sweep`, a real
`dagster-daemon` and its runs' processes: Ctrl-C of the command cancels its runs; kill -9 of the
command, the daemon, its code server and the run leaves runs STARTED, which the next command of
the sweep settles and continues (the killed trial resumes from its checkpoint, nothing finished
runs again). In a file of its own so that ``make test``'s workers run it beside the long
``test_sweep_runner``."""

from __future__ import annotations

import copy

import dagster as dg
import yaml

from gpt_pipeline.cli import main
from gpt_pipeline_tests.defs.test_sweep_runner import _launched_by_the_daemon, _run_records
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG


def _processes_of(home: str) -> list[int]:
    """The processes whose DAGSTER_HOME is ``home``."""
    import os

    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"DAGSTER_HOME={home}".encode() in environ:
            found.append(int(pid))
    return found


def _checkpoint_at(data, variant: str, step: int, sweep) -> None:
    """Wait (asleep) until ``variant``'s training has a checkpoint at ``step`` or later."""
    import time

    folder = data / "checkpoints" / "trained_model" / variant
    give_up = time.monotonic() + 300
    while not [p for p in folder.glob("*/*.safetensors") if p.stem.isdigit() and int(p.stem) >= step]:
        assert sweep.poll() is None and time.monotonic() < give_up, sweep.communicate()[0][-3000:]
        time.sleep(0.2)


def _trainings(instance, variant: str) -> list:
    return instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey("trained_model"), asset_partitions=[variant]), limit=5).records


def test_ctrl_c_cancels_the_sweep_kill_9_leaves_it_to_continue_and_a_failing_variant_ranks(
        sweep_home, isolated_storage, capsys):
    """`gpt-pipeline sweep` with no daemon serving the instance starts one; Ctrl-C while its first
    trial trains (a listed variant queued behind it) cancels both runs, releases the trial and
    stops the daemon, exit 130 in a line. The sweep again: the trial resumes from its checkpoint
    and finishes, the listed variant fails alone; then, while the second trial trains, kill -9 of
    the command, the daemon, its code server and the run. The sweep once more continues that
    submission: the finished trial and the failed variant are not run again, the second trial
    resumes from its checkpoint, the study is complete, the champion is a trial."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import optuna

    from gpt_pipeline.defs.search import RELEASED
    from gpt_pipeline.defs.search_trials import Claims

    data, _ = isolated_storage
    home = str(sweep_home / "home")
    long = copy.deepcopy(TINY_RUN_CONFIG)
    long["ops"]["trained_model"]["config"].update(training_iterations=160, evaluation_interval=20)
    (sweep_home / "long.yaml").write_text(yaml.safe_dump(long))
    search = sweep_home / "resume.yaml"
    search.write_text(yaml.safe_dump({
        "name": "resume", "base": "long.yaml",
        # one step of training does not beat the unigram baseline: beats_unigram refuses it
        "variants": {"too_short": {"trained_model": {"training_iterations": 1, "evaluation_interval": 1}}},
        "search": {"n_trials": 2, "pruner": "none",
                   "space": {"trained_model.learning_rate": {"low": 0.002, "high": 0.004}}}}))
    command = [sys.executable, "-m", "gpt_pipeline", "sweep", "--sweep", str(search)]
    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _checkpoint_at(data, "resume-t000", 20, sweep)
    with dg.DagsterInstance.get() as instance:  # the pool holds one: the listed variant waits in the queue
        (queued,) = _run_records(instance, "too_short")
        assert queued.dagster_run.status == dg.DagsterRunStatus.QUEUED
    stopped = time.monotonic()
    sweep.send_signal(signal.SIGINT)  # Ctrl-C mid-training
    out, _ = sweep.communicate(timeout=120)
    assert time.monotonic() - stopped < 90
    assert sweep.returncode == 130 and out.splitlines()[-1] == "gpt-pipeline: interrupted", out[-2000:]
    assert "starting the Dagster daemon" in out and "Traceback" not in out, out[-2000:]
    assert not _processes_of(home)  # the daemon, its code server and the runs' processes all ended
    with dg.DagsterInstance.get() as instance:
        runs = {v: _run_records(instance, v) for v in ("resume-t000", "too_short")}
        for (record,) in runs.values():
            _launched_by_the_daemon(instance, record)
            assert record.dagster_run.status == dg.DagsterRunStatus.CANCELED
        assert runs["too_short"][0].start_time is None  # canceled in the queue, never started
    storage = f"sqlite:///{sweep_home / 'mlruns' / 'optuna.db'}"
    study = optuna.load_study(study_name="resume", storage=storage)
    assert [t.state.name for t in study.trials] == ["RUNNING"]  # left for the next search to resume
    assert Claims(storage).current(study.trials[0]._trial_id)[1] == {RELEASED: True}

    # Again, killed with everything it started while the second trial trains.
    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    _checkpoint_at(data, "resume-t001", 20, sweep)
    os.killpg(sweep.pid, signal.SIGKILL)
    for pid in _processes_of(home):
        os.kill(pid, signal.SIGKILL)
    first, _ = sweep.communicate(timeout=60)
    give_up = time.monotonic() + 30
    while _processes_of(home):
        assert time.monotonic() < give_up, "processes outlived SIGKILL"
        time.sleep(0.2)
    with dg.DagsterInstance.get() as instance:
        assert _trainings(instance, "resume-t000")[0].asset_materialization.metadata["resumed_from_step"].value >= 20
        (killed,) = [r for r in _run_records(instance, "resume-t001")]
        assert killed.dagster_run.status == dg.DagsterRunStatus.STARTED  # left so by kill -9
        before = {v: len(_run_records(instance, v)) for v in ("resume-t000", "too_short")}
    assert [t.state.name for t in optuna.load_study(study_name="resume", storage=storage).trials] == [
        "COMPLETE", "RUNNING"]

    capsys.readouterr()
    assert main(["sweep", "--sweep", str(search)]) == 0  # once more: the same submission, continued
    out = capsys.readouterr().out
    assert "continuing submission" in out and "starting the Dagster daemon" in out
    study = optuna.load_study(study_name="resume", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    with dg.DagsterInstance.get() as instance:
        assert {v: len(_run_records(instance, v)) for v in before} == before  # not run again
        assert len(_trainings(instance, "resume-t000")) == 1  # the finished trial: one training
        (resumed,) = _trainings(instance, "resume-t001")
        assert resumed.asset_materialization.metadata["resumed_from_step"].value >= 20
        assert instance.get_run_by_id(killed.dagster_run.run_id).tags["gpt_pipeline/worker_gone"]
        metadata = instance.get_latest_materialization_event(dg.AssetKey("champion_model")).asset_materialization.metadata
    out = first + out
    live = [line.split()[:5] for line in out[:out.rindex("rank  variant")].splitlines()]  # as each run ends
    assert ["rank", "variant", "state", "step", "test_bpc"] in live
    assert any(cells[1:4] == ["resume-t000", "trained", "160"] and float(cells[4]) > 0 for cells in live if len(cells) == 5)
    assert any(cells[1:4] == ["too_short", "failed", "-"] for cells in live if len(cells) >= 4)
    ranking = out[out.rindex("rank  variant"):]
    champion = metadata["champion"].value
    assert champion in ("resume-t000", "resume-t001")
    assert next(line for line in ranking.splitlines() if champion in line).startswith("1 ")
    short = next(line for line in ranking.splitlines() if "too_short" in line)
    assert short.startswith("- ") and "beats_unigram" in short and "failed" in short
    details = {r.data["variant"]: r.data for r in metadata["variants"].value.records}
    assert "beats_unigram" in details["too_short"]["overrides / note"]
