"""Tests for gpt_pipeline.interop.commands: the import-gpt-rs and export-hf subcommands.

The commands are mounted on a parser of our own (as the CLI mounts them) and run through their
handlers; the imported directory is then used by the real ``gpt-pipeline generate``.
"""

import argparse
import json

import pytest
import torch

from gpt_pipeline import cli
from gpt_pipeline.training.checkpoint import load_checkpoint
from gpt_pipeline.interop import gpt_rs_files as files
from gpt_pipeline.interop.commands import add_interop_commands
from gpt_pipeline.interop.ron import RonError
from gpt_pipeline.model.gpt import GPT, GPTConfig
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline.tokenizer.bundle import write_bundle
from gpt_pipeline.training.loop import TrainConfig
from gpt_pipeline_tests.file_writers import save_gpt_rs_checkpoint, write_train_config, write_transformer_config

STORIES = ["Once upon a time a cat sat.", 'The dog said "hi" to the cat.\nThe end.', "A cat and a dog.",
           "Once the dog ran.", "The cat ran to the dog."] * 4


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="gpt-pipeline")
    add_interop_commands(root.add_subparsers(dest="command", required=True))
    return root


@pytest.fixture
def gpt_rs_run(tmp_path):
    """gpt-rs's files for a tokenizer trained on STORIES and a small random model."""
    tokenizer = BPETokenizer.train(STORIES, 60)
    config = GPTConfig(vocab_size=60, embedding_size=16, context_length=8, head_count=2, block_count=1,
                       feed_forward_multiplier=2)
    torch.manual_seed(0)
    model = GPT(config).eval()
    d = tmp_path / "gpt-rs"
    return {
        "tokenizer": tokenizer, "model": model,
        "dataset": files.write_dataset(d / "dataset.ron", tokenizer, tokenizer.encode_batch(STORIES)),
        "config": write_transformer_config(d / "transformer_config.ron", config),
        "train": write_train_config(d / "train_config.ron", TrainConfig(training_iterations=100)),
        "checkpoint": save_gpt_rs_checkpoint(d / "final.safetensors", model),
    }


def import_args(run, out, *extra):
    return ["import-gpt-rs", "--dataset-file", str(run["dataset"]), "--transformer-config-file",
            str(run["config"]), "--transformer-safetensors", str(run["checkpoint"]), "--output", str(out),
            *extra]


@pytest.mark.parametrize(
    "command, options",
    [
        ("import-gpt-rs", ["--dataset-file", "--transformer-config-file", "--transformer-safetensors",
                           "--train-config-file", "--training-percentage", "--output", "generate"]),
        ("export-hf", ["--model", "--tokenizer", "--output", "AutoModelForCausalLM", "AutoTokenizer"]),
    ],
)
def test_help_describes_every_option(capsys, command, options):
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in options:
        assert option in text


def test_missing_required_options_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(["import-gpt-rs", "--dataset-file", "d.ron"])
    assert exit_info.value.code == 2
    assert "--transformer-config-file" in capsys.readouterr().err


def test_import_then_generate_with_the_cli(tmp_path, gpt_rs_run, capsys):
    out = tmp_path / "imported"
    args = parser().parse_args(import_args(gpt_rs_run, out, "--train-config-file", str(gpt_rs_run["train"]),
                                           "--training-percentage", "0.75"))
    args.handler(args)
    line = capsys.readouterr().out
    assert line.count("\n") == 1
    assert line.startswith(f"imported gpt-rs model ({gpt_rs_run['model'].num_parameters():,} parameters, "
                           f"60 tokens, 20 stories / ")
    assert line.rstrip().endswith("bpe_tokenizer.json, dataset.parquet, model.safetensors, run_config.yaml")
    imported, _ = load_checkpoint(out / "model.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(imported.state_dict().values(),
                                                  gpt_rs_run["model"].state_dict().values()))
    assert "training_iterations: 100" in (out / "run_config.yaml").read_text()
    assert "training_percentage: 0.75" in (out / "run_config.yaml").read_text()

    status = cli.main(["generate", "--dataset-dir", str(out), "--transformer-safetensors",
                       str(out / "model.safetensors"), "--input", "Once", "--token-count", "6"])
    printed = capsys.readouterr().out
    assert status == 0 and printed.startswith("Once")


def test_import_errors_are_one_line_value_or_file_errors(tmp_path, gpt_rs_run):
    root = parser()
    missing = import_args(gpt_rs_run, tmp_path / "out")
    missing[2] = str(tmp_path / "absent.ron")
    args = root.parse_args(missing)
    with pytest.raises(FileNotFoundError, match="absent.ron' does not exist"):
        args.handler(args)
    bad = tmp_path / "bad.ron"
    bad.write_text("(vocab_size: 60,\n embedding_size: 16\n context_length: 8)")
    broken = import_args(gpt_rs_run, tmp_path / "out")
    broken[4] = str(bad)
    args = root.parse_args(broken)
    with pytest.raises(RonError, match=r"bad\.ron: line 3, column 2: expected ',' or '\)', found 'c'"):
        args.handler(args)
    assert not (tmp_path / "out").exists()


def test_export_hf_from_an_imported_directory(tmp_path, gpt_rs_run, capsys):
    imported = tmp_path / "imported"
    args = parser().parse_args(import_args(gpt_rs_run, imported))
    args.handler(args)
    capsys.readouterr()
    out = tmp_path / "hf"
    args = parser().parse_args(["export-hf", "--model", str(imported / "model.safetensors"),
                                "--tokenizer", str(imported), "--output", str(out)])
    args.handler(args)
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and line.startswith("exported GPT-2 model (")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 60
    # a tokenizer file instead of its directory works the same
    args = parser().parse_args(["export-hf", "--model", str(imported / "model.safetensors"), "--tokenizer",
                                str(imported / "bpe_tokenizer.json"), "--output", str(tmp_path / "hf2")])
    args.handler(args)
    assert (tmp_path / "hf2" / "tokenizer.json").read_text() == (out / "tokenizer.json").read_text()


def test_export_hf_errors(tmp_path, gpt_rs_run):
    root = parser()
    args = root.parse_args(["export-hf", "--model", str(gpt_rs_run["checkpoint"]), "--tokenizer",
                            str(tmp_path / "nothing"), "--output", str(tmp_path / "hf")])
    with pytest.raises(FileNotFoundError, match="tokenizer '.*nothing' does not exist"):
        args.handler(args)
    write_bundle(gpt_rs_run["tokenizer"], tmp_path / "tokenizer.json")
    args = root.parse_args(["export-hf", "--model", str(gpt_rs_run["checkpoint"]), "--tokenizer",
                            str(tmp_path / "tokenizer.json"), "--output", str(tmp_path / "hf")])
    with pytest.raises(ValueError, match="not a gpt_pipeline checkpoint"):  # a gpt-rs file: import it first
        args.handler(args)
    assert not (tmp_path / "hf").exists()
