"""Fixtures of the sweep tests (``test_sweep_runner``, ``test_run_workers``)."""

from __future__ import annotations

import copy

import pytest
import yaml

from gpt_pipeline.defs.local_instance import LOCAL_INSTANCE_YAML
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG


@pytest.fixture
def sweep_home(tmp_path, isolated_storage, monkeypatch):
    """A Dagster home whose pools take one step at a time (as `make`'s), and a base run config."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(LOCAL_INSTANCE_YAML)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    base = copy.deepcopy(TINY_RUN_CONFIG)
    base["ops"]["sample_generations"]["config"]["prompts"] = ["Once", "The dog", "A cat"]
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    return tmp_path
