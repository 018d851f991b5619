"""trained_model's step time with launcher in_process against subprocess (Dagster Pipes).

Materializes the upstream assets of the tiny test config once, in a temporary data directory
and MLflow store, then trained_model with each launcher in turn (``resume: false``, so that
each one trains its 40 steps), and prints each step's wall time and its training seconds.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_launchers.py [ROUNDS]
"""

import copy
import os
import sys
import tempfile
import time

ROOT = tempfile.mkdtemp(prefix="bench_launchers.")
os.environ["GPT_PIPELINE_DATA_DIR"] = f"{ROOT}/data"
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{ROOT}/mlflow.db"

import dagster as dg  # noqa: E402 - after the environment it reads

from gpt_pipeline.defs.assets import ASSETS  # noqa: E402
from gpt_pipeline.defs.io_manager import AssetFileIOManager  # noqa: E402
from gpt_pipeline.defs.resources import MLflowResource  # noqa: E402
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG  # noqa: E402


def main(rounds: int) -> None:
    instance = dg.DagsterInstance.ephemeral()
    resources = {"io_manager": AssetFileIOManager(), "mlflow": MLflowResource()}
    upstream = copy.deepcopy(TINY_RUN_CONFIG)
    for name in ("trained_model", "sample_generations"):
        del upstream["ops"][name]
    assert dg.materialize(ASSETS, selection=list(upstream["ops"]), run_config=upstream, resources=resources,
                          instance=instance).success
    for launcher in ["in_process", "subprocess"] * rounds:
        config = copy.deepcopy(TINY_RUN_CONFIG["ops"]["trained_model"])
        config["config"].update(launcher=launcher, resume=False)
        start = time.perf_counter()
        result = dg.materialize(ASSETS, selection=["trained_model"], run_config={"ops": {"trained_model": config}},
                                resources=resources, instance=instance)
        seconds = time.perf_counter() - start
        metadata = result.asset_materializations_for_node("trained_model")[0].metadata
        print(f"{launcher:>10}: step {seconds:5.1f} s, training {metadata['training_seconds'].value:5.2f} s",
              flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
