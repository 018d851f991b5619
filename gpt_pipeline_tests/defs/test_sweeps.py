"""Sweep files: what is refused before anything runs, and how a variant's config is bound."""

from __future__ import annotations

import pytest
import yaml

from gpt_pipeline.cli import main
from gpt_pipeline.defs.sweeps import SweepError, load_sweep


def _write(tmp_path, text: str, name: str = "sweep.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_sweep_file_is_read_with_its_base(tmp_path):
    _write(tmp_path, yaml.safe_dump({"ops": {"trained_model": {"config": {"training_iterations": 50}},
                                             "raw_stories": {"config": {"num_stories": 300}}}}), "base.yaml")
    sweep = load_sweep(_write(tmp_path, """
base: base.yaml
variants:
  lr_low:  {trained_model: {learning_rate: 0.001}}
  lr_high: {trained_model: {learning_rate: 0.01}, sample_generations: {temperature: 0.9}}
  plain:
"""))
    assert sweep.name == "sweep" and list(sweep.variants) == ["lr_low", "lr_high", "plain"]
    assert sweep.base == {"trained_model": {"training_iterations": 50}, "raw_stories": {"num_stories": 300}}
    assert sweep.overrides("lr_high", "sample_generations") == {"temperature": 0.9}
    assert sweep.describe("lr_high") == "trained_model.learning_rate=0.01, sample_generations.temperature=0.9"
    assert sweep.describe("plain") == "(base)"


BAD_SWEEPS = {
    "unknown asset": ("variants:\n  a: {trained_modle: {learning_rate: 0.01}}\n",
                      "variant 'a': unknown asset 'trained_modle'"),
    "shared asset in a variant": ("variants:\n  a: {bpe_tokenizer: {vocab_size: 512}}\n",
                                  "variant 'a': bpe_tokenizer is shared by every variant: set it under 'base'"),
    "unknown field": ("variants:\n  a: {trained_model: {learning_rat: 0.01}}\n",
                      "variant 'a': trained_model has no field 'learning_rat'"),
    "wrong type": ("variants:\n  a: {trained_model: {training_iterations: many}}\n",
                   "variant 'a': trained_model: TrainConfig.training_iterations must be a positive integer, got 'many'"),
    "a string for a number": ("variants:\n  a: {trained_model: {learning_rate: '0.01'}}\n",
                              "variant 'a': trained_model: TrainConfig.learning_rate must be a finite number > 0, got '0.01'"),
    "out of bounds": ("variants:\n  a: {trained_model: {learning_rate: -1}}\n",
                      "variant 'a': trained_model: TrainConfig.learning_rate must be a finite number > 0, got -1"),
    "bad choice": ("variants:\n  a: {trained_model: {lr_schedule: linear}}\n",
                   "variant 'a': trained_model: TrainConfig.lr_schedule must be one of ('constant', 'cosine'), got 'linear'"),
    "fields that disagree": ("variants:\n  a: {trained_model: {embedding_size: 30, head_count: 4}}\n",
                             "variant 'a': trained_model: "),
    "duplicate name": ("variants:\n  a: {trained_model: {learning_rate: 0.01}}\n  a: {}\n",
                       "'a' is written twice (line 3)"),
    "empty name": ("variants:\n  '': {trained_model: {learning_rate: 0.01}}\n", "variant name '' is empty"),
    "path separator": ("variants:\n  lr/low: {}\n", "variant 'lr/low': a name must be"),
    "dot dot": ("variants:\n  a..b: {}\n", "variant 'a..b': a name must be"),
    "leading dot": ("variants:\n  .hidden: {}\n", "variant '.hidden': a name must be"),
    "no variants": ("variants: {}\n", "'variants' must name at least one variant"),
    "unknown key": ("variant:\n  a: {}\n", "unknown key 'variant'"),
    "missing base": ("base: nowhere.yaml\nvariants:\n  a: {}\n", "run config"),
    "bad base field": ("base: {ops: {raw_stories: {config: {num_storys: 3}}}}\nvariants:\n  a: {}\n",
                       "base: raw_stories has no field 'num_storys'"),
}
LR = "trained_model.learning_rate"
BAD_SEARCHES = {  # a search space: refused in one line before anything runs (no study, no file)
    "unknown search field": ({"n_trials": 2, "space": {"trained_model.learning_rat": {"low": 0.1, "high": 0.2}}},
                             "'trained_model.learning_rat': unknown field"),
    "unknown search asset": ({"n_trials": 2, "space": {"bpe_tokenizer.vocab_size": {"low": 300, "high": 400}}},
                             "'bpe_tokenizer.vocab_size': unknown field"),
    "empty range": ({"n_trials": 2, "space": {LR: {"low": 0.01, "high": 0.01}}}, "empty range (low = high = 0.01)"),
    "low above high": ({"n_trials": 2, "space": {LR: {"low": 0.02, "high": 0.01}}}, "low 0.02 > high 0.01"),
    "log range from zero": ({"n_trials": 2, "space": {"trained_model.residual_dropout": {
        "low": 0.0, "high": 0.2, "log": True}}}, "a log range needs low > 0, got 0.0"),
    "choice of the wrong type": ({"n_trials": 2, "space": {"trained_model.embedding_size": {"choices": [32, "big"]}}},
                                 "trained_model: GPTConfig.embedding_size must be a positive integer, got 'big'"),
    "float bounds of an int field": ({"n_trials": 2, "space": {"trained_model.training_iterations": {
        "low": 10.5, "high": 20}}}, "low and high must be whole numbers, got 10.5"),
    "zero trials": ({"n_trials": 0, "space": {LR: {"low": 0.001, "high": 0.01}}},
                    "search.n_trials must be a whole number of at least 1, got 0"),
    "no budget": ({"space": {LR: {"low": 0.001, "high": 0.01}}}, "search needs n_trials or cpu_seconds"),
    "unknown sampler": ({"n_trials": 2, "sampler": "grid", "space": {LR: {"low": 0.001, "high": 0.01}}},
                        "search.sampler 'grid' is unknown (samplers: tpe, random)"),
    "unknown pruner": ({"n_trials": 2, "pruner": "patient", "space": {LR: {"low": 0.001, "high": 0.01}}},
                       "search.pruner 'patient' is unknown"),
    "unknown pruner option": ({"n_trials": 2, "pruner": {"kind": "median", "patience": 3},
                               "space": {LR: {"low": 0.001, "high": 0.01}}}, "search.pruner median has no option 'patience'"),
}
BAD_SWEEPS.update({case: (yaml.safe_dump({"search": search}), expected) for case, (search, expected) in BAD_SEARCHES.items()})


@pytest.mark.parametrize("case", sorted(BAD_SWEEPS))
def test_a_bad_sweep_file_is_refused_in_one_line_before_anything_runs(case, tmp_path, capsys, monkeypatch):
    text, expected = BAD_SWEEPS[case]
    path = _write(tmp_path, text)
    with pytest.raises(SweepError) as error:
        load_sweep(path)
    message = str(error.value)
    assert expected in message and "\n" not in message, message
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GPT_PIPELINE_DATA_DIR", str(tmp_path / "data"))
    assert main(["sweep", "--sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "data").exists() and not (tmp_path / "home").exists()  # nothing ran


def test_a_missing_sweep_file_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert main(["sweep", "--sweep", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "home").exists()  # no instance, no submission, no daemon


def test_a_search_is_read_and_a_study_database_that_cannot_be_opened_is_named(tmp_path, capsys, monkeypatch):
    sweep = load_sweep(_write(tmp_path, yaml.safe_dump({"name": "s", "search": {
        "n_trials": 3, "cpu_seconds": 60, "pruner": "hyperband", "space": {
            "trained_model.learning_rate": {"low": 0.001, "high": 0.01, "log": True},
            "trained_model.training_iterations": {"low": 20, "high": 60, "step": 20},
            "sample_generations.temperature": {"choices": [0.8, 1.0]}}}})))
    assert sweep.variants == {} and sweep.search.n_trials == 3 and sweep.search.pruner == {"kind": "hyperband"}
    assert sorted((d.key, d.kind) for d in sweep.search.space) == [
        ("sample_generations.temperature", "choice"), ("trained_model.learning_rate", "float"),
        ("trained_model.training_iterations", "int")]
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GPT_PIPELINE_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("GPT_PIPELINE_STUDY_URL", f"sqlite:///{tmp_path / 'file' / 'optuna.db'}")
    assert main(["sweep", "--sweep", str(tmp_path / "sweep.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "study database 'sqlite:///" in err[0] and "optuna.db' cannot be opened" in err[0], err
    assert not (tmp_path / "data").exists() and not (tmp_path / "home").exists()  # nothing ran


def test_the_example_search_reads_over_the_quickstart_config():
    from gpt_pipeline.storage import project_root

    sweep = load_sweep(project_root() / "configs" / "search.yaml")
    assert sweep.search.n_trials == 12 and sweep.search.pruner["kind"] == "median" and sweep.variants == {}
    assert sweep.base["trained_model"]["training_iterations"] == 600  # configs/quickstart.yaml's
    assert {d.asset for d in sweep.search.space} == {"trained_model", "sample_generations"}
