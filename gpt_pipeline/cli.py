"""``gpt-pipeline``: gpt-rs's commands (tokenize, train, generate) over the same core as the assets.

The CLI only parses arguments and dispatches to the core's steps, the same functions the assets
call: ``data.story_files.write_stories``, ``tokenizer.from_stories.train_tokenizer``,
``data.encode_stories.write_dataset``, ``training`` and ``model.generations.generate_samples``; a
dataset folder holds a tokenizer bundle (``tokenizer.bundle``) and ``dataset.parquet`` with its
token arrays, byte for byte the files of the assets ``bpe_tokenizer`` and ``tokenized_dataset``.
Options mirror gpt-rs's where it has them; every default comes from the core's config classes.
Bad input ends with one line on stderr and exit status 2, never a traceback.

    gpt-pipeline tokenize [--data-parquet F] [--vocab-size N] [--output-dir D]
    gpt-pipeline train --dataset-dir D [--learning-rate ...] [--output-dir R]
    gpt-pipeline generate --model data/champion_model.safetensors --input TEXT   (or models:/gpt-pipeline@champion)
    gpt-pipeline materialize [--config configs/quickstart.yaml]   (the Dagster job, in process)
    gpt-pipeline import-gpt-rs --dataset-file D.ron --transformer-config-file C.ron ...
    gpt-pipeline export-hf --model CHECKPOINT --tokenizer TOKENIZER --output DIR
    gpt-pipeline compare [--tracking-uri URI]    (training runs ranked by test loss)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

PROG = "gpt-pipeline"


def _add_dataclass_options(parser: argparse.ArgumentParser, cls, skip: set[str], title: str,
                           flags: dict[str, tuple[str, str | None]] | None = None) -> None:
    """One ``--field-name`` option per dataclass field, typed, defaulted and described from its
    declaration (``gpt_pipeline.fields``): the help shows the description, the choices and the
    default. ``flags`` renames a field's option (and its attribute): ``{field: (flag, metavar)}``."""
    from gpt_pipeline import fields

    group = parser.add_argument_group(title)
    for name, info in fields.fields_of(cls).items():
        if name in skip:
            continue
        default = info.get_default(call_default_factory=True)
        flag, metavar = (flags or {}).get(name, ("--" + name.replace("_", "-"), None))
        base = fields.field_type(info)
        text = fields.describe(info).replace("%", "%%")
        dest = flag.lstrip("-").replace("-", "_")
        choices = fields.choices(info)
        if base is bool:
            action = group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                                        dest=dest, help=text)
        elif choices:
            action = group.add_argument(flag, type=base, choices=choices, default=default, dest=dest,
                                        help=(info.description or "").replace("%", "%%"))  # choices: in the metavar
        else:
            action = group.add_argument(flag, type=base, default=default, dest=dest,
                                        metavar=metavar or name.upper(), help=text)
        if default is not None and "%(default)" not in (action.help or ""):  # Python 3.11's
            action.help = f"{action.help} (default: %(default)s)".lstrip()  # BooleanOptionalAction adds it


def build_parser() -> argparse.ArgumentParser:
    from gpt_pipeline.data.config import DatasetConfig, StoriesConfig
    from gpt_pipeline.model.gpt import GPTConfig
    from gpt_pipeline.model.generations import GenerationConfig
    from gpt_pipeline.tokenizer.config import TokenizerConfig
    from gpt_pipeline.training.config import TrainConfig

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="gpt-rs's tokenizer, transformer and sampler from the command line "
        "(the Dagster assets run the same code).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tok = commands.add_parser(
        "tokenize",
        help="train the BPE tokenizer on a Parquet file and encode every story",
        description="Train gpt-rs's BPE tokenizer on the stories and encode them, as the assets "
        "bpe_tokenizer and tokenized_dataset do (the same files, byte for byte). Writes into --output-dir "
        "the tokenizer bundle bpe_tokenizer.json (+ bpe_tokenizer.vocab.txt, bpe_tokenizer.hf.json for "
        "Hugging Face) and dataset.parquet (+ dataset.token_arrays.safetensors).",
    )
    _add_dataclass_options(tok, StoriesConfig, set(), "stories", {
        "path": ("--data-parquet", "FILE"), "text_column": ("--text-column", "NAME"),
        "seed": ("--corpus-seed", None)})
    _add_dataclass_options(tok, TokenizerConfig, set(), "tokenizer (gpt-rs BPE)")
    _add_dataclass_options(tok, DatasetConfig, set(), "dataset")
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
    train.add_argument("--progress-seconds", type=float, default=5.0, metavar="S",
                       help="seconds of training between progress lines (step, loss, tokens/s, time "
                       "left), besides one per evaluation; 0: after every step (default: %(default)s)")
    _add_dataclass_options(train, GPTConfig, {"vocab_size"}, "transformer (gpt-rs transformer_config)")
    _add_dataclass_options(train, TrainConfig, set(), "training (gpt-rs train_config)")

    gen = commands.add_parser(
        "generate",
        help="continue a prompt with a trained model",
        description="Sample text from a trained checkpoint, as gpt-rs's generate does.",
    )
    gen.add_argument("--transformer-safetensors", "--model", required=True, metavar="FILE|URI",
                     help="the model: a checkpoint (train's final.safetensors, data/champion_model.safetensors, "
                     "data/trained_model/VARIANT.safetensors) or a registered model, models:/gpt-pipeline@champion")
    gen.add_argument("--tokenizer", metavar="FILE|DIR", help="a bpe_tokenizer.json or its folder (default: "
                     "--dataset-dir's; a models:/ URI's own; else the one stored beside the model or in the data directory)")
    gen.add_argument("--dataset-dir", metavar="DIR", help="output of `tokenize` (for its tokenizer)")
    gen.add_argument("--tracking-uri", metavar="URI", help="MLflow store of a models:/ URI (default: "
                     "$MLFLOW_TRACKING_URI, else sqlite:///<project>/mlruns/mlflow.db)")
    gen.add_argument("--input", required=True, metavar="TEXT", help="the prompt")
    _add_dataclass_options(gen, GenerationConfig, {"prompts"}, "sampling")

    mat = commands.add_parser(
        "materialize",
        help="run the Dagster job train_gpt_job (the whole lineage) in this process",
        description="Materialize every asset with a Dagster run config, recording the run in the "
        "Dagster instance at $DAGSTER_HOME (a temporary one when unset), then print the generations.",
    )
    mat.add_argument("--config", metavar="YAML", help="Dagster run config file (ops: {asset: {config: ...}})")
    mat.add_argument("--job", default="train_gpt_job", help="job to run (default: train_gpt_job)")
    mat.add_argument("--select", metavar="ASSETS", help="materialize only these assets of the job, comma "
                     "separated (as the UI's 'Materialize selected'): the others are read as stored")
    mat.add_argument("--storage-url", metavar="URL", help="store assets in this folder or fsspec URL, e.g. "
                     "s3://bucket/prefix (default: $GPT_PIPELINE_STORAGE_URL, else the data directory)")
    mat.add_argument("--partition", metavar="VARIANT", help="the variant to materialize (trained_model and "
                     "sample_generations): one the instance knows; default: 'default', added when missing")
    mat.add_argument("--quiet", action="store_true", help="Dagster's log at warnings only, no generations printed")

    from gpt_pipeline.defs.sweep_command import add_sweep_command
    from gpt_pipeline.interop.commands import add_interop_commands
    from gpt_pipeline.tracking.compare import add_compare_command

    add_sweep_command(commands)
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
    from gpt_pipeline.defs.materialize import materialize_run, with_console
    from gpt_pipeline.defs.sweeps import check_run_config

    run_config = {}
    if args.config:
        config_path = Path(args.config)
        if not config_path.is_file():
            raise FileNotFoundError(f"run config {args.config!r} does not exist")
        run_config = yaml.safe_load(config_path.read_text()) or {}
        check_run_config(run_config, f"run config {args.config!r} is invalid")  # the bounds too
    if os.environ.get("DAGSTER_HOME"):
        from gpt_pipeline.storage import exclusive

        # The first instance in a new DAGSTER_HOME creates its SQLite storage (alembic): two runs
        # started together race there ("table alembic_version already exists"). Take turns.
        with exclusive(os.environ["DAGSTER_HOME"]):
            instance = dg.DagsterInstance.get()
    else:
        instance = dg.DagsterInstance.ephemeral()
    storage = AssetFileIOManager(base_url=args.storage_url)
    job = with_console(build_defs(storage).resolve_job_def(args.job))
    result = materialize_run(instance, job, run_config, args.select, args.partition, args.quiet, args.config)
    selection = [name.strip() for name in (args.select or "").split(",") if name.strip()] or None
    if args.quiet or (selection is not None and "sample_generations" not in selection):
        print(f"\nDagster run {result.run_id} succeeded; assets are in {storage.base_dir()}.")
        return
    partition = result.dagster_run.tags.get("dagster/partition")
    with storage.path_for(dg.AssetKey("sample_generations"), ".parquet", partition).open("rb") as handle:
        generations = pl.read_parquet(handle)
    for row in generations.iter_rows(named=True):
        print(f"\n=== {row['prompt']!r} (sample {row['sample']}) ===\n{row['text']}")
    print(f"\nDagster run {result.run_id} succeeded; assets are in {storage.base_dir()}.")


DATASET_FILE = "dataset.parquet"  # beside the tokenizer bundle in a dataset folder


def _tokenize(args: argparse.Namespace) -> None:
    import shutil
    import tempfile

    from gpt_pipeline import provenance
    from gpt_pipeline.data.config import DatasetConfig, StoriesConfig
    from gpt_pipeline.data.encode_stories import write_dataset
    from gpt_pipeline.data.story_files import write_stories
    from gpt_pipeline.data.table_file import TableFile
    from gpt_pipeline.tokenizer.bundle import write_bundle
    from gpt_pipeline.tokenizer.config import TokenizerConfig
    from gpt_pipeline.tokenizer.from_stories import train_tokenizer

    stories_config = StoriesConfig(path=args.data_parquet, text_column=args.text_column,
                                   num_stories=args.num_stories, seed=args.corpus_seed)
    tokenizer_config = TokenizerConfig(vocab_size=args.vocab_size)
    dataset_config = DatasetConfig(training_percentage=args.training_percentage)
    source = Path(args.data_parquet).name if args.data_parquet else "embedded"
    out = Path(args.output_dir or f"datasets/dataset_{args.vocab_size}_{source}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {str(out)!r} exists and is not a directory")
    # Work beside the output (the same filesystem: publishing is a rename); nothing in `out`
    # changes until every file is complete.
    base = next(p for p in (out, *out.parents) if p.exists())
    work = Path(tempfile.mkdtemp(prefix=".gpt-pipeline-tokenize.", dir=base))
    try:
        stats = write_stories(work / "stories.parquet", stories_config)
        stories = TableFile(work / "stories.parquet")
        made_from = {"raw_stories": provenance.of(stories, "raw_stories")}  # recorded as the assets record it
        tokenizer, tok_stats = train_tokenizer(stories, tokenizer_config)
        provenance.attach(tokenizer, provenance.made("bpe_tokenizer", provenance.tokenizer_digest(tokenizer), made_from))
        made_from["bpe_tokenizer"] = provenance.of(tokenizer, "bpe_tokenizer")
        footer = provenance.footer(provenance.made("tokenized_dataset", "", made_from))
        dataset, data_stats = write_dataset(tokenizer, stories, dataset_config, work / DATASET_FILE,
                                            metadata=footer)
        write_bundle(tokenizer, out)
        dataset.publish(out / DATASET_FILE)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{stats['rows_kept']} stories, {tok_stats['vocab_size']} tokens "
        f"({tok_stats['alphabet_size']} characters + {tok_stats['merges']} merges) in "
        f"{tok_stats['training_seconds']:.1f} s, {data_stats['tokens']} tokens "
        f"({data_stats['train_stories']} train / {data_stats['test_stories']} test stories) -> {out}"
    )


def _checked(command: str, inputs: dict, labels: dict, remedy: str) -> None:
    """Refuse (``ProvenanceError``, one line) inputs that were not made from each other; warn
    about files that record no provenance (written before it was recorded)."""
    from gpt_pipeline import provenance

    for warning in provenance.check_inputs(command, inputs, labels, remedy):
        print(f"{PROG}: warning: {warning}", file=sys.stderr)


def _bundle_file(directory: Path) -> Path:
    """The tokenizer file of a dataset folder, for messages."""
    from gpt_pipeline.tokenizer.bundle import find_bundle

    return find_bundle(directory) or directory


def _load_dataset_dir(directory: str):
    """The folder `tokenize` wrote and its tokenizer (folders of earlier versions too)."""
    from gpt_pipeline.tokenizer.bundle import bundle_path, find_bundle, read_bundle

    path = Path(directory)
    missing = [name for name, present in [(bundle_path(path).name, find_bundle(path) is not None),
                                          (DATASET_FILE, (path / DATASET_FILE).is_file())] if not present]
    if missing:
        raise FileNotFoundError(f"dataset directory {str(path)!r} has no {missing[0]}: run `{PROG} tokenize` first")
    return path, read_bundle(path)


def _train(args: argparse.Namespace) -> None:
    from gpt_pipeline.data.dataset_files import load_splits
    from gpt_pipeline.model.gpt import GPTConfig
    from gpt_pipeline.data.table_file import TableFile
    from gpt_pipeline.training.loop import TrainConfig, train
    from gpt_pipeline.training.progress import progress_line

    from gpt_pipeline import provenance
    from gpt_pipeline.training.checkpoint import PROVENANCE_KEY, add_checkpoint_metadata

    path, tokenizer = _load_dataset_dir(args.dataset_dir)
    inputs = {"tokenized_dataset": provenance.of(TableFile.stored_at(path / DATASET_FILE), "tokenized_dataset"),
              "bpe_tokenizer": provenance.of(tokenizer, "bpe_tokenizer")}
    _checked("train", inputs, {"tokenized_dataset": str(path / DATASET_FILE),
                               "bpe_tokenizer": str(_bundle_file(path))},
             f"run `{PROG} tokenize --output-dir {path}` again")
    options = vars(args)
    model_config = GPTConfig(
        vocab_size=tokenizer.vocab_size,
        **{f.name: options[f.name] for f in dataclasses.fields(GPTConfig) if f.name != "vocab_size"},
    )
    train_config = TrainConfig(**{f.name: options[f.name] for f in dataclasses.fields(TrainConfig)})
    out = Path(args.output_dir or f"training/run_{time.strftime('%Y%m%d_%H%M%S')}")

    def report(evaluation) -> None:
        print(progress_line(evaluation, train_config.training_iterations), flush=True)

    if train_config.num_processes > 1 or train_config.nnodes > 1:  # torchrun workers read the file themselves
        from gpt_pipeline.training.torchrun import launch

        result = launch(model_config, train_config, path / DATASET_FILE, out, report)
        if result is None:  # node_rank > 0: node 0 reports and saves
            print(f"node {train_config.node_rank} of {train_config.nnodes} done; node 0 holds the result")
            return
    else:  # memory-mapped from the dataset's token arrays when it has them
        train_data, test_data = load_splits(TableFile.stored_at(path / DATASET_FILE))
        result = train(model_config, train_config, train_data, test_data, out, report,
                       on_progress=lambda progress: print(progress.line(), flush=True),
                       progress_seconds=args.progress_seconds)
    record = provenance.made("trained_model", provenance.weights_digest(result.model), inputs)
    add_checkpoint_metadata(out / "final.safetensors", {PROVENANCE_KEY: record.to_json()})
    print(f"trained {result.steps} steps in {result.seconds:.1f} s -> {out / 'final.safetensors'}")


def _generate(args: argparse.Namespace) -> None:
    from gpt_pipeline import provenance
    from gpt_pipeline.model.generations import GenerationConfig, generate_samples
    from gpt_pipeline.tokenizer.bundle import read_bundle
    from gpt_pipeline.tracking.generate_command import generation_inputs
    from gpt_pipeline.training.checkpoint import load_checkpoint

    config = GenerationConfig(
        prompts=(args.input,), token_count=args.token_count, temperature=args.temperature,
        top_k=args.top_k, num_samples=args.num_samples, seed=args.seed, unknown=args.unknown,
    )
    with generation_inputs(args.transformer_safetensors, args.tokenizer, args.dataset_dir, args.tracking_uri) as found:
        tokenizer = read_bundle(found.tokenizer)
        model, _ = load_checkpoint(found.model)
    if not found.same_origin:
        inputs = {"trained_model": provenance.of(model, "trained_model"), "bpe_tokenizer": provenance.of(tokenizer, "bpe_tokenizer")}
        _checked("generate", inputs, {"trained_model": found.model_label, "bpe_tokenizer": found.tokenizer_label},
                 "pass the --tokenizer (or --dataset-dir) the model was trained with")
    frame = generate_samples(model, tokenizer, config)
    print("\n\n".join(frame["text"]))


COMMANDS = {"tokenize": _tokenize, "train": _train, "generate": _generate, "materialize": _materialize}


INTERRUPTIBLE = ("materialize", "sweep")  # commands that run Dagster runs: SIGTERM ends them as Ctrl-C


@contextlib.contextmanager
def _interruptible(wanted: bool):
    """SIGINT and SIGTERM raise KeyboardInterrupt for the ``with`` block (the command's runs end
    FAILURE, it exits 130 in a line), then are set back. Even a background job, whose shell made
    it ignore SIGINT, needs this: Dagster's in-process runs give SIGTERM SIGINT's handler after."""
    if not wanted or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    for number in previous:
        signal.signal(number, signal.default_int_handler)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def main(argv: Sequence[str] | None = None) -> int:
    from gpt_pipeline.storage import StorageFault

    args = build_parser().parse_args(argv)
    try:
        handler = getattr(args, "handler", None) or COMMANDS[args.command]
        with _interruptible(args.command in INTERRUPTIBLE):
            handler(args)
    except (ValueError, RuntimeError, FileNotFoundError, IsADirectoryError, PermissionError, StorageFault) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
