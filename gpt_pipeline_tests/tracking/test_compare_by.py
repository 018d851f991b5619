"""``gpt-pipeline compare --by NAME`` against a real MLflow SQLite store: training runs ranked by
an evaluation figure (``eval_<NAME>``, as model_evaluation logs it on them), best first in the
metric's own direction; a name no run has is one clear line."""

from __future__ import annotations

import pytest

from gpt_pipeline import cli
from gpt_pipeline.defs.evaluation import PREFIX
from gpt_pipeline.tracking.compare import EVALUATION_PREFIX, compare_runs, format_comparison
from gpt_pipeline.tracking.tracker import Tracker

RUNS = {  # variant: (test bits per character, ROUGE-L, repeated 4-gram rate)
    "small": (1.10, 0.12, 0.30),
    "large": (0.90, 0.20, 0.01),
    "odd": (0.80, 0.05, 0.02),
}


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri)
    for variant, (bpc, rouge, repeats) in RUNS.items():
        with tracker.run(f"trained_model-{variant}", tags={"dagster.asset_key": "trained_model",
                                                           "gpt_pipeline/variant": variant}) as run:
            run.log_metrics({"final_test_loss": bpc * 3, "final_test_bits_per_character": bpc,
                             "eval_rouge_l": rouge, "eval_repeated_4gram_rate": repeats})
    with tracker.run("trained_model-unevaluated", tags={"dagster.asset_key": "trained_model",
                                                        "gpt_pipeline/variant": "new"}) as run:
        run.log_metrics({"final_test_loss": 0.3, "final_test_bits_per_character": 0.1})
    return uri


def test_the_prefix_is_the_evaluation_assets():
    assert EVALUATION_PREFIX == PREFIX


def test_ranked_by_an_evaluation_figure_in_its_direction(store):
    assert [r["variant"] for r in compare_runs(store)] == ["new", "odd", "large", "small"]  # bits per character
    by_rouge = compare_runs(store, by="rouge_l")  # higher is better; the unevaluated run last
    assert [(r["rank"], r["variant"], r["eval_rouge_l"]) for r in by_rouge] == [
        (1, "large", 0.20), (2, "small", 0.12), (3, "odd", 0.05), (4, "new", None)]
    by_repeats = compare_runs(store, by="eval_repeated_4gram_rate")  # lower is better, full name too
    assert [r["variant"] for r in by_repeats] == ["large", "odd", "small", "new"]
    by_loss = compare_runs(store, by="final_test_loss")  # any metric of the runs
    assert [r["variant"] for r in by_loss] == ["new", "odd", "large", "small"]
    assert "eval_rouge_l" in format_comparison(by_rouge).splitlines()[0]


def test_the_cli_prints_the_ranking_and_refuses_an_unknown_metric(store, capsys):
    assert cli.main(["compare", "--tracking-uri", store, "--by", "rouge_l"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["1", "large"] and "0.2000" in lines[1]
    assert cli.main(["compare", "--tracking-uri", store, "--by", "bleu"]) != 0
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "--by bleu: no training run has a metric 'bleu' or 'eval_bleu'" in error
    assert cli.main(["compare", "--tracking-uri", store, "--by", "a b;c"]) != 0
    assert "is not a metric name" in capsys.readouterr().err
