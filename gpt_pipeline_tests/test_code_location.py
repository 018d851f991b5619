"""One code location, ``gpt_pipeline`` (its Definitions: ``defs`` of ``gpt_pipeline.definitions``),
named alike wherever it is declared: pyproject.toml for ``dagster dev`` ([tool.dagster]) and for
``dg`` ([tool.dg]), workspace.yaml, and the Helm values' workspace. ``make test`` loads it with
``dg check defs`` before pytest; here the declarations are read."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
NAME, MODULE = "gpt_pipeline", "gpt_pipeline.definitions"


def test_pyproject_declares_one_location_for_dagster_and_dg():
    tools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]
    assert tools["dagster"] == {"module_name": MODULE, "code_location_name": NAME}
    assert tools["dg"]["directory_type"] == "project"
    project = tools["dg"]["project"]
    assert (project["root_module"], project["code_location_target_module"]) == (NAME, MODULE)
    assert project["code_location_name"] == NAME
    assert (REPO_ROOT / Path(*project["defs_module"].split("."))).is_dir()


def test_workspace_files_name_the_same_location():
    (entry,) = yaml.safe_load((REPO_ROOT / "workspace.yaml").read_text())["load_from"]
    assert entry["python_module"]["module_name"] == MODULE
    assert entry["python_module"]["location_name"] == NAME
    values = yaml.safe_load((REPO_ROOT / "deploy" / "k8s" / "values.yaml").read_text())
    (server,) = values["dagsterWebserver"]["workspace"]["servers"]
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert server["name"] == NAME
    assert (server["host"], server["port"]) == (deployment["name"], deployment["port"])
    assert deployment["dagsterApiGrpcArgs"] == ["-m", MODULE]
