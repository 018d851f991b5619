"""Dagster metadata that people read on an asset's page: tables the UI shows inline.

The UI renders a table entry inline whatever its size, but Markdown or JSON of 1,000 characters
or more only behind a "[Show ...]" link; so a training's loss curve is a table of its evaluations
(the picture is beside it, and in MLflow), and the champion's standings are a table of narrow
columns. Every figure is written by ``training.metrics.figure_text``, as in the CLI's tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from gpt_pipeline.training.metrics import figure_text

STANDINGS_COLUMNS = (  # (header, row key)
    ("rank", "rank"), ("variant", "variant"), ("test_bpc", "test_bits_per_character"),
    ("test_loss", "test_loss"), ("tokens/s", "tokens_per_second"), ("train_s", "training_seconds"),
    ("mlflow_run", "mlflow_run_id"), ("overrides / note", "note"),
)


def loss_table(evaluations: Sequence) -> dg.MetadataValue:
    """The loss curve as a table: one row per evaluation (``training.loop.Evaluation``): step,
    train and test loss."""
    schema = dg.TableSchema(columns=[dg.TableColumn("step", "int"), dg.TableColumn("train_loss", "string"),
                                     dg.TableColumn("test_loss", "string")])
    records = [dg.TableRecord({"step": e.step, "train_loss": figure_text("train_loss", e.train_loss),
                               "test_loss": figure_text("test_loss", e.test_loss)}) for e in evaluations]
    return dg.MetadataValue.table(records, schema=schema)


def standings_table(rows: Sequence[dict]) -> dg.MetadataValue:
    """The champion's standings (``defs.champion.standings``' rows) as a table: a ranked
    variant's overrides, or why a variant has no rank, in the last column."""
    def cell(row: dict, key: str) -> str:
        if key == "rank":
            return str(row["rank"]) if row.get("rank") else "-"
        if key == "variant":
            return str(row["variant"])
        if key == "mlflow_run_id":
            return (row.get(key) or "-")[:8]
        if key == "note":
            return row.get("note") or row.get("overrides") or ""
        return figure_text(key, row.get(key)) if row.get("rank") else "-"

    schema = dg.TableSchema(columns=[dg.TableColumn(header, "string") for header, _ in STANDINGS_COLUMNS])
    records = [dg.TableRecord({header: cell(row, key) for header, key in STANDINGS_COLUMNS}) for row in rows]
    return dg.MetadataValue.table(records, schema=schema)
