"""Waiting for a turn in a Dagster pool asleep, before a run executes in process.

Dagster 1.13's executor spins while a step waits for a pool slot:
``InstanceConcurrencyContext.interval_to_next_pending_claim_check`` returns ``min([0, ...])``,
never more than 0, so the executor's ``sleep_til_ready`` never sleeps and its loop runs flat out
(one core, 85-117% CPU in ``ps``) until the slot frees. The project's instance therefore counts
pools per run (``defs.local_instance``: ``granularity: run``): a launched run waits in the run
queue, with no process, until no run in progress uses its pool; the executor then checks no pool.

Runs executed in process (``gpt-pipeline materialize``, so ``make run``) never
pass the run queue. ``pool_turn`` makes them take turns, sleeping between tries: it claims the
step's slot through Dagster's own storage calls and pending-steps queue (first come, first
served; the UI shows the claim) and, where pools are counted per run, also waits while the runs
in progress that use the pool (launched ones hold no slot) fill its limit, as the run queue
counts them. Where pools are counted per step, Dagster's own claim for that run and step finds
the slot already held and goes on at once. The slot is freed when the run is over, however it
ended.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import dagster as dg

from gpt_pipeline.defs.sources import TRAINING_POOL

TRAINING_STEP = "trained_model"  # the step of the pool TRAINING_POOL (the asset's op)
FIRST_WAIT, LONGEST_WAIT = 0.25, 2.0
ACTIVE = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]  # seconds between tries: quick turns, then a try every 2 s


@contextlib.contextmanager
def pool_turn(instance: dg.DagsterInstance, pool: str, run_id: str, step_key: str,
              log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the slot of ``pool`` for step ``step_key`` of run ``run_id`` for the ``with`` block,
    sleeping until it is free; nothing to do where the storage has no pools or ``pool`` has no
    limit (Dagster does not limit it either)."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        yield
        return
    limits = {limit.name: limit for limit in storage.get_pool_limits()}
    if pool not in limits:
        if storage.get_pool_config().default_pool_limit is None:
            yield
            return
        storage.initialize_concurrency_limit_to_default(pool)  # as Dagster does on a first claim
    try:
        per_run = _counted_per_run(instance)
        wait, told = FIRST_WAIT, False
        while not (storage.claim_concurrency_slot(pool, run_id, step_key).is_claimed
                   and (not per_run or _runs_using(instance, pool, run_id) < _limit(storage, pool))):
            if log is not None and not told:
                log(f"waiting for a free slot in the Dagster pool {pool!r} (another run holds it)")
                told = True
            time.sleep(wait)
            wait = min(LONGEST_WAIT, wait * 2)
        yield
    finally:
        storage.free_concurrency_slots_for_run(run_id)


def _counted_per_run(instance: dg.DagsterInstance) -> bool:
    """Whether the instance counts pools per run (``concurrency: pools: granularity: run``)."""
    granularity = instance.get_concurrency_config().pool_config.pool_granularity
    return granularity is not None and granularity.value == "run"


def _limit(storage, pool: str) -> int:
    return storage.get_concurrency_info(pool).slot_count


def _runs_using(instance: dg.DagsterInstance, pool: str, run_id: str) -> int:
    """Runs in progress other than ``run_id`` that use ``pool``: what the run queue counts
    against the pool's limit when pools are counted per run."""
    records = instance.get_run_records(dg.RunsFilter(statuses=ACTIVE))
    return sum(1 for record in records if record.dagster_run.run_id != run_id
               and pool in ((record.dagster_run.run_op_concurrency and record.dagster_run.run_op_concurrency.all_pools)
                            or ()))


def training_turn(instance: dg.DagsterInstance, job: dg.JobDefinition, selection: list[dg.AssetKey] | None,
                  run_id: str, log: Callable[[str], None] | None = None) -> contextlib.AbstractContextManager:
    """``pool_turn`` of the training pool for run ``run_id`` of ``job`` (restricted to ``selection``)
    when it trains, else nothing to wait for."""
    steps = {node.name for node in job.graph.nodes}
    if selection is not None:
        steps &= {key.to_user_string() for key in selection}
    if TRAINING_STEP not in steps:
        return contextlib.nullcontext()
    return pool_turn(instance, TRAINING_POOL, run_id, TRAINING_STEP, log)
