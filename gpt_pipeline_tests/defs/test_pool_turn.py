"""Waiting for the training pool asleep (``defs.pool_turn``), with a real SQLite Dagster instance
whose pools take one run at a time (``make``'s dagster.yaml, ``defs.local_instance``; and counted
per step, Dagster's default), and real in-process runs."""

from __future__ import annotations

import sys
import threading
import time
import traceback
import uuid

import dagster as dg
import pytest
import yaml

from gpt_pipeline.defs.local_instance import LOCAL_INSTANCE_YAML
from gpt_pipeline.defs.pool_turn import TRAINING_STEP, pool_turn, training_turn
from gpt_pipeline.defs.sources import TRAINING_POOL


TRAINING = threading.Event()  # set: the asset trains (blocks until RELEASE is set)
RELEASE = threading.Event()


@dg.asset(name=TRAINING_STEP, pool=TRAINING_POOL)
def _training() -> int:
    TRAINING.set()
    assert RELEASE.wait(timeout=60)
    return 1


@dg.asset
def _other() -> int:
    return 2


JOB = dg.Definitions(assets=[_training, _other], jobs=[dg.define_asset_job("job")]).resolve_job_def("job")


def _instance(tmp_path, per_step: bool = False) -> dg.DagsterInstance:
    overrides = yaml.safe_load(LOCAL_INSTANCE_YAML)
    if per_step:
        del overrides["concurrency"]["pools"]["granularity"]
    return dg.DagsterInstance.local_temp(str(tmp_path), overrides=overrides)


def _stacks() -> str:
    """Every thread's stack: why a run that should have ended is still running."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    return "\n".join(f"--- {names.get(ident, ident)}\n" + "".join(traceback.format_stack(frame))
                     for ident, frame in sys._current_frames().items())


@pytest.fixture(autouse=True)
def _released():
    TRAINING.clear()
    RELEASE.set()
    yield
    RELEASE.set()


@pytest.mark.parametrize("per_step", [False, True], ids=["per run (make's)", "per step"])
def test_a_run_waits_for_its_turn_asleep_and_dagster_takes_the_slot_it_holds(tmp_path, per_step):
    instance = _instance(tmp_path, per_step)
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
    assert not waiting.is_alive(), f"the waiting run did not end within 60 s:\n{_stacks()}"
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


def test_a_run_waits_asleep_while_a_launched_run_uses_the_pool(tmp_path):
    """Pools counted per run: a launched run (UI, schedule; here an in-process one, which claims
    no slot either) uses the pool while it is in progress; a run in process waits for it."""
    instance = _instance(tmp_path)
    RELEASE.clear()
    first = threading.Thread(target=lambda: JOB.execute_in_process(instance=instance, raise_on_error=False))
    first.start()
    assert TRAINING.wait(timeout=60)  # the launched run trains, holding no slot
    assert not instance.event_log_storage.get_concurrency_info(TRAINING_POOL).claimed_slots
    messages, results = [], []

    def second_run():
        run_id = str(uuid.uuid4())
        with training_turn(instance, JOB, None, run_id, messages.append):
            results.append(JOB.execute_in_process(instance=instance, run_id=run_id, raise_on_error=False))

    waiting = threading.Thread(target=second_run)
    cpu = time.process_time()
    waiting.start()
    time.sleep(3.0)
    cpu = time.process_time() - cpu
    assert not results and waiting.is_alive() and messages  # it waits for the launched run
    assert cpu < 0.5, f"{cpu:.2f} s of CPU in 3 s of waiting"
    RELEASE.set()
    first.join(timeout=60)
    waiting.join(timeout=60)
    assert not waiting.is_alive(), f"the waiting run did not end within 60 s:\n{_stacks()}"
    assert results and results[0].success
    info = instance.event_log_storage.get_concurrency_info(TRAINING_POOL)
    assert not info.claimed_slots and not info.pending_steps
