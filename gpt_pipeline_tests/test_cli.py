"""The CLI: its help, the tokenize -> train -> generate round trip, the same files as the data
assets, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpt_pipeline.cli import build_parser, main
from gpt_pipeline.data.corpus import generate_stories
from gpt_pipeline.data.dataset_files import load_splits
from gpt_pipeline.data.table_file import TableFile
from gpt_pipeline.definitions import defs

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


def _help_entries(text: str) -> dict[str, str]:
    """``--flag METAVAR`` -> its help text (whitespace joined, words broken at a hyphen rejoined)
    from argparse's ``--help`` output."""
    entries, current = {}, None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("--"):
            head, _, rest = stripped.partition("  ")
            current = head.split(", ")[0]
            entries[current] = rest.strip()
        elif current and line.startswith(" " * 10) and stripped:
            previous = entries[current]
            # argparse wraps after a hyphen inside a word ("gpt-" / "pipeline"): no space there
            joiner = "" if previous[-2:-1].isalnum() and previous.endswith("-") else " "
            entries[current] = f"{previous}{joiner}{stripped}".strip()
        else:
            current = None
    return entries


@pytest.mark.parametrize("command", ["tokenize", "train", "generate"])
def test_help_shows_each_field_description_choices_and_default(capsys, command):
    from gpt_pipeline import fields
    from gpt_pipeline.data.config import DatasetConfig, StoriesConfig
    from gpt_pipeline.model.gpt import GPTConfig
    from gpt_pipeline.model.generations import GenerationConfig
    from gpt_pipeline.tokenizer.config import TokenizerConfig
    from gpt_pipeline.training.config import TrainConfig

    with pytest.raises(SystemExit):
        main([command, "--help"])
    entries = _help_entries(capsys.readouterr().out)
    classes = {"tokenize": [StoriesConfig, TokenizerConfig, DatasetConfig], "train": [GPTConfig, TrainConfig],
               "generate": [GenerationConfig]}[command]
    renamed = {"path": "--data-parquet FILE", "text_column": "--text-column NAME", "seed": "--corpus-seed SEED"}
    for cls in classes:
        for name, info in fields.fields_of(cls).items():
            if name in ("vocab_size", "prompts") and cls in (GPTConfig, GenerationConfig):
                continue  # from the tokenizer; the prompt is --input
            choices = fields.choices(info)
            flag = "--" + name.replace("_", "-")
            if cls is StoriesConfig and name in renamed:
                key = renamed[name]
            elif fields.field_type(info) is bool:
                key = f"{flag}"
            else:
                key = f"{flag} {{{','.join(choices)}}}" if choices else f"{flag} {name.upper()}"
            assert key in entries, (key, sorted(entries))
            text = " ".join(entries[key].split())
            assert " ".join((info.description or "").split()) in text, (key, text)
            if info.default is not None:
                assert text.endswith(f"(default: {info.default})"), (key, text)
            bounds = fields.describe(info).rpartition("(")[2].rstrip(")") if not choices else ""
            if fields.bounds(info):
                assert f"({bounds})" in text, (key, text)


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
    assert (dataset / "bpe_tokenizer.json").is_file() and (dataset / "dataset.parquet").is_file()
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", "--dataset-dir", str(dataset), "--output-dir", str(run), *TINY_TRAIN,
                 "--progress-seconds", "0"]) == 0
    assert (run / "final.safetensors").is_file()
    lines = capsys.readouterr().out.splitlines()
    # a progress line after every step (--progress-seconds 0), an evaluation line at 0, 3 and 6
    assert [line.split(":")[0] for line in lines if ": loss " in line] == [f"step {s}/6" for s in range(1, 7)]
    assert all("tokens/s, elapsed" in line and "remaining" in line for line in lines if ": loss " in line)
    assert [line.split(":")[0] for line in lines if "train loss" in line] == ["step 0/6", "step 3/6", "step 6/6"]
    assert main(["train", "--dataset-dir", str(dataset), "--output-dir", str(run), *TINY_TRAIN]) == 0
    again = capsys.readouterr().out.splitlines()  # the same run, already finished: resumed at its end
    assert again[0].startswith(f"resumed from step 6/6 (checkpoint in {run}; ")
    code = main([
        "generate", "--dataset-dir", str(dataset), "--transformer-safetensors", str(run / "final.safetensors"),
        "--input", "Once", "--token-count", "10", "--seed", "1",
    ])
    assert code == 0
    assert capsys.readouterr().out.startswith("Once")


# the CLI folder's file -> the data assets' file (IO manager, data directory)
SAME_FILES = {
    "bpe_tokenizer.json": "bpe_tokenizer.json",
    "bpe_tokenizer.vocab.txt": "bpe_tokenizer.vocab.txt",
    "bpe_tokenizer.hf.json": "bpe_tokenizer.hf.json",
    "dataset.parquet": "tokenized_dataset.parquet",
    "dataset.token_arrays.safetensors": "tokenized_dataset.token_arrays.safetensors",
}


@pytest.mark.parametrize("source", ["parquet_file", "embedded_corpus"])
def test_tokenize_writes_the_same_bytes_as_the_data_assets(tmp_path, isolated_storage, source):
    """``gpt-pipeline tokenize`` and raw_stories -> bpe_tokenizer -> tokenized_dataset, materialized
    through a real Dagster instance on the same stories: byte-identical tokenizer bundle, dataset
    Parquet file and token arrays (one implementation of each step behind both)."""
    data, _ = isolated_storage
    if source == "parquet_file":
        stories = generate_stories(120, seed=9)
        texts = [None, *stories[:60], "", *stories[60:]]  # null and empty entries are dropped
        path = tmp_path / "user.parquet"
        pq.write_table(pa.table({"id": list(range(len(texts))), "story": pa.array(texts, pa.string())}), path)
        options, stories_config = ["--data-parquet", str(path), "--text-column", "story"], {
            "path": str(path), "text_column": "story"}
    else:
        options, stories_config = ["--num-stories", "120", "--corpus-seed", "4"], {"num_stories": 120, "seed": 4}
    folder = tmp_path / "cli"
    argv = ["tokenize", *options, "--vocab-size", "150", "--training-percentage", "0.8", "--output-dir", str(folder)]
    assert main(argv) == 0

    run_config = {"ops": {
        "raw_stories": {"config": stories_config},
        "bpe_tokenizer": {"config": {"vocab_size": 150}},
        "tokenized_dataset": {"config": {"training_percentage": 0.8}},
    }}
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        job = defs.resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(
            run_config=run_config, instance=instance,
            asset_selection=[dg.AssetKey(k) for k in ("raw_stories", "bpe_tokenizer", "tokenized_dataset")],
        )
        assert result.success
    assert sorted(p.name for p in folder.iterdir()) == sorted(SAME_FILES)  # no work folder left behind
    for ours, theirs in SAME_FILES.items():
        assert (folder / ours).read_bytes() == (data / theirs).read_bytes(), f"{ours} differs from {theirs}"
    assert pq.read_table(folder / "dataset.parquet").num_rows == 120
    train, _ = load_splits(TableFile.stored_at(folder / "dataset.parquet"))  # what `train` reads
    assert isinstance(train.tokens, np.memmap)


def test_train_and_generate_read_a_folder_of_an_earlier_version(tmp_path, capsys):
    """Folders written before tokenizer bundles hold ours as tokenizer.json: still read."""
    dataset = tmp_path / "dataset"
    assert main(["tokenize", "--num-stories", "60", "--vocab-size", "120", "--output-dir", str(dataset)]) == 0
    (dataset / "bpe_tokenizer.json").rename(dataset / "tokenizer.json")
    for name in ("bpe_tokenizer.vocab.txt", "bpe_tokenizer.hf.json", "dataset.token_arrays.safetensors"):
        (dataset / name).unlink()
    run = tmp_path / "run"
    assert main(["train", "--dataset-dir", str(dataset), "--output-dir", str(run), *TINY_TRAIN]) == 0
    capsys.readouterr()
    assert main(["generate", "--dataset-dir", str(dataset), "--transformer-safetensors",
                 str(run / "final.safetensors"), "--input", "Once", "--token-count", "5"]) == 0
    assert capsys.readouterr().out.startswith("Once")
    (dataset / "tokenizer.json").unlink()
    assert main(["generate", "--dataset-dir", str(dataset), "--transformer-safetensors",
                 str(run / "final.safetensors"), "--input", "Once"]) == 2
    assert "has no bpe_tokenizer.json: run `gpt-pipeline tokenize` first" in capsys.readouterr().err


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


@pytest.mark.parametrize(("field", "value", "message"), [
    ("temperature", -1, "sample_generations: GenerationConfig.temperature must be a "
                        "finite number > 0, got -1"),
    ("unknown", "ignore", "sample_generations: GenerationConfig.unknown must be one of ('error', 'skip'), "
                          "got 'ignore'"),
])
def test_materialize_refuses_a_bad_config_before_running_anything(tmp_path, field, value, message):
    import yaml

    from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG

    config = {"ops": {**TINY_RUN_CONFIG["ops"], "sample_generations": {"config": {field: value}}}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    data = tmp_path / "data"
    env = {k: v for k, v in __import__("os").environ.items() if k != "DAGSTER_HOME"}
    done = subprocess.run(
        [sys.executable, "-m", "gpt_pipeline", "materialize", "--config", str(path)], capture_output=True,
        text=True, timeout=300, env={**env, "GPT_PIPELINE_DATA_DIR": str(data),
                                     "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert lines[0].startswith(f"gpt-pipeline: error: run config {str(path)!r} is invalid: ") and message in lines[0]
    assert not data.exists() or not any(data.rglob("*.parquet"))  # nothing was materialized
