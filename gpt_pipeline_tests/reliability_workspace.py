"""The workspace of the bad-input tests (``test_reliability_inputs``, ``test_reliability_cli``): a
good baseline materialization, a copy of its files per test, and the one check every bad input
must pass (a clear first line naming the problem, nothing stored changed, no run left RUNNING)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from gpt_pipeline.defs.materialize import _config_problem
from gpt_pipeline.defs.assets import ASSETS
from gpt_pipeline.defs.io_manager import AssetFileIOManager
from gpt_pipeline.defs.resources import MLflowResource
from gpt_pipeline.defs.sweeps import DEFAULT_VARIANT, VARIANT_ASSETS
from gpt_pipeline_tests.reliability_support import error_chain, run_statuses, step_failures, tree_digest
from gpt_pipeline_tests.tiny_config import with_default_variant

RESOURCES = {"io_manager": AssetFileIOManager(), "mlflow": MLflowResource()}


@dataclass
class Baseline:
    root: Path
    data: Path  # the good materialization's files, never modified by a test
    uri: str  # the MLflow store every test here logs to
    instance: dg.DagsterInstance
    alphabet_size: int
    vocab_size: int


@dataclass
class Workspace:
    data: Path  # this test's copy of the baseline files ($GPT_PIPELINE_DATA_DIR)
    baseline: Baseline
    tmp: Path

    def materialize(self, asset: str, config: dict):
        """The run's result, or the ``DagsterInvalidConfigError`` that refused its run config
        (a value out of a field's bounds or choices) before any step ran. A variant asset
        (``trained_model``, ``sample_generations``) is materialized for the default sweep's one
        variant."""
        try:
            return dg.materialize(
                ASSETS,
                selection=[asset],
                resources=RESOURCES,
                instance=with_default_variant(self.baseline.instance),
                run_config={"ops": {asset: {"config": config}}},
                raise_on_error=False,
                partition_key=DEFAULT_VARIANT if asset in VARIANT_ASSETS else None,
            )
        except dg.DagsterInvalidConfigError as refused:
            return refused

    def snapshot(self) -> dict[str, str]:
        return tree_digest(self.data)

    def assert_step_fails_clearly(self, result, asset: str, fragments, before: dict[str, str]) -> None:
        """The step failed with the fragments in the first line of its message, or the run config
        was refused before any step ran with them in its one-line problem (as the CLI prints it:
        ``defs.materialize._config_problem``); either way nothing stored changed."""
        if isinstance(result, dg.DagsterInvalidConfigError):
            problems = [_config_problem(e) for e in result.errors]
            assert len(problems) == 1 and f"ops.{asset}.config" in problems[0].replace(":", "."), problems
            first_line, error = problems[0], result
        else:
            assert not result.success, f"{asset} succeeded with a bad input"
            failures = step_failures(result)
            assert [f.step_key for f in failures] == [asset]
            error = failures[0].step_failure_data.error
            first_line = error.message.strip().splitlines()[0] if error.message.strip() else ""
        for fragment in fragments:
            found = fragment.search(first_line) if isinstance(fragment, re.Pattern) else fragment in first_line
            assert found, (
                f"{getattr(fragment, 'pattern', fragment)!r} is not in the first line of the step's failure "
                f"message {first_line!r}; whole error: "
                f"{error if isinstance(error, Exception) else error_chain(error)}"
            )
        assert self.snapshot() == before, "files materialized earlier changed (or new files appeared)"
        statuses = run_statuses(self.baseline.uri)
        assert "RUNNING" not in statuses.values(), statuses
