"""The search's bookkeeping against a real Optuna study (SQLite) and a real Dagster instance: two
searchers of one study never claim the same trial; a trial left running by a process that is gone
is claimed again, under its variant, before any new one; the budget counts every trial.
(Trials trained end to end through the daemon, pruned and continued: ``test_sweep_runner``;
interrupted and resumed: ``test_run_workers``.)"""

from __future__ import annotations

import socket
from pathlib import Path

import dagster as dg

from gpt_pipeline.defs.search import RELEASED, Search
from gpt_pipeline.defs.search_trials import Claims
from gpt_pipeline.defs.sweeps import parse_sweep
from gpt_pipeline.defs.variants import known_variants, read_variant
from gpt_pipeline.tracking.tracker import HOST_TAG, PID_TAG, START_TAG


DEAD = {HOST_TAG: socket.gethostname(), PID_TAG: "999999999", START_TAG: "1"}  # no such process


def _sweep(n_trials: int):
    return parse_sweep({"name": "s", "base": {"ops": {"trained_model": {"config": {"training_iterations": 40}}}},
                        "search": {"n_trials": n_trials, "seed": 1, "sampler": "random",
                                   "space": {"trained_model.learning_rate": {"low": 0.001, "high": 0.01, "log": True}}}},
                       "s", Path("."))


def test_searchers_share_a_study_without_sharing_a_trial_and_adopt_orphans(tmp_path, isolated_storage):
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        first, second = Search(_sweep(3), instance, log=lambda line: None), Search(_sweep(3), instance, log=print)
        a, b = first.claim(), second.claim()
        assert a[0] != b[0] and a[1] != b[1]  # two processes, two trials
        assert set(known_variants(instance)) == {a[1], b[1]}
        record = read_variant(a[1])
        assert record.trial == {"study": "s", "number": a[0], "storage": None, "pruner": {"kind": "median"}}
        assert record.base == {"trained_model": {"training_iterations": 40}}
        assert 0.001 <= record.overrides["trained_model"]["learning_rate"] <= 0.01
        # The first searcher is killed while training trial a (its claim: a process that is gone):
        # a new searcher claims a again, before any new trial.
        claim, _ = first.claims.current(a[2]._trial_id)
        assert first.claims.take(a[2]._trial_id, claim + 1, DEAD)
        again = Search(_sweep(3), instance, log=lambda line: None)
        assert again.claim()[:2] == a[:2]
        assert again.claim()[0] not in (a[0], b[0])  # then a new trial: the third
        assert again.claim() is None  # three trials asked: the budget is spent
        assert Search(_sweep(3), instance, log=lambda line: None).claim() is None  # b still has a live owner


def test_an_orphaned_trial_is_adopted_by_one_of_the_searchers_that_see_it_at_once(tmp_path, isolated_storage,
                                                                                monkeypatch):
    """Four searchers (each its own study and claims connections, as four processes would have)
    find the trial of a killed process at the same moment: exactly one adopts it."""
    import threading

    from gpt_pipeline.defs import search

    seen = threading.Barrier(4, timeout=30)

    def alive_once_all_have_looked(owner):  # the worst interleaving: all four decide it is orphaned first
        if owner == DEAD:
            seen.wait()
        return process_alive(owner)

    process_alive = search._process_alive
    monkeypatch.setattr(search, "_process_alive", alive_once_all_have_looked)

    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        killed = Search(_sweep(6), instance, log=lambda line: None)
        number, variant, trial = killed.claim()
        claim, _ = killed.claims.current(trial._trial_id)
        assert killed.claims.take(trial._trial_id, claim + 1, DEAD)  # its process is gone
        searchers = [Search(_sweep(6), instance, log=lambda line: None) for _ in range(4)]
        start, claimed = threading.Barrier(len(searchers)), {}

        def claim_one(index: int) -> None:
            start.wait()
            claimed[index] = searchers[index].claim()

        threads = [threading.Thread(target=claim_one, args=(i,)) for i in range(len(searchers))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        numbers = [c[0] for c in claimed.values() if c is not None]
        assert len(claimed) == 4 and len(numbers) == 4 and len(set(numbers)) == 4, claimed  # never one trial twice
        assert numbers.count(number) == 1  # the orphan: adopted once, under its variant
        adopter = next(c for c in claimed.values() if c[0] == number)
        assert adopter[1] == variant


def test_a_trial_whose_run_was_killed_is_adopted_once_by_the_sensor_that_requests_it_again(tmp_path, isolated_storage):
    """``Search.adopt`` (``sweep_sensor`` before it requests an interrupted trial's run again): a
    trial whose claim names a live owner is not taken; its own owner holds it; once that owner
    is gone (kill -9) or gave it back (Ctrl-C), one searcher takes it and the other does not."""
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        first = Search(_sweep(2), instance, log=lambda line: None, owner={"submission": "a"})
        second = Search(_sweep(2), instance, log=lambda line: None, owner={"submission": "b"})
        number, _, trial = first.claim()
        frozen = next(t for t in first.study.get_trials(deepcopy=False) if t.number == number)
        assert first.adopt(frozen) and not second.adopt(frozen)  # first's, alive
        claims = Claims(first.spec.storage_url())
        assert claims.take(trial._trial_id, claims.current(trial._trial_id)[0] + 1, DEAD)  # its owner killed
        assert second.adopt(frozen) and not first.adopt(frozen)  # taken once, by second
        assert claims.current(trial._trial_id)[1] == second.owner
        second.release(trial)  # second stopped: given back
        assert claims.current(trial._trial_id)[1] == {RELEASED: True}
        assert first.adopt(frozen) and not second.adopt(frozen)
        assert first.claim(skip={number})[0] != number  # a trial the sensor requests itself is not an orphan
