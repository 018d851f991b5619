"""gpt_pipeline.defs.training_run: the trained_model asset's Dagster log tells how training goes,
and that a rematerialization resumed (from which step)."""

from __future__ import annotations

import dagster as dg

from gpt_pipeline.definitions import defs
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG


def _messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [record.user_message for record in instance.all_logs(run_id) if record.step_key == "trained_model"]


def test_dagster_log_shows_evaluations_and_the_resume(tmp_path, isolated_storage):
    job = defs.resolve_job_def("train_gpt_job")
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        first = job.execute_in_process(run_config=TINY_RUN_CONFIG, instance=instance)
        assert first.success
        lines = _messages(instance, first.run_id)
        assert [m.split(":")[0] for m in lines if "train loss" in m] == ["step 0/40", "step 20/40", "step 40/40"]
        assert not any(m.startswith("resumed from") for m in lines)
        again = job.execute_in_process(run_config=TINY_RUN_CONFIG, instance=instance)  # same config, same data
        assert again.success
        resumed = [m for m in _messages(instance, again.run_id) if m.startswith("resumed from")]
        assert len(resumed) == 1 and resumed[0].startswith("resumed from step 40/40 (checkpoint in ")
        assert "checkpoints/trained_model/" in resumed[0]
