"""Waiting for the training pool asleep (``defs.pool_turn``), with a real SQLite Dagster instance
whose pools take one step at a time (as ``make``'s dagster.yaml), and a real in-process run."""

from __future__ import annotations

import threading
import time
import uuid

import dagster as dg

from gpt_pipeline.defs.pool_turn import TRAINING_STEP, pool_turn, training_turn
from gpt_pipeline.defs.sources import TRAINING_POOL


@dg.asset(name=TRAINING_STEP, pool=TRAINING_POOL)
def _training() -> int:
    return 1


@dg.asset
def _other() -> int:
    return 2


JOB = dg.Definitions(assets=[_training, _other], jobs=[dg.define_asset_job("job")]).resolve_job_def("job")


def _instance(tmp_path) -> dg.DagsterInstance:
    return dg.DagsterInstance.local_temp(str(tmp_path), overrides={"concurrency": {"pools": {"default_limit": 1}}})


def test_a_run_waits_for_its_turn_asleep_and_dagster_takes_the_slot_it_holds(tmp_path):
    instance = _instance(tmp_path)
    messages, results = [], []

    def second_run():
        run_id = str(uuid.uuid4())
        with training_turn(instance, JOB, None, run_id, messages.append):
            results.append(JOB.execute_in_process(instance=instance, run_id=run_id, raise_on_error=False))

    with pool_turn(instance, TRAINING_POOL, str(uuid.uuid4()), TRAINING_STEP):  # another run trains
        waiting = threading.Thread(target=second_run)
        cpu = time.process_time()
        waiting.start()
        time.sleep(3.0)
        cpu = time.process_time() - cpu
        assert not results and waiting.is_alive()  # it waits for the slot
        assert cpu < 0.5, f"{cpu:.2f} s of CPU in 3 s of waiting"  # Dagster's own wait: ~3 s (one core)
    waiting.join(timeout=60)
    assert results and results[0].success
    assert messages == [f"waiting for a free slot in the Dagster pool {TRAINING_POOL!r} (another run holds it)"]
    info = instance.event_log_storage.get_concurrency_info(TRAINING_POOL)
    assert info.slot_count == 1 and not info.claimed_slots and not info.pending_steps  # all freed


def test_a_run_that_does_not_train_or_fails_leaves_no_claim(tmp_path):
    instance = _instance(tmp_path)
    holder = str(uuid.uuid4())
    with pool_turn(instance, TRAINING_POOL, holder, TRAINING_STEP):
        started = time.monotonic()
        with training_turn(instance, JOB, [dg.AssetKey("_other")], str(uuid.uuid4())):  # no training: no wait
            assert time.monotonic() - started < 1.0
    run_id = str(uuid.uuid4())
    try:
        with pool_turn(instance, TRAINING_POOL, run_id, TRAINING_STEP):
            raise RuntimeError("the run failed before its training step")
    except RuntimeError:
        pass
    info = instance.event_log_storage.get_concurrency_info(TRAINING_POOL)
    assert not info.claimed_slots and not info.pending_steps
