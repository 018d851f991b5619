"""Dagster metadata that people read on an asset's page: tables the UI shows inline.

The UI renders a table entry inline whatever its size, but Markdown or JSON of 1,000 characters
or more only behind a "[Show ...]" link; so a training's loss curve is a table of its evaluations
(the picture is beside it, and in MLflow), and the champion's standings are a table of narrow
columns. Every figure is written by ``training.metrics.figure_text``, as in the CLI's tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote

import dagster as dg

from gpt_pipeline.training.metrics import figure_text

# The UI's metadata column is about 380 px wide in a 1440 px window: each table keeps to five
# narrow columns, so none is cut off on the right (test_first_hour_e2e measures it).
STANDINGS_COLUMNS = (  # (header, row key)
    ("rank", "rank"), ("variant", "variant"), ("test_bpc", "test_bits_per_character"),
    ("test_loss", "test_loss"), ("tokens/s", "tokens_per_second"),
)
VARIANT_COLUMNS = (("variant", "variant"), ("train_s", "training_seconds"), ("mlflow_run", "mlflow_run_id"),
                   ("overrides / note", "note"))
EVALUATION_COLUMNS = (("variant", "variant"), ("rouge_l", "eval_rouge_l"), ("rep_4gram", "eval_repeated_4gram_rate"),
                      ("unseen", "eval_unseen_word_rate"))  # model_evaluation's headline figures


def mlflow_picture(ui_url: str, run_id: str, artifact: str) -> str:
    """Markdown showing an image artifact of an MLflow run, as the MLflow UI at ``ui_url`` serves
    it (its ``get-artifact`` route), with a link to the run.

    Example:
        >>> print(mlflow_picture("http://127.0.0.1:5000/", "ab12", "loss_curve.png"))
        ![loss_curve.png of MLflow run ab12 (shown while the MLflow UI runs)](http://127.0.0.1:5000/get-artifact?path=loss_curve.png&run_uuid=ab12)
    """
    base = ui_url.rstrip("/")
    return (f"![{artifact} of MLflow run {run_id} (shown while the MLflow UI runs)]"
            f"({base}/get-artifact?path={quote(artifact)}&run_uuid={quote(run_id)})")


def loss_table(evaluations: Sequence) -> dg.MetadataValue:
    """The loss curve as a table: one row per evaluation (``training.loop.Evaluation``): step,
    train and test loss."""
    schema = dg.TableSchema(columns=[dg.TableColumn("step", "int"), dg.TableColumn("train_loss", "string"),
                                     dg.TableColumn("test_loss", "string")])
    records = [dg.TableRecord({"step": e.step, "train_loss": figure_text("train_loss", e.train_loss),
                               "test_loss": figure_text("test_loss", e.test_loss)}) for e in evaluations]
    return dg.MetadataValue.table(records, schema=schema)


def _cell(row: dict, key: str) -> str:
    if key == "rank":
        return str(row["rank"]) if row.get("rank") else "-"
    if key == "variant":
        return str(row["variant"])
    if key == "mlflow_run_id":
        return (row.get(key) or "-")[:8]
    if key == "note":
        return row.get("note") or row.get("overrides") or ""
    if key.startswith("eval_"):  # shown whenever the variant's model was evaluated
        return figure_text(key, row.get(key))
    return figure_text(key, row.get(key)) if row.get("rank") else "-"


def _table(rows: Sequence[dict], columns: tuple[tuple[str, str], ...]) -> dg.MetadataValue:
    schema = dg.TableSchema(columns=[dg.TableColumn(header, "string") for header, _ in columns])
    return dg.MetadataValue.table([dg.TableRecord({header: _cell(row, key) for header, key in columns})
                                   for row in rows], schema=schema)


def standings_tables(rows: Sequence[dict]) -> dict[str, dg.MetadataValue]:
    """The champion's standings (``defs.champion.standings``' rows) as three tables: ``standings``
    (rank and figures), ``variants`` (training seconds, MLflow run, a ranked variant's overrides
    or why a variant has no rank) and ``evaluation`` (model_evaluation's headline figures)."""
    return {"standings": _table(rows, STANDINGS_COLUMNS), "variants": _table(rows, VARIANT_COLUMNS),
            "evaluation": _table(rows, EVALUATION_COLUMNS)}
