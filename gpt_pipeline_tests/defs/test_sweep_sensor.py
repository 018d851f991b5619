"""``sweep_sensor`` ticked by hand against a real instance and a real Optuna study: after the data
run, it asks Optuna for only as many trials as the pool `training` can run now, and a tick that
repeats itself asks for nothing new. (Ticked by a real daemon end to end: ``test_sweep_runner``.)"""

from __future__ import annotations

import copy

import dagster as dg
import optuna
import yaml

from gpt_pipeline.definitions import defs
from gpt_pipeline.defs.sources import TRAINING_POOL
from gpt_pipeline.defs.sweep_sensor import pool_limit, sweep_sensor
from gpt_pipeline.defs.sweep_submissions import check_sweep, submit
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG

DATA = ["raw_stories", "bpe_tokenizer", "tokenized_dataset"]


def _tick(instance) -> dict[str, dg.RunRequest]:
    return {request.run_key: request for request in sweep_sensor(dg.build_sensor_context(instance=instance)).run_requests}


def test_trials_are_asked_as_the_pool_allows_after_the_data_run(tmp_path, isolated_storage):
    base = copy.deepcopy(TINY_RUN_CONFIG)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "name": "s", "base": "base.yaml", "variants": {"listed": {}},
        "search": {"n_trials": 3, "sampler": "random", "space": {"trained_model.learning_rate": {"low": 0.001, "high": 0.01}}}}))
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home"), overrides={"concurrency": {"pools": {"default_limit": 1}}}) as instance:
        _, content, user = check_sweep(tmp_path / "s.yaml")
        submission = submit(instance, content, user)
        (data_key,) = _tick(instance)
        assert data_key == f"{submission.id}:data"
        assert pool_limit(instance) == 1 and instance.event_log_storage.get_concurrency_info(TRAINING_POOL).slot_count == 1
        # the data run, as the daemon would launch it (the sensor's tags)
        run = defs.resolve_job_def("train_gpt_job").execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey(a) for a in DATA],
            run_config={"ops": {a: base["ops"][a] for a in DATA}},
            tags={"gpt_pipeline/submission": submission.id, "gpt_pipeline/step": "data"})
        assert run.success

        requests = _tick(instance)
        assert set(requests) == {f"{submission.id}:trial:0:0", f"{submission.id}:variant:listed"}  # one trial: pool 1
        trial = requests[f"{submission.id}:trial:0:0"]
        assert trial.partition_key == "s-t000" and trial.tags["gpt_pipeline/trial"] == "0"
        assert {k.to_user_string() for k in trial.asset_selection} == {"trained_model", "sample_generations", "model_evaluation"}
        assert _tick(instance) == requests  # the same tick again: nothing new asked of Optuna
        study = optuna.load_study(study_name="s", storage=f"sqlite:///{isolated_storage[1] / 'optuna.db'}")
        assert len(study.trials) == 1

        instance.event_log_storage.set_concurrency_slots(TRAINING_POOL, 2)  # the user raises the pool
        assert set(_tick(instance)) == set(requests) | {f"{submission.id}:trial:1:0"}
        study = optuna.load_study(study_name="s", storage=f"sqlite:///{isolated_storage[1] / 'optuna.db'}")
        params = [t.params["trained_model.learning_rate"] for t in study.trials]
        assert len(params) == 2 and params[0] != params[1]  # each trial sampled afresh, not the seed's first again
        assert not any(r.job_name == "train_gpt_job" and r.tags.get("gpt_pipeline/step") == "champion"
                       for r in instance.get_runs())
