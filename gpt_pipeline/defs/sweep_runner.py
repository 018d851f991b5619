"""Run a whole sweep through Dagster: submit it, let the daemon run it, print the standings.

``run_sweep`` is what ``gpt-pipeline sweep`` calls. It checks the sweep file whole (a bad file is
refused in one line before anything is written), submits it (``defs.sweep_submissions``) to the
Dagster instance (``$DAGSTER_HOME``, else the project's ``dagster_home/``, as ``make`` uses),
makes sure a daemon serves the instance (``defs.sweep_daemon``: one already there, else a child),
and watches the submission's runs, which ``sweep_sensor`` requests (``defs.sweep_sensor``): the
data assets, every variant and search trial, then ``champion_model``. The run queue and the pool
``training`` decide how many train at once. As each variant or trial run ends, the live
standings; at the end, the ranking.

Killed instead (``kill -9`` of the command, the daemon and the runs), the submission stays
active with its runs STARTED: the next ``gpt-pipeline sweep`` of that file continues it
(``_take_over``: its finished runs stand, its runs whose process is gone run again, a trial
from its checkpoint: ``defs.run_workers``); another file of the same sweep name cancels it first,
as Ctrl-C would have.

Ctrl-C or SIGTERM (``cli._interruptible``) cancels the sweep: the submission is marked
cancelled (the sensor requests nothing more), its queued runs are canceled and its started runs
terminated through the run coordinator (they end CANCELED; a trial keeps its checkpoint and is
released for the next search to resume), then the daemon child is stopped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from gpt_pipeline.defs import sweep_submissions as submissions
from gpt_pipeline.defs.champion import current_data_digest, standings
from gpt_pipeline.defs.local_instance import instance_home
from gpt_pipeline.defs.run_workers import settle_gone_runs
from gpt_pipeline.defs.sweep_daemon import serving
from gpt_pipeline.defs.sweep_sensor import CHAMPION, DATA, pool_limit
from gpt_pipeline.defs.sweep_submissions import STEP_TAG, SUBMISSION_TAG, TRIAL_TAG
from gpt_pipeline.storage import exclusive
from gpt_pipeline.tracking.tracker import _process_tags
from gpt_pipeline.training.metrics import figure_text

POLL_SECONDS = 1.0
CANCEL_SECONDS = 60.0  # how long canceled runs have to end before the command gives up on them


def _open_instance() -> tuple[dg.DagsterInstance, Path]:
    home = instance_home()
    with exclusive(str(home)):  # a new home's SQLite storage is created once (see cli._materialize)
        return dg.DagsterInstance.from_config(str(home)), home


def _runs(instance: dg.DagsterInstance, submission_id: str) -> list[dg.DagsterRun]:
    return instance.get_runs(dg.RunsFilter(tags={SUBMISSION_TAG: submission_id}))


def _name(run: dg.DagsterRun) -> str:
    step = run.tags.get(STEP_TAG)
    if step == DATA:
        return "data assets"
    if step == CHAMPION:
        return "champion_model"
    trial = run.tags.get(TRIAL_TAG)
    return f"{'trial ' + trial + ' ' if trial else 'variant '}{run.tags.get('dagster/partition')}"


def _failure(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    from gpt_pipeline.defs.checks import failure_line

    if run.status == dg.DagsterRunStatus.CANCELED:
        return "canceled"
    for record in instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records:
        error = record.event_log_entry.dagster_event.step_failure_data.error
        if error is not None:
            return failure_line(error)
    return "see the run's logs in Dagster"


def run_sweep(sweep_file: str | os.PathLike, base_config: str | os.PathLike | None = None,
              log: Callable[[str], None] = print) -> tuple[list[dict], dict[str, float]]:
    """Submit and watch the sweep in ``sweep_file`` (see the module docstring); return the
    standings of every variant of the instance (``defs.champion.standings``) and wall times."""
    if base_config is not None and not Path(base_config).is_file():
        raise FileNotFoundError(f"run config {str(base_config)!r} does not exist")
    sweep, content, user = submissions.check_sweep(sweep_file, base_config)
    instance, home = _open_instance()
    limit = pool_limit(instance)
    started = time.monotonic()
    with serving(instance, home, log) as daemon:
        submission = _take_over(instance, content, user, log)
        if submission is None:
            submission = submissions.submit(instance, content, user, _process_tags())
        log(f"sweep {sweep.name}: {len(sweep.variants)} variants"
            + (f" and a search ({sweep.search.n_trials or 'until'} trials"
               f"{' or ' + str(sweep.search.cpu_seconds) + ' CPU s' if sweep.search.cpu_seconds else ''})" if sweep.search else "")
            + f" submitted as {submission.id}; the pool 'training' runs {limit} at a time")
        try:
            times, failed = _watch(instance, submission.id, daemon, log)
        except BaseException:  # Ctrl-C, SIGTERM, a daemon that stopped: nothing of the sweep left queued
            cancel(instance, submission.id)
            raise
    times["total"] = time.monotonic() - started
    final = submissions.read(instance, submission.id)
    if final.state == submissions.FAILED:
        raise RuntimeError(f"sweep {sweep.name}: {final.note}")
    return _noted(standings(instance, current_data_digest(instance)), failed), times


def _take_over(instance: dg.DagsterInstance, content: dict, user: dict, log) -> submissions.Submission | None:
    """The active submission of this very sweep (content and run config) left by a command that
    was killed, now this command's: the sensor goes on with it. Other such submissions of the
    sweep's name are cancelled, as Ctrl-C would have (their trials released for this one)."""
    with exclusive(str(Path(instance.root_directory) / "sweeps")):  # two commands: one takes it
        left = submissions.orphans(instance, content["name"])
        same = next((s for s in left if s.sweep == content and s.user_config == user), None)
        if same is not None:
            same.owner = _process_tags()
            submissions.save(instance, same)
    for other in left:
        if other is not same:
            log(f"cancelling submission {other.id} of sweep {content['name']}: its command was killed")
            cancel(instance, other.id)
    if same is not None:
        log(f"continuing submission {same.id}, left by a command that was killed: its finished runs stand")
    return same


def _watch(instance, submission_id: str, daemon, log) -> tuple[dict[str, float], dict[str, str]]:
    """Wait for the submission to end, asleep between looks; a line per run that ends, the live
    standings after each variant or trial."""
    seen: set[str] = set()
    failed: dict[str, str] = {}
    ours: list[str] = []
    times: dict[str, float] = {"data": 0.0, "variants": 0.0, "champion": 0.0}
    while True:
        daemon.check()
        state = submissions.read(instance, submission_id).state
        for run in reversed(_runs(instance, submission_id)):
            if run.run_id in seen or not run.is_finished:
                continue
            seen.add(run.run_id)
            record = instance.get_run_record_by_id(run.run_id)
            seconds = (record.end_time or 0) - (record.start_time or record.end_time or 0)
            step = run.tags.get(STEP_TAG)
            times[step if step in (DATA, CHAMPION) else "variants"] += seconds
            ok = run.status == dg.DagsterRunStatus.SUCCESS
            reason = "" if ok else _failure(instance, run)
            log(f"{_name(run)}: {'done' if ok else 'FAILED'} in {seconds:.1f} s" + (f": {reason}" if reason else ""))
            variant = run.tags.get("dagster/partition")
            if variant and step not in (DATA, CHAMPION):
                if not ok:
                    failed[variant] = reason
                if variant not in ours:
                    ours.append(variant)
                log(live_table(_noted(standings(instance, current_data_digest(instance), ours), failed)))
        if state != submissions.ACTIVE and all(run.is_finished for run in _runs(instance, submission_id)):
            return times, failed
        time.sleep(POLL_SECONDS)


def cancel(instance: dg.DagsterInstance, submission_id: str) -> None:
    """Stop a submission: no more requests, its queued runs canceled and its started runs
    terminated (through the instance's run coordinator), its search trials released."""
    submissions.set_state(instance, submission_id, submissions.CANCELLED)
    deadline = time.monotonic() + CANCEL_SECONDS
    asked: set[str] = set()
    quiet_since = None
    while time.monotonic() < deadline:
        if settle_gone_runs(instance, _runs(instance, submission_id)):  # killed before: nothing to terminate
            continue
        live = [run for run in _runs(instance, submission_id) if not run.is_finished]
        for run in live:
            if run.run_id not in asked or run.status == dg.DagsterRunStatus.QUEUED:
                asked.add(run.run_id)
                instance.run_coordinator.cancel_run(run.run_id)
        if live:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 3 * POLL_SECONDS:  # a tick under way may still request one
            break
        time.sleep(POLL_SECONDS)
    _release_trials(instance, submission_id)


def _release_trials(instance: dg.DagsterInstance, submission_id: str) -> None:
    """The submission's unfinished trials given up: the next search takes them at once and
    resumes them from their checkpoints."""
    submission = submissions.read(instance, submission_id)
    sweep = submission.parsed() if submission else None
    if sweep is None or sweep.search is None:
        return
    import optuna

    from gpt_pipeline.defs.search import OWNER_ATTR, RELEASED
    from gpt_pipeline.defs.search_trials import Claims, open_study

    storage = sweep.search.storage_url()
    claims = Claims(storage)
    for trial in open_study(sweep.name, storage).get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        current = claims.current(trial._trial_id)
        owner = current[1] if current else trial.user_attrs.get(OWNER_ATTR) or {}
        if owner.get("submission") == submission_id:
            claims.take(trial._trial_id, (current[0] if current else -1) + 1, {RELEASED: True})


def _noted(rows: list[dict], failed: dict[str, str]) -> list[dict]:
    """``rows`` with the failure line of each variant that failed in this sweep as its note."""
    for row in rows:
        if row["variant"] in failed and row["rank"] is None and not row["note"].startswith("failed"):
            row["note"] = f"failed: {failed[row['variant']]}"
    return rows


def ranking_table(rows: list[dict]) -> str:
    """The standings as a text table: rank, variant, bits per character, test loss, tokens/s,
    training seconds, overrides or why a variant has no rank."""
    header = ["rank", "variant", "test_bpc", "test_loss", "tokens/s", "train_s", "overrides / note"]
    body = []
    for row in rows:
        def number(key):
            return figure_text(key, row.get(key)) if row["rank"] else "-"
        body.append([str(row["rank"] or "-"), row["variant"], number("test_bits_per_character"),
                     number("test_loss"), number("tokens_per_second"),
                     number("training_seconds"), row["note"] or row["overrides"]])
    return _text_table(header, body)


def live_table(rows: list[dict]) -> str:
    """The standings while a sweep runs: rank, variant, state (trained, pruned, failed, ...), the
    step its training stopped at and its last test bits per character."""
    body = []
    for row in rows:
        pruned = row["note"].startswith("pruned")
        state = "trained" if row["rank"] else "pruned" if pruned else row["note"].split(" (")[0].split(":")[0]
        step = row["pruned_at_step"] if pruned else row.get("steps")
        bpc = row.get("test_bits_per_character")
        body.append([str(row["rank"] or "-"), row["variant"], state, "-" if step is None else str(step),
                     "-" if bpc is None else figure_text("test_bits_per_character", bpc)])
    return _text_table(["rank", "variant", "state", "step", "test_bpc"], body)


def _text_table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in [header, *body])
