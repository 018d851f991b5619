"""Retraining: the weekly schedule and the declarative automation of a changed source, evaluated
with Dagster's own test contexts and evaluator against a real instance."""

from __future__ import annotations

import copy
import datetime as dt
import os

import dagster as dg
import polars as pl

from gpt_pipeline.defs import automation
from gpt_pipeline.defs.sources import SOURCE_ENV, SOURCE_KEY, file_state
from gpt_pipeline.definitions import defs
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG, with_default_variant

JOB = defs.resolve_job_def("train_gpt_job")
LINEAGE = {"raw_stories", "bpe_tokenizer", "tokenized_dataset", "trained_model", "sample_generations",
           "model_evaluation", "champion_model", "champion_generations", "champion_evaluation"}


def test_schedules_and_sensors_are_stopped_and_evaluate_with_bare_contexts():
    for schedule in automation.SCHEDULES:
        assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
        result = schedule.evaluate_tick(dg.build_schedule_context())
        assert [r.run_key for r in result.run_requests] == ["weekly-manual"], schedule.name
    assert automation.weekly_sweep.cron_schedule == "0 3 * * 0"
    ticked = automation.weekly_sweep.evaluate_tick(
        dg.build_schedule_context(scheduled_execution_time=dt.datetime(2026, 11, 29, 3, 0)))
    request = ticked.run_requests[0]
    assert request.run_key == "weekly-2026-11-29T03:00:00" and request.tags["gpt_pipeline/schedule"] == "weekly"
    assert automation.weekly_sweep.job_name == "sweep_job"
    for sensor in automation.SENSORS:
        assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
        # Declarative automation's sensor is evaluated by Dagster's own evaluator, not evaluate_tick
        # ("cannot be evaluated like regular user-space sensors"): on a bare instance it requests
        # nothing but an observation of the source (its five-minute cron), and raises nothing.
        assert isinstance(sensor, dg.AutomationConditionSensorDefinition), sensor.name
        with dg.instance_for_test() as instance:
            result = dg.evaluate_automation_conditions(defs, instance)
        assert {key.to_user_string() for key in _requested_keys(result)} <= {"stories_source"}


def test_the_code_location_has_one_automation_sensor_covering_the_source_and_the_lineage():
    """No ``default_automation_condition_sensor``: Dagster adds one for any asset with an automation
    condition that no sensor targets (a selection of groups leaves source assets out by default)."""
    sensors = defs.get_repository_def().sensor_defs
    assert [sensor.name for sensor in sensors] == ["retrain_on_new_data", "sweep_sensor"]
    assert sensors[1].default_status == dg.DefaultSensorStatus.RUNNING  # submitted sweeps run without a click
    selected = automation.retrain_on_new_data.asset_selection.resolve(defs.get_repository_def().asset_graph)
    assert {key.to_user_string() for key in selected} == LINEAGE | {"stories_source"}


def test_sweep_job_with_a_missing_or_bad_sweep_file_fails_with_one_line(tmp_path, isolated_storage, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "bad.yaml").write_text("search: {n_trials: 0, space: {trained_model.learning_rate: {low: 0.1, high: 0.2}}}\n")
    for sweep_file, expected in ((str(tmp_path / "none.yaml"), "does not exist"),
                                 (str(tmp_path / "bad.yaml"), "search.n_trials must be a whole number of at least 1")):
        with dg.instance_for_test() as instance:
            result = defs.resolve_job_def("sweep_job").execute_in_process(
                instance=instance, raise_on_error=False,
                run_config={"ops": {"submit_sweep_file": {"config": {"sweep_file": sweep_file}}}})
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure)
        message = failure.step_failure_data.error.message
        assert expected in message and "\n" not in message.strip(), message
    assert not (tmp_path / "home").exists() and not isolated_storage[0].exists()  # nothing ran


def test_sweep_job_submits_a_good_file_and_the_sensor_requests_its_data_run_first(tmp_path, isolated_storage):
    """The Launchpad's (and the weekly schedule's) sweep_job checks the file and submits it,
    running nothing itself; sweep_sensor then requests the data assets' run, tagged with the
    submission, and nothing else until it has succeeded."""
    import yaml

    from gpt_pipeline.defs.sweep_sensor import sweep_sensor
    from gpt_pipeline.defs.sweep_submissions import active

    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"name": "ui", "base": {"ops": {"raw_stories": {
        "config": {"num_stories": 200}}}}, "variants": {"a": {"trained_model": {"learning_rate": 0.004}}}}))
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        result = defs.resolve_job_def("sweep_job").execute_in_process(
            instance=instance, run_config={"ops": {"submit_sweep_file": {"config": {"sweep_file": str(tmp_path / "sweep.yaml")}}}})
        assert result.success
        (submission,) = active(instance)
        assert submission.sweep["variants"] == {"a": {"trained_model": {"learning_rate": 0.004}}}
        assert [run.job_name for run in instance.get_runs()] == ["sweep_job"]  # it trained nothing itself
        for _ in range(2):  # a second tick asks for the same run again (its run key makes it a no-op)
            ticked = sweep_sensor(dg.build_sensor_context(instance=instance))
            (request,) = ticked.run_requests
            assert request.run_key == f"{submission.id}:data" and request.partition_key is None
            assert {key.to_user_string() for key in request.asset_selection} == {
                "raw_stories", "bpe_tokenizer", "tokenized_dataset"}
            assert request.tags["gpt_pipeline/submission"] == submission.id and request.tags["gpt_pipeline/step"] == "data"
            assert request.run_config["ops"]["raw_stories"] == {"config": {"num_stories": 200}}
        assert not isolated_storage[0].exists()  # no variant recorded before the data has run


def _requested_keys(result) -> set[dg.AssetKey]:
    keys = set()
    for entity_key in defs.resolve_asset_graph().get_all_asset_keys():
        if result.get_num_requested(entity_key) > 0:
            keys.add(entity_key)
    return keys


def _observe(instance) -> str:
    result = JOB.execute_in_process(instance=instance, asset_selection=[SOURCE_KEY])
    assert result.success
    return instance.fetch_observations(SOURCE_KEY, limit=1).records[0].asset_observation.data_version


def test_a_change_of_content_requests_the_lineage_and_a_touch_does_not(tmp_path, isolated_storage, monkeypatch):
    source = tmp_path / "stories.parquet"
    texts = [f"Once upon a time there was a cat and a dog, number {i}. The dog liked to play in the sun." for i in range(200)]
    pl.DataFrame({"text": texts}).write_parquet(source)
    monkeypatch.setenv(SOURCE_ENV, str(source))
    config = copy.deepcopy(TINY_RUN_CONFIG)
    config["ops"]["raw_stories"]["config"] = {"path": str(source)}
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        first_version = _observe(instance)
        assert first_version == file_state(source)["sha256"]
        assert JOB.execute_in_process(run_config=config, instance=with_default_variant(instance), partition_key="default").success
        settled = dg.evaluate_automation_conditions(defs, instance)
        settled = dg.evaluate_automation_conditions(defs, instance, cursor=settled.cursor)
        assert _requested_keys(settled) <= {SOURCE_KEY}  # everything is up to date

        stat = source.stat()  # a touch: same bytes, a later modification time
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
        assert _observe(instance) == first_version
        touched = dg.evaluate_automation_conditions(defs, instance, cursor=settled.cursor)
        assert {k.to_user_string() for k in _requested_keys(touched)} & LINEAGE == set()

        pl.DataFrame({"text": [t.replace("cat", "bird") for t in texts]}).write_parquet(source)
        assert _observe(instance) != first_version
        ticks, cursor = [], touched.cursor
        for _ in range(5):  # evaluate, run what it requests (as the sensor would), until nothing is
            result = dg.evaluate_automation_conditions(defs, instance, cursor=cursor)
            cursor = result.cursor
            requested = {key: result.get_requested_partitions(key) for key in _requested_keys(result)
                         if key != SOURCE_KEY}
            if not requested:
                break
            ticks.append({key.to_user_string(): sorted(p for p in parts if p) for key, parts in requested.items()})
            partitions = {p for parts in requested.values() for p in parts}
            assert len(partitions) <= 1, requested  # one run per partition; one variant here
            run = JOB.execute_in_process(instance=with_default_variant(instance), asset_selection=list(requested),
                                         partition_key=partitions.pop() if partitions else None,
                                         run_config=_config_for(config, requested))
            assert run.success
    assert ticks == [
        {"raw_stories": [], "bpe_tokenizer": [], "tokenized_dataset": []},
        {"trained_model": ["default"], "sample_generations": ["default"], "model_evaluation": ["default"]},
        {"champion_model": [], "champion_generations": [], "champion_evaluation": []},
    ], ticks


def _config_for(config: dict, requested) -> dict:
    names = {key.to_user_string() for key in requested}
    return {"ops": {name: value for name, value in config["ops"].items() if name in names}}
