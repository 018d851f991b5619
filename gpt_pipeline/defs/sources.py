"""The source of the stories, observed: its data version is its content hash.

``stories_source`` is an observable source asset upstream of ``raw_stories``. Each observation
hashes the Parquet file that ``raw_stories`` reads (``$GPT_PIPELINE_SOURCE_PARQUET``; the embedded
corpus when unset: nothing is read from a sweep file when the code location loads) and reports the
SHA-256 as the data version. A change of content is a new data version: the lineage below turns
stale and, with the ``retrain_on_new_data`` sensor on, declarative automation re-materializes
it (``RETRAIN``: every variant included, then the champion). A touch that changes nothing
(same bytes, new modification time) is the same data version, and nothing runs. The file is
hashed again only when its size or modification time changed since the last observation.
"""


import os
import warnings
from pathlib import Path

import dagster as dg

from gpt_pipeline.provenance import file_digest

SOURCE_ENV = "GPT_PIPELINE_SOURCE_PARQUET"
SOURCE_KEY = dg.AssetKey("stories_source")
EMBEDDED_VERSION = "embedded-corpus"  # the corpus the code generates: it changes with the code only
# What re-materializes an asset when its inputs change: every asset of the lineage (each variant
# partition of trained_model and sample_generations on its own). Partitioned and unpartitioned
# assets never share a run, so the change travels one tick per step: the data assets, then every
# variant, then the champion.
RETRAIN = dg.AutomationCondition.eager()


def following(asset: str) -> dg.AutomationCondition:
    """``eager()``, updated by ``asset`` alone: champion_model follows the variants' evaluations
    (an update of tokenized_dataset alone would elect among models of the old data, and a model
    not evaluated yet cannot be elected; it waits while any variant is in progress),
    champion_generations and champion_evaluation follow champion_model (not a new tokenizer alone)."""
    return dg.AutomationCondition.eager().replace(
        "any_deps_updated", dg.AutomationCondition.any_deps_updated().allow(dg.AssetSelection.assets(asset)))


RETRAIN_CHAMPION = following("model_evaluation")
TRAINING_POOL = "training"  # trainings on one machine take turns (dagster.yaml's pool limit)


def watched_path() -> Path | None:
    """The Parquet file of the stories, or None for the embedded corpus."""
    path = os.environ.get(SOURCE_ENV)
    return Path(path) if path else None


def file_state(path: Path, previous: dict | None = None) -> dict:
    """Size, modification time and SHA-256 of ``path``; the hash is reused from ``previous``
    when size and modification time are unchanged (a large file is not read again)."""
    stat = path.stat()
    if previous and previous.get("size") == stat.st_size and previous.get("mtime_ns") == stat.st_mtime_ns:
        return dict(previous)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_digest(path)}


def _previous_state(context: dg.AssetExecutionContext, path: Path) -> dict | None:
    records = context.instance.fetch_observations(SOURCE_KEY, limit=1).records
    if not records or records[0].asset_observation is None:
        return None
    meta = records[0].asset_observation.metadata
    if meta.get("path") is None or meta["path"].value != str(path):
        return None
    return {key: meta[key].value for key in ("size", "mtime_ns", "sha256") if key in meta}


# observable_source_asset is marked beta; it is what makes a data version of a file outside Dagster.
# Its BetaWarning is silenced for this call, not for the process.
with warnings.catch_warnings(action="ignore", category=dg.BetaWarning):
    _observable = dg.observable_source_asset(
        key=SOURCE_KEY,
        group_name="gpt",
        description="The stories raw_stories reads (a Parquet file, or the embedded corpus), observed: "
        "its data version is the file's SHA-256, so only a change of content makes the lineage stale.",
        automation_condition=dg.AutomationCondition.cron_tick_passed("*/5 * * * *"),
    )


@_observable
def stories_source(context: dg.AssetExecutionContext) -> dg.ObserveResult:
    path = watched_path()
    if path is None:
        return dg.ObserveResult(data_version=dg.DataVersion(EMBEDDED_VERSION),
                                metadata={"source": "embedded corpus"})
    if not path.is_file():
        raise dg.Failure(description=f"stories_source: {path} does not exist", allow_retries=False)
    state = file_state(path, _previous_state(context, path))
    return dg.ObserveResult(
        data_version=dg.DataVersion(state["sha256"]),
        metadata={"path": str(path), "size": dg.MetadataValue.int(state["size"]),
                  "mtime_ns": dg.MetadataValue.int(state["mtime_ns"]), "sha256": state["sha256"]},
    )
