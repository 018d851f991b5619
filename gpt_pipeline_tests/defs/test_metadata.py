"""The tables people read: every figure written one way (``training.metrics.figure_text``) in the
champion's standings, the sweep's ranking and ``gpt-pipeline compare``; tables kept narrow."""

from __future__ import annotations

from gpt_pipeline.defs.champion import comparison_markdown
from gpt_pipeline.defs.metadata import STANDINGS_COLUMNS, VARIANT_COLUMNS, loss_table, standings_tables
from gpt_pipeline.defs.sweep_runner import ranking_table
from gpt_pipeline.tracking.compare import format_comparison
from gpt_pipeline.training.loop import Evaluation

ROWS = [
    {"rank": 1, "order": 0, "variant": "lr_mid", "overrides": "trained_model.learning_rate=0.002",
     "test_loss": 1.0816349, "test_bits_per_character": 0.33561, "tokens_per_second": 37812.6,
     "training_seconds": 62.25, "mlflow_run_id": "0123456789abcdef", "mlflow_run": "http://x/runs/0123", "note": ""},
    {"rank": None, "order": 1, "variant": "too_short", "overrides": "trained_model.training_iterations=1",
     "test_loss": None, "test_bits_per_character": None, "tokens_per_second": None, "training_seconds": None,
     "mlflow_run_id": None, "mlflow_run": None, "note": "failed (run 1234abcd): beats_unigram"},
]


def test_one_way_of_writing_each_figure_everywhere():
    tables = standings_tables(ROWS)
    standing = [r.data for r in tables["standings"].value.records]
    details = [r.data for r in tables["variants"].value.records]
    assert standing[0] == {"rank": "1", "variant": "lr_mid", "test_bpc": "0.3356", "test_loss": "1.0816",
                           "tokens/s": "37,813"}
    assert details[0] == {"variant": "lr_mid", "train_s": "62.2", "mlflow_run": "01234567",
                          "overrides / note": "trained_model.learning_rate=0.002"}
    assert standing[1]["rank"] == "-" and standing[1]["tokens/s"] == "-"
    assert details[1]["overrides / note"].startswith("failed (run 1234abcd)")
    ranking = ranking_table(ROWS).splitlines()[1].split()
    assert ranking[:6] == ["1", "lr_mid", "0.3356", "1.0816", "37,813", "62.2"]
    markdown = comparison_markdown(ROWS)
    assert "| 1.0816 | 0.3356 | 37,813 | 62.2 |" in markdown and "e+0" not in markdown
    compared = format_comparison([{"rank": 1, "run_id": "r", "run_name": "n", "started": "t", "variant": "lr_mid",
                                   "test_bits_per_character": 0.33561, "test_loss": 1.0816349, "train_loss": None,
                                   "champion": True}])
    assert "0.3356" in compared and "1.0816" in compared


def test_tables_keep_to_five_columns_and_the_loss_history_is_a_table():
    assert len(STANDINGS_COLUMNS) <= 5 and len(VARIANT_COLUMNS) <= 5  # the UI's metadata column is narrow
    history = loss_table([Evaluation(0, 5.72519, 5.71543, None, 1.0, None, 1e-3),
                          Evaluation(40, 4.98834, 5.06614, 500.0, 9.0, 0.0, 1e-3)])
    assert [r.data for r in history.value.records] == [
        {"step": 0, "train_loss": "5.7252", "test_loss": "5.7154"},
        {"step": 40, "train_loss": "4.9883", "test_loss": "5.0661"}]
