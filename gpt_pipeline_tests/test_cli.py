"""The CLI: its help, the tokenize -> train -> generate round trip, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gpt_pipeline.cli import build_parser, main

TINY_TRAIN = [
    "--embedding-size", "16", "--context-length", "8", "--head-count", "2", "--block-count", "1",
    "--training-iterations", "6", "--evaluation-interval", "3", "--evaluation-iterations", "1",
    "--contexts-per-batch", "4", "--device", "cpu",
]


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("tokenize", "train", "generate", "materialize", "import-gpt-rs", "export-hf", "compare"):
        assert command in out


@pytest.mark.parametrize(
    "command, options",
    [
        ("tokenize", ["--data-parquet", "--vocab-size", "--training-percentage", "--output-dir"]),
        ("train", ["--dataset-dir", "--embedding-size", "--learning-rate", "--evaluation-interval", "--seed"]),
        ("generate", ["--transformer-safetensors", "--input", "--token-count", "--temperature", "--top-k"]),
    ],
)
def test_command_help_documents_options(capsys, command, options):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    for option in options:
        assert option in out, option


def test_defaults_come_from_the_config_classes():
    from gpt_pipeline.model.gpt import GPTConfig
    from gpt_pipeline.training.loop import TrainConfig

    args = build_parser().parse_args(["train", "--dataset-dir", "x"])
    assert args.embedding_size == GPTConfig().embedding_size
    assert args.learning_rate == TrainConfig().learning_rate
    assert args.contexts_per_batch == TrainConfig().contexts_per_batch


def test_tokenize_train_generate_round_trip(tmp_path, capsys):
    dataset = tmp_path / "dataset"
    assert main(["tokenize", "--num-stories", "60", "--vocab-size", "120", "--output-dir", str(dataset)]) == 0
    assert (dataset / "tokenizer.json").is_file() and (dataset / "dataset.parquet").is_file()
    run = tmp_path / "run"
    assert main(["train", "--dataset-dir", str(dataset), "--output-dir", str(run), *TINY_TRAIN]) == 0
    assert (run / "final.safetensors").is_file()
    capsys.readouterr()
    code = main([
        "generate", "--dataset-dir", str(dataset), "--transformer-safetensors", str(run / "final.safetensors"),
        "--input", "Once", "--token-count", "10", "--seed", "1",
    ])
    assert code == 0
    assert capsys.readouterr().out.startswith("Once")


def test_bad_input_is_one_line_on_stderr_with_status_2(tmp_path):
    missing = tmp_path / "nope.parquet"
    done = subprocess.run(
        [sys.executable, "-m", "gpt_pipeline", "tokenize", "--data-parquet", str(missing),
         "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "Traceback" not in done.stderr
