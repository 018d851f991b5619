"""One MLflow parent run per sweep (and its data), with a child run per variant.

MLflow nests a run under another with the tag ``mlflow.parentRunId``; the UI then shows the
sweep as one expandable row whose children are its variants, and charts compare them. The parent
of a sweep on one tokenized dataset is found by its tag ``gpt_pipeline/sweep_key`` (the sweep's
name and the dataset's digest) or created once: processes that train variants of one sweep side
by side take turns on a file lock while they look it up, so they never create two.

Example (the key of sweep ``lr`` on a dataset whose digest starts ``3fa2``):
    >>> sweep_key("lr", "3fa29c0d17e4b5aa")
    'lr@3fa29c0d17e4'
"""

from __future__ import annotations

import hashlib

from gpt_pipeline.storage import data_dir, exclusive
from gpt_pipeline.tracking.tracker import Tracker

PARENT_TAG = "mlflow.parentRunId"
SWEEP_KEY_TAG = "gpt_pipeline/sweep_key"
ROLE_TAG = "gpt_pipeline/role"


def sweep_key(sweep: str, data_digest: str) -> str:
    return f"{sweep}@{data_digest[:12]}"


def sweep_parent_run(tracker: Tracker, sweep: str, data_digest: str) -> str:
    """The id of the parent run of ``sweep`` on the data with digest ``data_digest``, created
    (FINISHED at once: its children carry the work, and each moves its end with ``extend_parent``)
    the first time."""
    key = sweep_key(sweep, data_digest)
    lock = data_dir() / ".locks" / ("mlflow-parent-" + hashlib.sha256(
        f"{tracker.tracking_uri}|{tracker.experiment_id}|{key}".encode()).hexdigest()[:16])
    with exclusive(lock):
        found = tracker.client.search_runs(
            [tracker.experiment_id], f"tags.`{SWEEP_KEY_TAG}` = '{key}'", max_results=1,
            order_by=["attributes.start_time ASC"])
        if found:
            return found[0].info.run_id
        created = tracker.client.create_run(
            tracker.experiment_id, run_name=f"sweep-{key}",
            tags={SWEEP_KEY_TAG: key, ROLE_TAG: "sweep", "gpt_pipeline/sweep": sweep,
                  "made_from.tokenized_dataset": data_digest})
        tracker.client.set_terminated(created.info.run_id, "FINISHED")
        return created.info.run_id


def extend_parent(tracker: Tracker, parent_run_id: str) -> None:
    """Move the end of sweep parent run ``parent_run_id`` to now (never earlier), so that it spans
    the children that ended so far; any other parent is left alone."""
    import time

    parent = tracker.client.get_run(parent_run_id)
    if parent.data.tags.get(ROLE_TAG) != "sweep":
        return
    now = int(time.time() * 1000)
    if (parent.info.end_time or 0) < now:
        tracker.client.set_terminated(parent_run_id, "FINISHED", end_time=now)
