"""``gpt-pipeline``: gpt-rs's commands (tokenize, train, generate) over the same core as the assets.

The CLI only parses arguments and dispatches to ``gpt_pipeline.pipeline``, ``training`` and
``checkpoint``. Options mirror gpt-rs's where it has them; every default comes from the core's
config classes. Bad input ends with one line on stderr and exit status 2, never a traceback.

    gpt-pipeline tokenize [--data-parquet F] [--vocab-size N] [--output-dir D]
    gpt-pipeline train --dataset-dir D [--learning-rate ...] [--output-dir R]
    gpt-pipeline generate --dataset-dir D --transformer-safetensors S --input TEXT
    gpt-pipeline materialize [--config configs/quickstart.yaml]   (the Dagster job, in process)
    gpt-pipeline import-gpt-rs --dataset-file D.ron --transformer-config-file C.ron ...
    gpt-pipeline export-hf --model CHECKPOINT --tokenizer TOKENIZER --output DIR
    gpt-pipeline compare [--tracking-uri URI]    (training runs ranked by test loss)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

PROG = "gpt-pipeline"


def _add_dataclass_options(parser: argparse.ArgumentParser, cls, skip: set[str], title: str) -> None:
    """One ``--field-name`` option per dataclass field, typed and defaulted from the class."""
    group = parser.add_argument_group(title)
    defaults = cls()
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        default = getattr(defaults, field.name)
        flag = "--" + field.name.replace("_", "-")
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                               help=f"(default: {default})")
        else:
            kind = type(default) if default is not None else str
            group.add_argument(flag, type=kind, default=default, metavar=field.name.upper(),
                               help=f"(default: {default})")


def build_parser() -> argparse.ArgumentParser:
    from gpt_pipeline.data.corpus import DEFAULT_NUM_STORIES
    from gpt_pipeline.model.gpt import GPTConfig
    from gpt_pipeline.pipeline import (
        DEFAULT_CORPUS_SEED,
        DEFAULT_TRAINING_PERCENTAGE,
        DEFAULT_VOCAB_SIZE,
        GenerationConfig,
    )
    from gpt_pipeline.training.loop import TrainConfig

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="gpt-rs's tokenizer, transformer and sampler from the command line "
        "(the Dagster assets run the same code).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tok = commands.add_parser(
        "tokenize",
        help="train the BPE tokenizer on a Parquet file and encode every story",
        description="Train gpt-rs's BPE tokenizer on the stories and encode them. Writes "
        "tokenizer.json (with its listing tokenizer.json.vocab.txt) and dataset.parquet into --output-dir.",
    )
    tok.add_argument("--data-parquet", metavar="FILE", help="Parquet file of stories (default: the "
                     "embedded corpus the project generates)")
    tok.add_argument("--text-column", metavar="NAME", help="text column (default: the first column)")
    tok.add_argument("--num-stories", type=int, default=DEFAULT_NUM_STORIES,
                     help=f"embedded corpus only: stories to generate (default: {DEFAULT_NUM_STORIES})")
    tok.add_argument("--corpus-seed", type=int, default=DEFAULT_CORPUS_SEED,
                     help=f"embedded corpus only: generator seed (default: {DEFAULT_CORPUS_SEED})")
    tok.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE,
                     help=f"vocabulary size (default: {DEFAULT_VOCAB_SIZE})")
    tok.add_argument("--training-percentage", type=float, default=DEFAULT_TRAINING_PERCENTAGE,
                     help=f"share of stories in the train split (default: {DEFAULT_TRAINING_PERCENTAGE})")
    tok.add_argument("--output-dir", metavar="DIR", help="where to write (default: "
                     "datasets/dataset_<vocab size>_<source>)")

    train = commands.add_parser(
        "train",
        help="train the transformer on a tokenized dataset",
        description="Train gpt-rs's transformer on a dataset written by `tokenize`. Checkpoints "
        "<step>.safetensors and final.safetensors go to --output-dir.",
    )
    train.add_argument("--dataset-dir", required=True, metavar="DIR", help="output of `tokenize`")
    train.add_argument("--output-dir", metavar="DIR", help="checkpoint folder (default: "
                       "training/run_<timestamp>)")
    _add_dataclass_options(train, GPTConfig, {"vocab_size"}, "transformer (gpt-rs transformer_config)")
    _add_dataclass_options(train, TrainConfig, set(), "training (gpt-rs train_config)")

    gen = commands.add_parser(
        "generate",
        help="continue a prompt with a trained model",
        description="Sample text from a trained checkpoint, as gpt-rs's generate does.",
    )
    gen.add_argument("--dataset-dir", required=True, metavar="DIR", help="output of `tokenize` "
                     "(for the tokenizer)")
    gen.add_argument("--transformer-safetensors", required=True, metavar="FILE", help="checkpoint")
    gen.add_argument("--input", required=True, metavar="TEXT", help="the prompt")
    defaults = GenerationConfig()
    gen.add_argument("--token-count", type=int, default=defaults.token_count,
                     help=f"new tokens (default: {defaults.token_count})")
    gen.add_argument("--temperature", type=float, default=defaults.temperature,
                     help=f"softmax temperature (default: {defaults.temperature})")
    gen.add_argument("--top-k", type=int, default=defaults.top_k, help="sample among the k likeliest "
                     "tokens (default: all)")
    gen.add_argument("--num-samples", type=int, default=defaults.num_samples,
                     help=f"generations (default: {defaults.num_samples})")
    gen.add_argument("--seed", type=int, default=defaults.seed, help=f"sampling seed (default: {defaults.seed})")
    gen.add_argument("--unknown", choices=["error", "skip"], default=defaults.unknown,
                     help="prompt characters the tokenizer never saw: fail or drop them "
                     f"(default: {defaults.unknown})")

    mat = commands.add_parser(
        "materialize",
        help="run the Dagster job train_gpt_job (the whole lineage) in this process",
        description="Materialize every asset with a Dagster run config, recording the run in the "
        "Dagster instance at $DAGSTER_HOME (a temporary one when unset), then print the generations.",
    )
    mat.add_argument("--config", metavar="YAML", help="Dagster run config file (ops: {asset: {config: ...}})")
    mat.add_argument("--job", default="train_gpt_job", help="job to run (default: train_gpt_job)")
    mat.add_argument("--storage-url", metavar="URL", help="store assets in this folder or fsspec URL, e.g. "
                     "s3://bucket/prefix (default: $GPT_PIPELINE_STORAGE_URL, else the data directory)")

    from gpt_pipeline.interop.commands import add_interop_commands
    from gpt_pipeline.tracking.compare import add_compare_command

    add_interop_commands(commands)
    add_compare_command(commands)
    return parser


def _materialize(args: argparse.Namespace) -> None:
    import os

    import dagster as dg
    import polars as pl
    import yaml

    from gpt_pipeline.definitions import build_defs
    from gpt_pipeline.defs.io_manager import AssetFileIOManager

    run_config = {}
    if args.config:
        config_path = Path(args.config)
        if not config_path.is_file():
            raise FileNotFoundError(f"run config {args.config!r} does not exist")
        run_config = yaml.safe_load(config_path.read_text()) or {}
    if os.environ.get("DAGSTER_HOME"):
        from gpt_pipeline.storage import exclusive

        # The first instance in a new DAGSTER_HOME creates its SQLite storage (alembic): two runs
        # started together race there ("table alembic_version already exists"). Take turns.
        with exclusive(os.environ["DAGSTER_HOME"]):
            instance = dg.DagsterInstance.get()
    else:
        instance = dg.DagsterInstance.ephemeral()
    storage = AssetFileIOManager(base_url=args.storage_url)
    try:
        result = build_defs(storage).resolve_job_def(args.job).execute_in_process(
            run_config=run_config, instance=instance, raise_on_error=False
        )
    except dg.DagsterInvalidConfigError as exc:
        problems = "; ".join(error.message.split(". Expected")[0] for error in exc.errors) or str(exc)
        raise ValueError(f"run config {args.config!r} is invalid: {problems}") from None
    if not result.success:
        failure = next((e for e in result.all_events if e.is_step_failure), None)
        reason = failure.step_failure_data.error.message.strip() if failure else "see the Dagster logs"
        raise RuntimeError(f"job {args.job} failed: {reason.splitlines()[0]}")
    with storage.path_for(dg.AssetKey("sample_generations"), ".parquet").open("rb") as handle:
        generations = pl.read_parquet(handle)
    for row in generations.iter_rows(named=True):
        print(f"\n=== {row['prompt']!r} (sample {row['sample']}) ===\n{row['text']}")
    print(f"\nDagster run {result.run_id} succeeded; assets are in {storage.base_dir()}.")


def _tokenize(args: argparse.Namespace) -> None:
    from gpt_pipeline import pipeline
    from gpt_pipeline.storage import atomic_write

    frame, stats = pipeline.load_stories(args.data_parquet, args.text_column, args.num_stories, args.corpus_seed)
    source = Path(args.data_parquet).name if args.data_parquet else "embedded"
    out = Path(args.output_dir or f"datasets/dataset_{args.vocab_size}_{source}")
    texts = frame["text"].to_list()
    tokenizer, tok_stats = pipeline.train_tokenizer(texts, args.vocab_size)
    table, data_stats = pipeline.tokenize_stories(tokenizer, texts, args.training_percentage)
    import pyarrow.parquet as pq

    tokenizer.save(out / "tokenizer.json")
    atomic_write(out / "dataset.parquet", lambda tmp: pq.write_table(table, tmp))
    print(
        f"{stats['rows_kept']} stories, {tok_stats['vocab_size']} tokens "
        f"({tok_stats['alphabet_size']} characters + {tok_stats['merges']} merges) in "
        f"{tok_stats['training_seconds']:.1f} s, {data_stats['tokens']} tokens "
        f"({data_stats['train_stories']} train / {data_stats['test_stories']} test stories) -> {out}"
    )


def _load_dataset_dir(directory: str):
    from gpt_pipeline.tokenizer import BPETokenizer

    path = Path(directory)
    for name in ("tokenizer.json", "dataset.parquet"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"dataset directory {str(path)!r} has no {name}: run `{PROG} tokenize` first")
    return path, BPETokenizer.load(path / "tokenizer.json")


def _train(args: argparse.Namespace) -> None:
    from gpt_pipeline.data.dataset_files import load_splits
    from gpt_pipeline.model.gpt import GPTConfig
    from gpt_pipeline.pipeline import progress_line
    from gpt_pipeline.data.table_file import TableFile
    from gpt_pipeline.training.loop import TrainConfig, train

    path, tokenizer = _load_dataset_dir(args.dataset_dir)
    options = vars(args)
    model_config = GPTConfig(
        vocab_size=tokenizer.vocab_size,
        **{f.name: options[f.name] for f in dataclasses.fields(GPTConfig) if f.name != "vocab_size"},
    )
    train_config = TrainConfig(**{f.name: options[f.name] for f in dataclasses.fields(TrainConfig)})
    model_config.validate()
    train_config.validate()
    out = Path(args.output_dir or f"training/run_{time.strftime('%Y%m%d_%H%M%S')}")

    def report(evaluation) -> None:
        print(progress_line(evaluation, train_config.training_iterations), flush=True)

    if train_config.num_processes > 1 or train_config.nnodes > 1:  # torchrun workers read the file themselves
        from gpt_pipeline.training.torchrun import launch

        result = launch(model_config, train_config, path / "dataset.parquet", out, report)
        if result is None:  # node_rank > 0: node 0 reports and saves
            print(f"node {train_config.node_rank} of {train_config.nnodes} done; node 0 holds the result")
            return
    else:
        train_data, test_data = load_splits(TableFile.stored_at(path / "dataset.parquet"))
        result = train(model_config, train_config, train_data, test_data, out, report)
    print(f"trained {result.steps} steps in {result.seconds:.1f} s -> {out / 'final.safetensors'}")


def _generate(args: argparse.Namespace) -> None:
    from gpt_pipeline.training.checkpoint import load_checkpoint
    from gpt_pipeline.pipeline import GenerationConfig, generate_samples

    _, tokenizer = _load_dataset_dir(args.dataset_dir)
    config = GenerationConfig(
        prompts=(args.input,), token_count=args.token_count, temperature=args.temperature,
        top_k=args.top_k, num_samples=args.num_samples, seed=args.seed, unknown=args.unknown,
    )
    config.validate()
    model, _ = load_checkpoint(args.transformer_safetensors)
    frame = generate_samples(model, tokenizer, config)
    print("\n\n".join(frame["text"]))


COMMANDS = {"tokenize": _tokenize, "train": _train, "generate": _generate, "materialize": _materialize}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        handler = getattr(args, "handler", None) or COMMANDS[args.command]
        handler(args)
    except (ValueError, RuntimeError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
