"""Jobs: ``train_gpt_job`` materializes the whole lineage, evaluations included, in process by default.

The in-process executor runs every step in the run's own process: the multiprocess executor
re-imports torch for every step (docs/benchmarks.md: what that costs).
"""

from __future__ import annotations

import dagster as dg

from gpt_pipeline.defs.assets import GROUP
from gpt_pipeline.defs.configs import QUICKSTART

train_gpt_job = dg.define_asset_job(
    "train_gpt_job",
    selection=dg.AssetSelection.groups(GROUP),  # model_evaluation and champion_evaluation included
    executor_def=dg.in_process_executor,
    # Each partition's config (Dagster loads it in the Launchpad once a partition is picked); before
    # that the Launchpad shows the config schema's defaults, which are the same values
    # (``defs.configs.QUICKSTART``). Every field can be edited there.
    config={"ops": {asset: {"config": values} for asset, values in QUICKSTART.items()}},
    description="Materialize the whole gpt-rs lineage: stories, tokenizer, dataset, model, generations, "
    "the model's evaluation, then the champion and its evaluation. "
    "The Launchpad starts from configs/quickstart.yaml.",
)

JOBS = [train_gpt_job]
