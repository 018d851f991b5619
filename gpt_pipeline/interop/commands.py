"""The ``import-gpt-rs`` and ``export-hf`` commands, for ``gpt_pipeline.cli`` to mount.

``add_interop_commands(subparsers)`` adds both subcommands (each with ``handler`` set as its
default); the handlers print one summary line and raise ``ValueError`` or ``FileNotFoundError``
with a one-line message on bad input, which the CLI turns into one stderr line and exit status 2.
The work itself is in ``gpt_rs_files.import_gpt_rs_run`` and ``hf.export``.

    gpt-pipeline import-gpt-rs --dataset-file D.ron --transformer-config-file C.ron
        --transformer-safetensors S [--train-config-file T.ron] --output DIR
    gpt-pipeline export-hf --model CHECKPOINT --tokenizer TOKENIZER --output DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt_pipeline.data.config import DatasetConfig

DEFAULT_TRAINING_PERCENTAGE = DatasetConfig().training_percentage  # gpt-rs --training-percentage default


def add_interop_commands(subparsers) -> None:
    """Add ``import-gpt-rs`` and ``export-hf`` to ``subparsers`` (``parser.add_subparsers()``)."""
    imp = subparsers.add_parser(
        "import-gpt-rs",
        help="bring a gpt-rs model (dataset .ron, config .ron, checkpoint) into this project",
        description="Read gpt-rs's dataset file (tokenizer and encoded stories), transformer "
        "config, optional train config and safetensors checkpoint, and write into --output: the "
        "tokenizer bundle bpe_tokenizer.json, dataset.parquet, model.safetensors (our checkpoint) and "
        "run_config.yaml (the run's settings as a Dagster run config). Then `gpt-pipeline generate "
        "--dataset-dir DIR --transformer-safetensors DIR/model.safetensors --input TEXT` samples from the imported model.",
    )
    imp.add_argument("--dataset-file", required=True, metavar="D.ron",
                     help="gpt-rs dataset file (char_to_id, id_to_char, mergings, encoded_data)")
    imp.add_argument("--transformer-config-file", required=True, metavar="C.ron",
                     help="gpt-rs transformer_config.ron")
    imp.add_argument("--transformer-safetensors", required=True, metavar="S",
                     help="gpt-rs checkpoint (e.g. final.safetensors)")
    imp.add_argument("--train-config-file", metavar="T.ron",
                     help="gpt-rs train_config.ron (optional: its settings go into run_config.yaml)")
    imp.add_argument("--training-percentage", type=float, default=DEFAULT_TRAINING_PERCENTAGE,
                     help="share of the stories, in file order, in the train split of dataset.parquet "
                     f"(default: {DEFAULT_TRAINING_PERCENTAGE}, as gpt-rs)")
    imp.add_argument("--output", required=True, metavar="DIR", help="directory to write (created if needed)")
    imp.set_defaults(handler=import_gpt_rs)

    exp = subparsers.add_parser(
        "export-hf",
        help="write a model and its tokenizer as a Hugging Face transformers GPT-2 directory",
        description="Write --output as a transformers GPT-2 directory: config.json (ReLU, untied "
        "head), model.safetensors, tokenizer.json, tokenizer_config.json and generation_config.json "
        "(gpt-rs's sampling as generate()'s defaults). "
        "AutoModelForCausalLM.from_pretrained(DIR) gives this model's logits and "
        "AutoTokenizer.from_pretrained(DIR) its token ids.",
    )
    exp.add_argument("--model", required=True, metavar="CHECKPOINT",
                     help="our checkpoint (.safetensors written by train, or import-gpt-rs)")
    exp.add_argument("--tokenizer", required=True, metavar="TOKENIZER",
                     help="our tokenizer (bpe_tokenizer.json), or a folder holding one (`tokenize`'s)")
    exp.add_argument("--output", required=True, metavar="DIR", help="directory to write (created if needed)")
    exp.set_defaults(handler=export_hf)


def import_gpt_rs(args: argparse.Namespace) -> None:
    """Handler of ``import-gpt-rs``: import, then print one summary line."""
    from gpt_pipeline.interop.gpt_rs_files import import_gpt_rs_run

    run = import_gpt_rs_run(
        args.dataset_file, args.transformer_config_file, args.transformer_safetensors, args.output,
        train_config_file=args.train_config_file, training_percentage=args.training_percentage,
    )
    print(
        f"imported gpt-rs model ({run.parameters:,} parameters, {run.vocab_size} tokens, "
        f"{run.stories} stories / {run.tokens:,} tokens) -> {run.output}: {run.tokenizer.name}, "
        f"{run.dataset.name}, {run.model.name}, {run.run_config.name}"
    )


def export_hf(args: argparse.Namespace) -> None:
    """Handler of ``export-hf``: export, then print one summary line."""
    from gpt_pipeline.interop.hf import export
    from gpt_pipeline.tokenizer.bundle import bundle_path, find_bundle, read_bundle
    from gpt_pipeline.training.checkpoint import load_checkpoint

    location = Path(args.tokenizer)
    if find_bundle(location) is None:
        missing = bundle_path(location) if location.is_dir() else location
        raise FileNotFoundError(f"tokenizer {str(missing)!r} does not exist")
    tokenizer = read_bundle(location)
    model, _ = load_checkpoint(args.model)
    out = export(model, tokenizer, args.output)
    print(
        f"exported GPT-2 model ({model.num_parameters():,} parameters, {tokenizer.vocab_size} tokens) "
        f"-> {out}: config.json, generation_config.json, model.safetensors, tokenizer.json, "
        "tokenizer_config.json"
    )
