"""Waiting for a turn in a Dagster pool asleep, before a run executes in process.

Dagster 1.13's in-process executor (``execute_in_process``, what ``gpt-pipeline materialize`` and
so ``make run`` use) spins while a step waits for a pool slot: ``InstanceConcurrencyContext.
interval_to_next_pending_claim_check`` returns ``min([0, ...])``, never more than 0, so the
executor's ``sleep_til_ready`` never sleeps and its loop runs flat out (one core, 85-117% CPU in
``ps``) until the slot frees. No instance setting changes that: the run-level pool granularity
(``concurrency: pools: granularity: run``) stops the executor from checking pools at all, and
runs executed in process never pass the run queue, so two trainings would run at once.

``pool_turn`` claims the step's slot itself, through the same storage calls and the same
pending-steps queue as Dagster (first come, first served; the UI shows the claim), sleeping
between tries, before the run starts; Dagster's own claim for that run and step then finds the
slot already held and goes on at once. The slot is freed when the run is over, however it ended
(Dagster frees it first when the step ends).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import dagster as dg

from gpt_pipeline.defs.sources import TRAINING_POOL

TRAINING_STEP = "trained_model"  # the step of the pool TRAINING_POOL (the asset's op)
FIRST_WAIT, LONGEST_WAIT = 0.25, 2.0  # seconds between tries: quick turns, then a try every 2 s


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
        wait, told = FIRST_WAIT, False
        while not storage.claim_concurrency_slot(pool, run_id, step_key).is_claimed:
            if log is not None and not told:
                log(f"waiting for a free slot in the Dagster pool {pool!r} (another run holds it)")
                told = True
            time.sleep(wait)
            wait = min(LONGEST_WAIT, wait * 2)
        yield
    finally:
        storage.free_concurrency_slots_for_run(run_id)


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
