"""``sweep_sensor``: each submitted sweep (``defs.sweep_submissions``) becomes queued runs of
``train_gpt_job``, tagged with the submission; the instance's run queue and the pool ``training``
(``defs.local_instance``: one at a time until the user raises it, in the UI or with ``dagster
instance concurrency set training N``) decide how many run at once, never this code.

At each tick, for each active submission:

1. the data assets (``raw_stories``, ``bpe_tokenizer``, ``tokenized_dataset``) with the sweep's
   base, one run; nothing else until it succeeded (a failure ends the submission ``failed``);
2. each listed variant recorded and added as a partition (``defs.variants``), one run of
   ``trained_model``, ``sample_generations`` and ``model_evaluation`` on it; a failure fails alone;
3. a search's trials (``defs.search``): Optuna is asked for as many trials as the pool can run now
   (its limit less the trials queued or running), so sampling sees every finished result; a
   trial's run reports to the study as it trains (``search_trials.trial_reporter``) and the
   sensor tells the study how it ended, from its materialization; a trial whose run was canceled
   is requested again and resumes from its checkpoint; a finished trial is never run again;
4. once all have ended, ``champion_model`` and ``champion_evaluation``; the submission is ``done``.

A run whose process is gone (killed with the daemon: ``defs.run_workers``) is marked failed and
its step requested again, a trial resuming from its checkpoint (at most ``MAX_INTERRUPTIONS``
times a step, then it stays failed). Run keys (the submission, the step, the attempt) make a
request that a tick repeats a no-op.
"""

from __future__ import annotations

import dagster as dg

from gpt_pipeline.defs import sweep_submissions as submissions
from gpt_pipeline.defs.jobs import train_gpt_job
from gpt_pipeline.defs.run_workers import interrupted, settle_gone_runs
from gpt_pipeline.defs.sources import TRAINING_POOL
from gpt_pipeline.defs.sweep_daemon import touch_tick
from gpt_pipeline.defs.sweep_submissions import STEP_TAG, SUBMISSION_TAG, TRIAL_TAG, Submission
from gpt_pipeline.defs.sweeps import SHARED_ASSETS, Sweep, variant_record
from gpt_pipeline.defs.variants import save_variant

VARIANT_STEP = ("trained_model", "sample_generations", "model_evaluation")  # evaluated before the election
CHAMPION_STEP = ("champion_model", "champion_evaluation")
DATA, VARIANT, TRIAL, CHAMPION = "data", "variant", "trial", "champion"
MAX_INTERRUPTIONS = 3  # a step whose process went away this often stays failed (it may be what kills it)


def pool_limit(instance: dg.DagsterInstance) -> int:
    """How many runs of the pool ``training`` the run queue lets run at once. The pool's limit is
    written to the storage first (at its default) when it is not there yet: Dagster 1.13's run
    queue reads the storage's pools before it initializes a new one, so the first runs queued for
    a pool never written would all be launched at once."""
    storage = instance.event_log_storage
    if TRAINING_POOL not in {limit.name for limit in storage.get_pool_limits()} and (
            storage.get_pool_config().default_pool_limit is not None):
        storage.initialize_concurrency_limit_to_default(TRAINING_POOL)
    info = storage.get_concurrency_info(TRAINING_POOL)
    return max(1, info.limit if info.limit is not None else 1)


def _request(submission: Submission, step: str, assets, key: str, run_config: dict,
             partition: str | None = None, extra: dict | None = None) -> dg.RunRequest:
    names = set(assets)
    ops = {a: v for a, v in (run_config.get("ops") or {}).items() if a in names}
    return dg.RunRequest(
        run_key=f"{submission.id}:{key}", asset_selection=[dg.AssetKey(a) for a in assets], partition_key=partition,
        run_config={**{k: v for k, v in run_config.items() if k != "ops"}, "ops": ops},
        tags={SUBMISSION_TAG: submission.id, STEP_TAG: step, "gpt_pipeline/sweep": submission.sweep["name"],
              **(extra or {})})


def _latest(runs: list[dg.DagsterRun]) -> dg.DagsterRun | None:
    return runs[0] if runs else None  # get_runs gives the newest first


def _again(runs: list[dg.DagsterRun]) -> bool:
    """Whether a step's runs (newest first) ended with its process gone, and may run once more."""
    return bool(runs) and interrupted(runs[0]) and sum(map(interrupted, runs)) < MAX_INTERRUPTIONS


def _key(key: str, runs: list) -> str:
    return f"{key}:{len(runs)}" if runs else key  # the first attempt's key as before


def advance(instance: dg.DagsterInstance, submission: Submission, log=None) -> list[dg.RunRequest]:
    """The runs ``submission`` needs now (see the module docstring); ends it when all are done."""
    sweep = submission.parsed()
    runs = instance.get_runs(dg.RunsFilter(tags={SUBMISSION_TAG: submission.id}))
    if settle_gone_runs(instance, runs):
        runs = instance.get_runs(dg.RunsFilter(tags={SUBMISSION_TAG: submission.id}))
    steps: dict[str, list[dg.DagsterRun]] = {}
    for run in runs:
        steps.setdefault(run.tags.get(STEP_TAG, ""), []).append(run)
    user = submission.user_config
    data_runs = steps.get(DATA, [])
    data = _latest(data_runs)
    if data is None or _again(data_runs):
        base_ops = {a: {"config": dict(v)} for a, v in sweep.base.items() if a in SHARED_ASSETS}
        config = {**user, "ops": {**base_ops, **(user.get("ops") or {})}}
        return [_request(submission, DATA, SHARED_ASSETS, _key("data", data_runs), config)]
    if not data.is_finished:
        return []
    if data.status != dg.DagsterRunStatus.SUCCESS:
        submissions.set_state(instance, submission.id, submissions.FAILED, f"the data assets' run {data.run_id} failed")
        return []
    requests, waiting = [], False
    if sweep.search is not None:  # queued before the listed variants: Optuna asks as the pool frees
        requests, waiting = _trials(instance, submission, sweep, steps.get(TRIAL, []), log)
    variant_runs: dict[str, list[dg.DagsterRun]] = {}
    for run in steps.get(VARIANT, []):
        variant_runs.setdefault(run.tags.get("dagster/partition"), []).append(run)
    for variant in sweep.variants:
        previous = variant_runs.get(variant, [])
        if not previous or _again(previous):
            save_variant(instance, variant_record(sweep, variant))
            requests.append(_request(submission, VARIANT, VARIANT_STEP, _key(f"variant:{variant}", previous), user,
                                     variant))
            waiting = True
        elif not previous[0].is_finished:
            waiting = True
    if waiting:
        return requests
    champion_runs = steps.get(CHAMPION, [])
    champion = _latest(champion_runs)
    if champion is None or _again(champion_runs):
        return [_request(submission, CHAMPION, CHAMPION_STEP, _key("champion", champion_runs), user)]
    if champion.is_finished:
        submissions.set_state(instance, submission.id, submissions.DONE)
    return []


def _trials(instance: dg.DagsterInstance, submission: Submission, sweep: Sweep, runs: list[dg.DagsterRun],
            log) -> tuple[list[dg.RunRequest], bool]:
    """The search's requests now, and whether it is still going (trials in flight or to ask)."""
    import optuna

    from gpt_pipeline.defs.search import OWNER_ATTR, VARIANT_ATTR, Search

    search = Search(sweep, instance, log=log or (lambda line: None), owner={"submission": submission.id})
    by_number: dict[int, list[dg.DagsterRun]] = {}
    for run in runs:
        by_number.setdefault(int(run.tags[TRIAL_TAG]), []).append(run)
    running = {t.number: t for t in search.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
    requests, in_flight = [], 0

    def again(number: int, variant: str) -> None:
        attempt = len(by_number.get(number, []))
        requests.append(_request(submission, TRIAL, VARIANT_STEP, f"trial:{number}:{attempt}", submission.user_config,
                                 variant, {TRIAL_TAG: str(number)}))

    for number, trial_runs in by_number.items():
        run = trial_runs[0]
        frozen = running.get(number)
        if not run.is_finished:
            in_flight += 1
        elif frozen is not None and (run.status == dg.DagsterRunStatus.CANCELED or _again(trial_runs)):
            # interrupted: resumes from its checkpoint, once this process holds its claim (a trial
            # whose run's process was killed is claimed by that dead code server; see Search.adopt)
            if search.adopt(frozen):
                again(number, frozen.user_attrs[VARIANT_ATTR])
                in_flight += 1
        elif frozen is not None:
            trial = optuna.trial.Trial(search.study, frozen._trial_id)
            line = search.finish(number, frozen.user_attrs[VARIANT_ATTR], trial, None,
                                 run.status == dg.DagsterRunStatus.SUCCESS)
            if log:
                log(f"trial {number}: {line}; {search.best()}")
    for number, frozen in running.items():  # asked for this submission by a tick whose request was lost
        owner = frozen.user_attrs.get(OWNER_ATTR) or {}
        if number not in by_number and owner.get("submission") == submission.id and VARIANT_ATTR in frozen.user_attrs:
            again(number, frozen.user_attrs[VARIANT_ATTR])
            in_flight += 1
    free = pool_limit(instance) - in_flight
    exhausted = False
    while free > 0:
        claimed = search.claim(skip=set(by_number))  # an orphaned trial first (it resumes), else a new one
        if claimed is None:
            exhausted = True
            break
        number, variant, _ = claimed
        again(number, variant)
        by_number.setdefault(number, [])
        free -= 1
    return requests, not (exhausted and not requests and in_flight == 0)


@dg.sensor(
    name="sweep_sensor",
    job=train_gpt_job,
    minimum_interval_seconds=5,  # as often as Dagster's sensor daemon looks (every 5 s)
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Turns submitted sweeps (`gpt-pipeline sweep`, `sweep_job`) into queued runs: the data "
    "assets, then every variant and search trial (as many trials asked of Optuna as the pool "
    "`training` can run now), then champion_model.",
)
def sweep_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    touch_tick(context.instance)  # `gpt-pipeline sweep` sees that a daemon serves the instance
    requests = []
    for submission in submissions.active(context.instance):
        try:
            requests += advance(context.instance, submission, context.log.info)
        except ValueError as error:  # a variant or study that cannot be used: the submission fails, in a line
            submissions.set_state(context.instance, submission.id, submissions.FAILED, str(error).splitlines()[0])
    return dg.SensorResult(run_requests=requests)


SENSORS = [sweep_sensor]
