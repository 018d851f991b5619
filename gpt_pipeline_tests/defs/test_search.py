"""The search's bookkeeping against a real Optuna study (SQLite) and a real Dagster instance: two
searchers of one study never claim the same trial; a trial left running by a process that is gone
is claimed again, under its variant, before any new one; the budget counts every trial.
(Trials trained end to end, pruned and continued: ``test_sweep_runner``.)"""

from __future__ import annotations

import socket
from pathlib import Path

import dagster as dg

from gpt_pipeline.defs.search import OWNER_ATTR, Search
from gpt_pipeline.defs.sweeps import parse_sweep
from gpt_pipeline.defs.variants import known_variants, read_variant
from gpt_pipeline.tracking.tracker import HOST_TAG, PID_TAG, START_TAG


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
        # The first searcher is killed while training trial a: a new one claims a again, first.
        a[2].set_user_attr(OWNER_ATTR, {HOST_TAG: socket.gethostname(), PID_TAG: "999999999", START_TAG: "1"})
        again = Search(_sweep(3), instance, log=lambda line: None)
        assert again.claim()[:2] == a[:2]
        assert again.claim()[0] not in (a[0], b[0])  # then a new trial: the third
        assert again.claim() is None  # three trials asked: the budget is spent
        assert Search(_sweep(3), instance, log=lambda line: None).claim() is None  # b still has a live owner
