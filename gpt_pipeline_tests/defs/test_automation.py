"""Schedules and the source sensor, evaluated with Dagster's test contexts."""

from __future__ import annotations

import datetime as dt
import os

import dagster as dg
import polars as pl
import yaml

from gpt_pipeline.defs import automation
from gpt_pipeline.definitions import defs

JOB = defs.resolve_job_def("train_gpt_job")


def _assert_valid(run_config):
    assert dg.validate_run_config(JOB, run_config)


def test_schedules_are_stopped_and_their_run_config_validates():
    for schedule in automation.SCHEDULES:
        assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert automation.weekly_retrain.cron_schedule == "0 3 * * 0"
    context = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2026, 11, 29, 3, 0))
    request = automation.weekly_retrain.evaluate_tick(context).run_requests[0]
    _assert_valid(request.run_config)
    config = request.run_config["ops"]["trained_model"]["config"]
    assert config["learning_rate"] == 2e-4 and config["embedding_size"] == 128  # the class defaults


def test_schedule_config_file_overrides_defaults(tmp_path, monkeypatch):
    override = tmp_path / "retrain.yaml"
    override.write_text(yaml.safe_dump({"ops": {"trained_model": {"config": {"training_iterations": 50}}}}))
    monkeypatch.setenv("GPT_PIPELINE_SCHEDULE_CONFIG", str(override))
    run_config = automation.scheduled_run_config()
    assert run_config["ops"]["trained_model"]["config"]["training_iterations"] == 50
    assert run_config["ops"]["trained_model"]["config"]["block_count"] == 8
    _assert_valid(run_config)


def test_sweep_launches_one_run_per_learning_rate(monkeypatch):
    monkeypatch.setenv("GPT_PIPELINE_SWEEP_LEARNING_RATES", "0.001,0.003")
    context = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2026, 11, 28, 4, 0))
    requests = automation.learning_rate_sweep.evaluate_tick(context).run_requests
    rates = [r.run_config["ops"]["trained_model"]["config"]["learning_rate"] for r in requests]
    assert rates == [0.001, 0.003]
    assert len({r.run_key for r in requests}) == 2
    for request in requests:
        _assert_valid(request.run_config)


def test_sensor_requests_one_run_per_change(tmp_path, monkeypatch):
    source = tmp_path / "stories.parquet"
    pl.DataFrame({"text": ["one story"]}).write_parquet(source)
    monkeypatch.setenv("GPT_PIPELINE_SOURCE_PARQUET", str(source))
    with dg.instance_for_test() as instance:
        cursor = None
        keys = []

        def tick():
            nonlocal cursor
            context = dg.build_sensor_context(instance=instance, cursor=cursor)
            result = automation.raw_source_sensor.evaluate_tick(context)
            cursor = result.cursor
            keys.extend(r.run_key for r in result.run_requests)
            return result.run_requests

        first = tick()
        assert len(first) == 1
        assert first[0].run_config["ops"]["raw_stories"]["config"]["path"] == str(source)
        _assert_valid(first[0].run_config)
        assert tick() == []  # nothing changed
        stat = source.stat()
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        assert tick() == []  # touched, same content: no run
        pl.DataFrame({"text": ["one story", "and another"]}).write_parquet(source)
        assert len(tick()) == 1
        assert tick() == []
        assert len(set(keys)) == 2


def test_sensor_skips_without_a_source(monkeypatch):
    monkeypatch.delenv("GPT_PIPELINE_SOURCE_PARQUET", raising=False)
    monkeypatch.delenv("GPT_PIPELINE_SCHEDULE_CONFIG", raising=False)
    with dg.instance_for_test() as instance:
        result = automation.raw_source_sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
    assert result.run_requests == [] and "GPT_PIPELINE_SOURCE_PARQUET" in result.skip_message


def test_every_schedule_and_sensor_evaluates_with_a_bare_context(monkeypatch):
    """Evaluated by hand (no scheduled time, no instance): run keys say "manual", no CheckError."""
    monkeypatch.delenv("GPT_PIPELINE_SOURCE_PARQUET", raising=False)
    monkeypatch.delenv("GPT_PIPELINE_SCHEDULE_CONFIG", raising=False)
    for schedule in automation.SCHEDULES:
        result = schedule.evaluate_tick(dg.build_schedule_context())
        assert result.run_requests, schedule.name
        for request in result.run_requests:
            assert "manual" in request.run_key
            _assert_valid(request.run_config)
    sweep = automation.learning_rate_sweep.evaluate_tick(dg.build_schedule_context()).run_requests
    assert [r.tags["gpt_pipeline/sweep"] for r in sweep] == ["sweep-manual"] * 3
    for sensor in automation.SENSORS:
        result = sensor.evaluate_tick(dg.build_sensor_context())
        assert result.skip_message or result.run_requests, sensor.name
