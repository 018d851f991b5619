"""What ``gpt-pipeline materialize`` prints (``defs.console.reader_logger``): a headline per
asset, warnings, nothing of Dagster's own events; ``--quiet``: warnings only. The whole lineage's
output (progress lines, stories) is checked by test_first_hour_e2e."""

from __future__ import annotations

import re

import yaml

from gpt_pipeline.cli import main
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG


def _materialize(tmp_path, monkeypatch, capsys, *options: str) -> list[str]:
    monkeypatch.setenv("GPT_PIPELINE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(TINY_RUN_CONFIG))
    assert main(["materialize", "--config", str(config), "--select", "raw_stories", *options]) == 0
    captured = capsys.readouterr()
    assert "DEBUG" not in captured.out + captured.err and "STEP_" not in captured.out + captured.err
    return [line for line in captured.out.splitlines() if line.strip()]


def test_one_headline_per_asset_and_nothing_of_dagsters_events(tmp_path, monkeypatch, capsys):
    lines = _materialize(tmp_path, monkeypatch, capsys)
    assert re.fullmatch(r"raw_stories: 200 stories, [\d,]+ characters \(embedded corpus \(seed 3\)\)", lines[0]), lines
    assert len(lines) == 2 and lines[1].startswith("Dagster run ") and "succeeded" in lines[1], lines


def test_quiet_prints_no_headline(tmp_path, monkeypatch, capsys):
    lines = _materialize(tmp_path, monkeypatch, capsys, "--quiet")
    assert len(lines) == 1 and lines[0].startswith("Dagster run "), lines
