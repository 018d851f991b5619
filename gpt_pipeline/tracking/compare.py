"""``gpt-pipeline compare``: the training runs of an MLflow experiment, ranked by test bits per
character (comparable across vocabularies, unlike a loss per token), then test loss.

``compare_runs`` reads the finished ``trained_model`` runs (tag ``dagster.asset_key`` =
``trained_model``, or any run with a ``test_loss`` metric) and returns one row per run, best
first, with its sweep variant (tag ``gpt_pipeline/variant``), with the params whose values differ between the runs (the ones equal everywhere say
nothing about the ranking and are left out). ``format_comparison`` lays the rows out as a text
table. It only reads the store: it never creates one, logs, or moves aliases.

MLflow is imported when a comparison runs, not with this module, so that ``add_compare_command``
costs the CLI nothing (importing mlflow takes over a second).
"""

from __future__ import annotations

import argparse
import math
import re
from datetime import datetime, timezone
from typing import Any


ASSET_KEY_TAG = "dagster.asset_key"
TRAINING_ASSET = "trained_model"
LOSS_METRICS = ("final_test_loss", "test_loss")  # the first present is the run's final test loss
TRAIN_LOSS_METRICS = ("final_train_loss", "train_loss")
BITS_METRICS = ("final_test_bits_per_character", "test_bits_per_character")
EXPERIMENT_NAME = "gpt-pipeline"  # gpt_pipeline.tracking.tracker.EXPERIMENT_NAME (checked by the tests)
MODEL_NAME = "gpt-pipeline"  # gpt_pipeline.tracking.registry.MODEL_NAME (checked by the tests)
FIXED_COLUMNS = ("rank", "run_id", "run_name", "started", "variant", "test_bits_per_character", "test_loss",
                 "train_loss", "champion")


def _final(metrics: dict[str, float], names: tuple[str, ...]) -> float | None:
    for name in names:
        value = metrics.get(name)
        if value is not None and math.isfinite(value):
            return float(value)
    return None


def _utc(milliseconds: int) -> str:
    """An MLflow timestamp as UTC ISO text.

    Example:
        >>> _utc(86_400_000)
        '1970-01-02T00:00:00+00:00'
    """
    return datetime.fromtimestamp(milliseconds / 1000, timezone.utc).isoformat(timespec="seconds")


def differing_params(params_per_run: list[dict[str, str]]) -> list[str]:
    """Names of the params whose values are not the same in every run (a missing param counts
    as a value of its own), sorted; none for fewer than two runs.

    Example:
        >>> differing_params([{"lr": "0.1", "seed": "1"}, {"lr": "0.2", "seed": "1", "x": "3"}])
        ['lr', 'x']
    """
    if len(params_per_run) < 2:
        return []
    names = set().union(*params_per_run)
    return sorted(n for n in names if len({p.get(n) for p in params_per_run}) > 1)


def _search_all(client, experiment_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string="attributes.status = 'FINISHED'",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _champion_run_id(client, model_name: str) -> str | None:
    from mlflow.exceptions import MlflowException

    from gpt_pipeline.tracking.registry import champion_run_id

    try:  # the run that won the election (a version's champion_run_id tag), else the registering run
        return champion_run_id(client.get_model_version_by_alias(model_name, "champion"))
    except MlflowException:
        return None


def compare_runs(
    tracking_uri: str, experiment: str = EXPERIMENT_NAME, model_name: str = MODEL_NAME, by: str | None = None
) -> list[dict[str, Any]]:
    """The finished training runs of ``experiment``, lowest final test bits per character first
    (runs without it after, by test loss).

    Each row: ``rank`` (1 = best), ``run_id``, ``run_name``, ``started`` (UTC, ISO), ``variant``
    (None outside a sweep), ``test_bits_per_character``, ``test_loss`` and ``train_loss`` (final;
    None when absent), ``champion`` (the run behind the ``champion`` alias of ``model_name``) and
    one key per param that differs between the runs. Runs without a finite test loss come last. ``ValueError`` when the store or the experiment does not exist.
    """
    from mlflow.tracking import MlflowClient

    from gpt_pipeline.tracking.tracker import redacted, sqlite_path

    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        raise ValueError(f"no MLflow store at {redacted(tracking_uri)!r}: train a model first")
    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(f"experiment {experiment!r} does not exist in {redacted(tracking_uri)!r}")
    runs = [
        r for r in _search_all(client, found.experiment_id)
        if r.data.tags.get(ASSET_KEY_TAG) == TRAINING_ASSET
        or (ASSET_KEY_TAG not in r.data.tags and "test_loss" in r.data.metrics)
    ]
    columns = differing_params([r.data.params for r in runs])
    champion_run = _champion_run_id(client, model_name) if runs else None
    rows = []
    for run in runs:
        test_loss = _final(run.data.metrics, LOSS_METRICS)
        rows.append({
            "run_id": run.info.run_id,
            "run_name": run.info.run_name or "",
            "started": _utc(run.info.start_time),
            "variant": run.data.tags.get("gpt_pipeline/variant"),
            "test_bits_per_character": _final(run.data.metrics, BITS_METRICS),
            "test_loss": test_loss,
            "train_loss": _final(run.data.metrics, TRAIN_LOSS_METRICS),
            "champion": run.info.run_id == champion_run,
            **{name: run.data.params.get(name) for name in columns},
            **({"by": (metric_named(by, run.data.metrics), by)} if by else {}),
        })
    rows.sort(key=lambda row: (row["test_bits_per_character"] is None, row["test_bits_per_character"] or 0.0,
                               row["test_loss"] is None, row["test_loss"] or 0.0, row["started"]))
    if by:
        rows = ranked_by(rows, by)
    return [{"rank": rank, **row} for rank, row in enumerate(rows, start=1)]


# --- ranking by any metric (--by): the evaluation's figures, eval_<name> on the training runs ---

HIGHER_IS_BETTER = ("rouge_l", "distinct_1", "distinct_2", "distinct_3", "sentence_end_rate", "passed",
                    "tokens_per_second")  # every other metric: lower is better
EVALUATION_PREFIX = "eval_"  # gpt_pipeline.defs.evaluation.PREFIX (checked by the tests)


def metric_named(name: str, metrics: dict[str, float]) -> tuple[str, float] | None:
    """``(metric, value)`` of ``name`` in a run's ``metrics``: the metric itself, else the
    evaluation's ``eval_<name>``; None when the run has neither (or its value is not finite).

    Example:
        >>> metric_named("rouge_l", {"eval_rouge_l": 0.2}), metric_named("test_loss", {"test_loss": 1.5})
        (('eval_rouge_l', 0.2), ('test_loss', 1.5))
    """
    for key in (name, EVALUATION_PREFIX + name):
        value = metrics.get(key)
        if value is not None and math.isfinite(value):
            return key, float(value)
    return None


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` ranks first (ROUGE-L, distinct-n, ...; not a loss).

    Example:
        >>> higher_is_better("eval_rouge_l"), higher_is_better("eval_repeated_4gram_rate")
        (True, False)
    """
    return metric.removeprefix(EVALUATION_PREFIX) in HIGHER_IS_BETTER


def ranked_by(rows: list[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """``rows`` (each with ``"by"``: ``metric_named``'s answer and the name asked for) best first
    by that metric, runs without it last, the earlier order kept among equals; each row gets the
    metric's value under the metric's name. ``ValueError`` when no run has the metric.

    Example:
        >>> rows = [{"run_id": "a", "by": (("eval_rouge_l", 0.1), "rouge_l")},
        ...         {"run_id": "b", "by": (None, "rouge_l")}, {"run_id": "c", "by": (("eval_rouge_l", 0.3), "rouge_l")}]
        >>> [(r["run_id"], r.get("eval_rouge_l")) for r in ranked_by(rows, "rouge_l")]
        [('c', 0.3), ('a', 0.1), ('b', None)]
    """
    found = {row["by"][0][0] for row in rows if row["by"][0] is not None}
    if not found:
        raise ValueError(f"--by {by}: no training run has a metric {by!r} or {EVALUATION_PREFIX + by!r} "
                         "(materialize model_evaluation for the variants first)")
    metric = sorted(found)[0]
    sign = -1.0 if higher_is_better(metric) else 1.0
    out = []
    for row in rows:
        named = row.pop("by")[0]
        out.append({**row, metric: named[1] if named else None})
    return sorted(out, key=lambda row: (row[metric] is None, sign * (row[metric] or 0.0)))


def _cell(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "*" if value else ""
    if isinstance(value, float):
        from gpt_pipeline.training.metrics import figure_text

        return figure_text(name, value)
    return str(value)


def format_comparison(rows: list[dict[str, Any]]) -> str:
    """The rows of ``compare_runs`` as a text table: rank, champion mark, variant, bits per
    character (``test_bpc``), losses, the differing params, run name and id; one line per run
    under a header.

    Example:
        >>> print(format_comparison([
        ...     {"rank": 1, "run_id": "ab12", "run_name": "b", "started": "t", "variant": "lr_high",
        ...      "test_bits_per_character": 1.1, "test_loss": 2.0, "train_loss": 1.9, "champion": True,
        ...      "learning_rate": "0.01"},
        ...     {"rank": 2, "run_id": "cd34", "run_name": "a", "started": "t", "variant": None,
        ...      "test_bits_per_character": None, "test_loss": 2.5, "train_loss": None, "champion": False,
        ...      "learning_rate": "0.0001"}]))
        rank  champion  variant  test_bpc  test_loss  train_loss  learning_rate  run_name  run_id
        1     *         lr_high  1.1000    2.0000     1.9000      0.01           b         ab12
        2               -        -         2.5000     -           0.0001         a         cd34
    """
    if not rows:
        return "no finished training runs"
    params = [k for k in rows[0] if k not in FIXED_COLUMNS]
    names = ["rank", "champion", "variant", "test_bits_per_character", "test_loss", "train_loss", *params,
             "run_name", "run_id"]
    header = [{"test_bits_per_character": "test_bpc"}.get(name, name) for name in names]
    table = [header] + [[_cell(name, row.get(name)) for name in names] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in table)


def add_compare_command(subparsers) -> argparse.ArgumentParser:
    """Add ``compare`` to an argparse subparsers object; its handler is ``run_compare``."""
    parser = subparsers.add_parser(
        "compare",
        help="rank the MLflow training runs by test bits per character",
        description="List the finished trained_model runs of the MLflow experiment, lowest final "
        "test bits per character first (then test loss), with their sweep variant and the params "
        "that differ between them ('*': the run behind the registered model's 'champion' alias).",
    )
    parser.add_argument("--tracking-uri", metavar="URI", default=None,
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else "
                        "sqlite:///<project>/mlruns/mlflow.db)")
    parser.add_argument("--experiment", default=EXPERIMENT_NAME,
                        help=f"MLflow experiment (default: {EXPERIMENT_NAME})")
    parser.add_argument("--by", metavar="NAME", default=None,
                        help="rank by this metric of the training runs instead, best first: any metric "
                        "logged on them, e.g. an evaluation figure (rouge_l, repeated_4gram_rate, "
                        "unseen_word_rate, distinct_2, ...: eval_<NAME>, logged by model_evaluation); "
                        "higher first for ROUGE-L, distinct-n and sentence_end_rate, lower first otherwise")
    parser.set_defaults(handler=run_compare)
    return parser


def run_compare(args: argparse.Namespace) -> None:
    """Print the comparison for ``args.tracking_uri`` (None: the default store)."""
    from gpt_pipeline.tracking.tracker import default_tracking_uri

    by = getattr(args, "by", None)
    if by is not None and not re.fullmatch(r"[A-Za-z0-9_.\-/]{1,250}", by):
        raise ValueError(f"--by {by!r} is not a metric name (letters, digits, _ . - /)")
    rows = compare_runs(args.tracking_uri or default_tracking_uri(), args.experiment, by=by)
    print(format_comparison(rows))
