"""Every bad input of issue 7 answered clearly through the CLI (the Dagster path is in
``test_reliability_inputs``, whose cases and baseline lineage this module shares).

``gpt-pipeline tokenize | train | generate | materialize``: exit status 2, one line on stderr
(``gpt-pipeline: error: ...``) naming the value, no traceback, output files unchanged. The
catalogue runs ``main()`` in this process; one case per command also runs as a real process.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gpt_pipeline.training.checkpoint import save_checkpoint
from gpt_pipeline.cli import main
from gpt_pipeline.data.splits import build_dataset_table
from gpt_pipeline.defs.sweeps import DEFAULT_VARIANT
from gpt_pipeline.tokenizer.bundle import read_bundle, write_bundle
from gpt_pipeline_tests.reliability_support import child_env, tree_digest, write_run_config
from gpt_pipeline_tests.test_reliability_inputs import (  # noqa: F401 - baseline and ws are fixtures
    CHECKPOINT_CORRUPTIONS,
    MODEL_CASES,
    SNOWMAN,
    SOURCE_CASES,
    _mismatched_model,
    _parquet,
    _source_not_parquet,
    _truncate,
    baseline,
    ws,
)
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG


@dataclass
class CliFiles:
    dataset: Path  # bpe_tokenizer.json (a bundle) + dataset.parquet, as `gpt-pipeline tokenize` writes them
    checkpoint: Path
    run: Path  # a training run folder with checkpoints, as `gpt-pipeline train` writes them


@pytest.fixture
def cli(ws):
    dataset = ws.tmp / "dataset"
    dataset.mkdir()
    write_bundle(read_bundle(ws.data / "bpe_tokenizer.json"), dataset)
    shutil.copy(ws.data / "tokenized_dataset.parquet", dataset / "dataset.parquet")
    checkpoint = ws.tmp / "model.safetensors"
    shutil.copy(ws.data / "trained_model" / f"{DEFAULT_VARIANT}.safetensors", checkpoint)
    (run,) = (ws.data / "checkpoints" / "trained_model" / DEFAULT_VARIANT).iterdir()
    shutil.copytree(run, ws.tmp / "run")
    return CliFiles(dataset, checkpoint, ws.tmp / "run")


def _cli(capsys, argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, fragments, unrecorded: int = 0) -> None:
    """Exit status 2 and one error line; ``unrecorded``: that many warning lines before it, each
    about a file written by hand here, which records no provenance (gpt_pipeline.provenance)."""
    assert code == 2, f"exit status {code}, stderr {err!r}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    warnings, lines = lines[:unrecorded], lines[unrecorded:]
    assert all(w.startswith("gpt-pipeline: warning: ") and "records no provenance" in w for w in warnings), err
    assert len(lines) == 1 and lines[0].startswith("gpt-pipeline: error: "), err
    for fragment in fragments:
        found = fragment.search(lines[0]) if isinstance(fragment, re.Pattern) else fragment in lines[0]
        assert found, f"{getattr(fragment, 'pattern', fragment)!r} not in {lines[0]!r}"


@pytest.mark.parametrize("case", list(SOURCE_CASES))
def test_cli_tokenize_rejects_bad_source(cli, capsys, case):
    config, fragments = SOURCE_CASES[case](cli.dataset.parent)
    argv = ["tokenize", "--output-dir", cli.dataset, "--vocab-size", "300"]
    argv += ["--data-parquet", config["path"]] if "path" in config else ["--num-stories", config["num_stories"]]
    argv += ["--text-column", config["text_column"]] if "text_column" in config else []
    before = tree_digest(cli.dataset)
    assert_one_line_error(*_cli(capsys, argv), fragments)
    assert tree_digest(cli.dataset) == before


def _small_corpus(directory: Path) -> str:
    # alphabet: ' ', 'a', 'b', 'c' (4 characters); pieces 'abc', ' abc', 'cab'
    return _parquet(directory, "abc.parquet", {"text": ["abc abc", "cab"]})


@pytest.mark.parametrize(
    "options, fragments",
    [
        (["--vocab-size", "3"], [re.compile(r"\b4\b"), re.compile(r"\b3\b"), "vocab_size"]),
        (["--vocab-size", "100"], ["100", "no pair left to merge"]),
        (["--vocab-size", "0"], ["vocab_size", "got 0"]),
        (["--vocab-size", "4", "--training-percentage", "1.5"], ["training_percentage", "got 1.5"]),
        (["--vocab-size", "4", "--training-percentage", "0"], ["training_percentage", "got 0.0"]),
        (["--vocab-size", "4", "--training-percentage", "nan"], ["training_percentage", "got nan"]),
        # floor(2 * 0.1) = 0 train stories
        (["--vocab-size", "4", "--training-percentage", "0.1"], ["training_percentage=0.1", "empty"]),
    ],
    ids=["vocab_below_alphabet", "vocab_above_reachable", "vocab_zero", "percentage_above_one",
         "percentage_zero", "percentage_nan", "percentage_empty_train_split"],
)
def test_cli_tokenize_rejects_bad_settings(cli, capsys, options, fragments):
    argv = ["tokenize", "--output-dir", cli.dataset, "--data-parquet", _small_corpus(cli.dataset.parent), *options]
    before = tree_digest(cli.dataset)
    assert_one_line_error(*_cli(capsys, argv), fragments)
    assert tree_digest(cli.dataset) == before


CLI_TRAIN = {
    "--embedding-size": 32, "--context-length": 16, "--head-count": 2, "--block-count": 1,
    "--feed-forward-multiplier": 2, "--learning-rate": 0.003, "--training-iterations": 40,
    "--evaluation-interval": 20, "--evaluation-iterations": 2, "--contexts-per-batch": 8, "--seed": 7,
    "--device": "cpu",
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_cli_train_rejects_bad_config_before_training(cli, capsys, case):
    overrides, fragments = MODEL_CASES[case]
    options = {**CLI_TRAIN, **{"--" + k.replace("_", "-"): v for k, v in overrides.items()}}
    argv = ["train", "--dataset-dir", cli.dataset, "--output-dir", cli.run]
    for flag, value in options.items():
        argv += [flag, value]
    before = tree_digest(cli.run)
    assert_one_line_error(*_cli(capsys, argv), fragments)
    assert tree_digest(cli.run) == before, "the run folder's checkpoints changed"


def test_cli_train_test_split_without_a_usable_story(cli, capsys):
    table = pq.read_table(cli.dataset / "dataset.parquet")
    token_lists = table.column("tokens").to_pylist()
    resplit = build_dataset_table(token_lists, 300, 0.995)  # 199 train, 1 test
    pq.write_table(resplit, cli.dataset / "dataset.parquet")
    test_length = len(token_lists[-1])
    argv = ["train", "--dataset-dir", cli.dataset, "--output-dir", cli.run]
    for flag, value in {**CLI_TRAIN, "--context-length": test_length, "--contexts-per-batch": 1}.items():
        argv += [flag, value]
    before = tree_digest(cli.run)
    assert_one_line_error(*_cli(capsys, argv), ["test", f"context_length + 1 = {test_length + 1}"], unrecorded=1)
    assert tree_digest(cli.run) == before


@pytest.mark.parametrize("corruption", list(CHECKPOINT_CORRUPTIONS))
def test_cli_generate_unreadable_checkpoint(cli, capsys, corruption):
    CHECKPOINT_CORRUPTIONS[corruption](cli.checkpoint)
    argv = ["generate", "--dataset-dir", cli.dataset, "--transformer-safetensors", cli.checkpoint,
            "--input", "Once", "--token-count", "5"]
    assert_one_line_error(*_cli(capsys, argv), [str(cli.checkpoint), "safetensors"])


def test_cli_generate_checkpoint_whose_vocabulary_does_not_match(cli, capsys):
    save_checkpoint(cli.checkpoint, _mismatched_model(50))
    argv = ["generate", "--dataset-dir", cli.dataset, "--transformer-safetensors", cli.checkpoint,
            "--input", "Once", "--token-count", "5"]
    assert_one_line_error(*_cli(capsys, argv), [re.compile(r"\b50\b"), re.compile(r"\b300\b"), "vocab"],
                          unrecorded=1)


@pytest.mark.parametrize(
    "options, fragments",
    [
        (["--input", ""], ["prompt", "empty"]),
        (["--input", f"Once {SNOWMAN}"], [SNOWMAN, "U+2603"]),
        (["--temperature", "0"], ["temperature", "got 0.0"]),
        (["--temperature", "-1"], ["temperature", "got -1.0"]),
        (["--temperature", "nan"], ["temperature", "nan"]),
        (["--temperature", "inf"], ["temperature", "inf"]),
        (["--token-count", "0"], ["token_count", "got 0"]),
        (["--top-k", "0"], ["top_k", "got 0"]),
        (["--num-samples", "0"], ["num_samples", "got 0"]),
    ],
    ids=["empty_prompt", "unseen_character", "temperature_zero", "temperature_negative", "temperature_nan",
         "temperature_inf", "token_count_zero", "top_k_zero", "num_samples_zero"],
)
def test_cli_generate_rejects_bad_sampling(cli, capsys, options, fragments):
    argv = ["generate", "--dataset-dir", cli.dataset, "--transformer-safetensors", cli.checkpoint,
            "--input", "Once", "--token-count", "5", *options]
    assert_one_line_error(*_cli(capsys, argv), fragments)


def test_cli_generate_skips_unseen_characters_when_asked(cli, capsys):
    argv = ["generate", "--dataset-dir", cli.dataset, "--transformer-safetensors", cli.checkpoint,
            "--input", f"Once {SNOWMAN}", "--token-count", "5", "--unknown", "skip"]
    assert main([str(a) for a in argv]) == 0
    assert capsys.readouterr().out.startswith(f"Once {SNOWMAN}")


def _materialize_errors(code: int, err: str, fragments) -> None:
    """``materialize`` runs Dagster, whose log goes to stderr: the error is the last line, the only
    one of ours."""
    assert code == 2, f"exit status {code}, stderr tail {err[-2000:]!r}"
    assert "Traceback (most recent call last)" not in err, err[-3000:]
    ours = [line for line in err.strip().splitlines() if line.startswith("gpt-pipeline:")]
    assert len(ours) == 1 and err.strip().splitlines()[-1] == ours[0], err[-2000:]
    for fragment in fragments:
        assert fragment in ours[0], f"{fragment!r} not in {ours[0]!r}"


def test_cli_materialize_bad_value_names_it(ws, capsys):
    run_config = copy.deepcopy(TINY_RUN_CONFIG)
    run_config["ops"]["bpe_tokenizer"]["config"]["vocab_size"] = 0
    config = write_run_config(ws.tmp / "bad.yaml", run_config)
    before = ws.snapshot()
    _materialize_errors(*_cli(capsys, ["materialize", "--config", config]), ["vocab_size", "got 0"])
    assert ws.snapshot() == before


def test_cli_materialize_unknown_key_names_it(ws, capsys):
    run_config = copy.deepcopy(TINY_RUN_CONFIG)
    run_config["ops"]["trained_model"]["config"]["embeding_size"] = 32
    config = write_run_config(ws.tmp / "bad.yaml", run_config)
    before = ws.snapshot()
    _materialize_errors(*_cli(capsys, ["materialize", "--config", config]), ["embeding_size"])
    assert ws.snapshot() == before


# --- the CLI as a real process: status 2, one stderr line, no traceback ------------------------


def _cli_process(argv: list, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpt_pipeline", *map(str, argv)],
        capture_output=True, text=True, timeout=180, cwd=tmp, env=child_env(),
    )


@pytest.mark.parametrize("command", ["tokenize", "generate"])
def test_cli_process_exits_2_with_one_line(cli, command):
    if command == "tokenize":
        config, fragments = _source_not_parquet(cli.dataset.parent)
        argv = ["tokenize", "--data-parquet", config["path"], "--output-dir", cli.dataset]
    else:
        _truncate(cli.checkpoint)
        fragments = [str(cli.checkpoint)]
        argv = ["generate", "--dataset-dir", cli.dataset, "--transformer-safetensors", cli.checkpoint,
                "--input", "Once"]
    done = _cli_process(argv, cli.dataset.parent)
    assert_one_line_error(done.returncode, done.stderr, fragments)
