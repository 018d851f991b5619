"""Two trainings with different learning rates through the real job: `gpt-pipeline compare`
ranks both, `champion` points at the better one, and the champion's pyfunc writes text."""

from __future__ import annotations

import copy

import dagster as dg
import mlflow.pyfunc
from mlflow.tracking import MlflowClient

from gpt_pipeline.cli import main
from gpt_pipeline.definitions import defs
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG


def test_learning_rate_comparison_and_champion(tmp_path, isolated_storage, capsys, monkeypatch):
    _, mlruns = isolated_storage
    uri = f"sqlite:///{mlruns / 'mlflow.db'}"
    home = tmp_path / "home"
    home.mkdir()
    job = defs.resolve_job_def("train_gpt_job")
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        for rate in (0.003, 0.008):
            config = copy.deepcopy(TINY_RUN_CONFIG)
            config["ops"]["trained_model"]["config"]["learning_rate"] = rate
            assert job.execute_in_process(run_config=config, instance=instance).success

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("gpt-pipeline")
    runs = client.search_runs([experiment.experiment_id], "tags.`dagster.asset_key` = 'trained_model'")
    by_rate = {r.data.params["learning_rate"]: r for r in runs}
    assert set(by_rate) == {"0.003", "0.008"}
    losses = {rate: run.data.metrics["final_test_loss"] for rate, run in by_rate.items()}
    better = min(losses, key=losses.get)
    assert losses["0.003"] != losses["0.008"]

    capsys.readouterr()
    assert main(["compare", "--tracking-uri", uri]) == 0
    table = capsys.readouterr().out
    assert by_rate[better].info.run_id[:8] in table
    lines = [line for line in table.splitlines() if "0.003" in line or "0.008" in line]
    assert len(lines) == 2
    assert "learning_rate" in table  # the differing param is a column
    first_ranked = next(line for line in table.splitlines() if line.strip().startswith("1 "))
    assert by_rate[better].info.run_id[:8] in first_ranked

    champion = client.get_model_version_by_alias("gpt-pipeline", "champion")
    assert champion.run_id == by_rate[better].info.run_id

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model("models:/gpt-pipeline@champion")
    texts = model.predict(["Once"], params={"token_count": 8, "seed": 1})
    assert len(texts) == 1 and texts[0].startswith("Once") and len(texts[0]) > len("Once")
