"""``gpt-pipeline compare`` against a real MLflow SQLite store: two trainings with different
learning rates ranked by test bits per character (then test loss), the differing params as
columns, the champion marked."""

from __future__ import annotations

import argparse

import pytest

from gpt_pipeline.tracking.tracker import Tracker
from gpt_pipeline.tracking.compare import add_compare_command, compare_runs, differing_params, format_comparison
from gpt_pipeline.tracking.registry import register_training, set_champion
from gpt_pipeline_tests.tracking_helpers import BAD_LR, GOOD_LR, log_training, tiny_data


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpt-pipeline")
    add_compare_command(parser.add_subparsers(dest="command", required=True))
    return parser


def test_two_trainings_ranked_with_the_params_that_differ(tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri)
    data = tiny_data(tmp_path)
    worse = log_training(tracker, data, BAD_LR, tmp_path)  # logged first: ranking is not log order
    better = log_training(tracker, data, GOOD_LR, tmp_path)
    register_training(worse.run, worse.result.test_loss, worse.model_uri)
    best = register_training(better.run, better.result.test_loss, better.model_uri)
    set_champion(tracker.client, best.version)  # as champion_model elects it: registering does not
    # Runs that are not finished trainings stay out: another asset's, and a failed training.
    with tracker.run("bpe_tokenizer-x", tags={"dagster.asset_key": "bpe_tokenizer"}) as other:
        other.log_params({"vocab_size": 999})
        other.log_metrics({"test_loss": 0.1})
    with pytest.raises(RuntimeError):
        with tracker.run("trained_model-failed", tags={"dagster.asset_key": "trained_model"}) as failed:
            failed.log_params({"learning_rate": 0.5})
            failed.log_metrics({"test_loss": 0.01})
            raise RuntimeError("diverged")

    rows = compare_runs(uri)
    assert [r["run_id"] for r in rows] == [better.run.run_id, worse.run.run_id]
    assert [r["rank"] for r in rows] == [1, 2]
    assert rows[0]["test_loss"] == pytest.approx(better.result.test_loss)
    assert rows[1]["train_loss"] == pytest.approx(worse.result.train_loss)
    assert [r["champion"] for r in rows] == [True, False]
    assert [r["learning_rate"] for r in rows] == [str(GOOD_LR), str(BAD_LR)]
    params = set(rows[0]) - {"rank", "run_id", "run_name", "started", "variant", "test_bits_per_character",
                             "test_loss", "train_loss", "champion"}
    assert params == {"learning_rate"}  # everything else is equal in both runs

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the default store of the command
    args = _parser().parse_args(["compare"])
    args.handler(args)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "champion", "variant", "test_bpc", "test_loss", "train_loss",
                                "learning_rate", "run_name", "run_id"]
    assert lines[1].split() == ["1", "*", "-", "-", f"{better.result.test_loss:.4f}", f"{better.result.train_loss:.4f}",
                                str(GOOD_LR), f"trained_model-lr{GOOD_LR}", better.run.run_id]
    assert lines[2].split()[0] == "2" and lines[2].split()[-1] == worse.run.run_id and len(lines) == 3


def test_format_comparison_known_answer():
    rows = [
        {"rank": 1, "run_id": "r1", "run_name": "long-name", "started": "t", "variant": "v1",
         "test_bits_per_character": 0.98765, "test_loss": 1.23456, "train_loss": 1.2, "champion": False,
         "block_count": "2", "learning_rate": "0.001"},
        {"rank": 2, "run_id": "r2", "run_name": "n", "started": "t", "variant": None,
         "test_bits_per_character": None, "test_loss": None, "train_loss": None, "champion": False,
         "block_count": None, "learning_rate": "0.01"},
    ]
    assert format_comparison(rows) == (
        "rank  champion  variant  test_bpc  test_loss  train_loss  block_count  learning_rate  run_name   run_id\n"
        "1               v1       0.9877    1.2346     1.2000      2            0.001          long-name  r1\n"
        "2               -        -         -          -           -            0.01           n          r2"
    )
    assert format_comparison([]) == "no finished training runs"


def test_differing_params():
    assert differing_params([{"a": "1", "b": "2"}, {"a": "1", "b": "3"}, {"a": "1"}]) == ["b"]
    assert differing_params([{"a": "1"}]) == []
    assert differing_params([]) == []


def test_defaults_name_the_project_experiment_and_model():
    import gpt_pipeline.tracking.tracker as tracking
    import gpt_pipeline.tracking.compare as compare
    import gpt_pipeline.tracking.registry as registry

    assert compare.EXPERIMENT_NAME == tracking.EXPERIMENT_NAME
    assert compare.MODEL_NAME == registry.MODEL_NAME


def test_missing_store_or_experiment(tmp_path):
    db = tmp_path / "none" / "mlflow.db"
    with pytest.raises(ValueError, match="no MLflow store at"):
        compare_runs(f"sqlite:///{db}")
    assert not db.exists()  # comparing never creates a store
    Tracker(f"sqlite:///{tmp_path}/mlflow.db", "other")
    with pytest.raises(ValueError, match="experiment 'gpt-pipeline' does not exist"):
        compare_runs(f"sqlite:///{tmp_path}/mlflow.db")
    assert compare_runs(f"sqlite:///{tmp_path}/mlflow.db", "other") == []


def test_bits_per_character_rank_before_a_loss_per_token(tmp_path):
    """Two vocabularies: the run with the lower loss per token has the higher bits per character
    (its tokens are shorter), and ranks second."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri)
    for name, loss, bits in (("small_vocab", 1.5, 1.4), ("large_vocab", 3.0, 1.1)):
        with tracker.run(f"trained_model-{name}", tags={"dagster.asset_key": "trained_model",
                                                        "gpt_pipeline/variant": name}) as run:
            run.log_params({"vocab_size": {"small_vocab": 256, "large_vocab": 4096}[name]})
            run.log_metrics({"final_test_loss": loss, "final_test_bits_per_character": bits})
    rows = compare_runs(uri)
    assert [(r["variant"], r["test_bits_per_character"]) for r in rows] == [("large_vocab", 1.1), ("small_vocab", 1.4)]
