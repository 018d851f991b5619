"""The five assets of the gpt-rs lineage, group ``gpt``.

raw_stories -> bpe_tokenizer -> tokenized_dataset -> trained_model -> sample_generations

Each asset reads its config, calls the core (``gpt_pipeline.pipeline`` and friends), logs to
its own MLflow run and returns the value with its metadata; the IO manager stores the value.
"""


import hashlib
import tempfile
from pathlib import Path

import dagster as dg
import polars as pl
import pyarrow as pa

from gpt_pipeline.data import dataset_splits, dataset_stats
from gpt_pipeline.defs.configs import (
    RawStoriesConfig,
    SampleGenerationsConfig,
    TokenizedDatasetConfig,
    TokenizerConfig,
    TrainedModelConfig,
)
from gpt_pipeline.defs.resources import MLflowResource
from gpt_pipeline.model import GPT
from gpt_pipeline.pipeline import (
    fingerprint,
    generate_samples,
    load_stories,
    progress_line,
    tokenize_stories,
    train_tokenizer,
)
from gpt_pipeline.storage import data_dir
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline.training import Evaluation, train

GROUP = "gpt"
OWNERS = ["team:ml"]


def _run_link(mlflow: MLflowResource, run) -> dict[str, dg.MetadataValue]:
    return {
        "mlflow_run_id": dg.MetadataValue.text(run.run_id),
        "mlflow_run": dg.MetadataValue.url(mlflow.run_url(run)),
    }


@dg.asset(
    group_name=GROUP,
    kinds={"polars", "parquet"},
    owners=OWNERS,
    code_version="1",
    description="Stories, one per row in a `text` column: a Parquet file's text column (null and "
    "empty entries dropped) or, with no path, the embedded corpus the project generates itself.",
)
def raw_stories(
    context: dg.AssetExecutionContext, config: RawStoriesConfig, mlflow: MLflowResource
) -> dg.Output[pl.DataFrame]:
    with mlflow.asset_run(context) as run:
        run.log_params(config.model_dump())
        frame, stats = load_stories(config.path, config.text_column, config.num_stories, config.seed)
        characters = int(frame["text"].str.len_chars().sum())
        run.log_metrics({"stories": stats["rows_kept"], "characters": characters})
    return dg.Output(
        frame,
        metadata={
            "source": stats["source"],
            "stories": stats["rows_kept"],
            "rows_read": stats["rows_read"],
            "null_dropped": stats["null_dropped"],
            "empty_dropped": stats["empty_dropped"],
            "characters": characters,
            "preview": dg.MetadataValue.md(_quote(frame["text"][0] if len(frame) else "")),
            **_run_link(mlflow, run),
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds={"python", "mlflow"},
    owners=OWNERS,
    code_version="1",
    description="gpt-rs's byte-pair-encoding tokenizer over characters, trained on every story: "
    "no merges across spaces, quotes or newlines; ties go to the largest pair.",
)
def bpe_tokenizer(
    context: dg.AssetExecutionContext,
    config: TokenizerConfig,
    raw_stories: pl.DataFrame,
    mlflow: MLflowResource,
) -> dg.Output[BPETokenizer]:
    with mlflow.asset_run(context) as run:
        run.log_params(config.model_dump())
        tokenizer, stats = train_tokenizer(raw_stories["text"].to_list(), config.vocab_size)
        run.log_metrics({k: stats[k] for k in ("alphabet_size", "merges", "training_seconds", "chars_per_token_test")})
        with tempfile.TemporaryDirectory() as tmp:
            run.log_artifact(_save_tokenizer_files(tokenizer, Path(tmp)), "tokenizer")
    return dg.Output(
        tokenizer,
        metadata={
            "vocab_size": stats["vocab_size"],
            "alphabet_size": stats["alphabet_size"],
            "merges": stats["merges"],
            "chars_per_token_test": dg.MetadataValue.float(stats["chars_per_token_test"]),
            "training_seconds": dg.MetadataValue.float(stats["training_seconds"]),
            "longest_tokens": dg.MetadataValue.json(stats["longest_tokens"]),
            **_run_link(mlflow, run),
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds={"pyarrow", "parquet"},
    owners=OWNERS,
    code_version="1",
    description="Every story encoded with the tokenizer: a list<uint16> `tokens` column (uint32 "
    "above 65,536 tokens) and gpt-rs's split (`split`: the first training_percentage train).",
)
def tokenized_dataset(
    context: dg.AssetExecutionContext,
    config: TokenizedDatasetConfig,
    raw_stories: pl.DataFrame,
    bpe_tokenizer: BPETokenizer,
    mlflow: MLflowResource,
) -> dg.Output[pa.Table]:
    with mlflow.asset_run(context) as run:
        run.log_params(config.model_dump())
        table, stats = tokenize_stories(bpe_tokenizer, raw_stories["text"].to_list(), config.training_percentage)
        run.log_metrics(stats)
    return dg.Output(
        table,
        metadata={
            **{k: dg.MetadataValue.int(v) for k, v in stats.items() if isinstance(v, int)},
            "encoding_seconds": dg.MetadataValue.float(stats["encoding_seconds"]),
            "length_stats": dg.MetadataValue.json(dataset_stats(table)),
            **_run_link(mlflow, run),
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "safetensors", "mlflow"},
    owners=OWNERS,
    code_version="1",
    description="gpt-rs's causal decoder transformer trained on the train split (AdamW, gradient "
    "values clamped to 0.5), evaluated on both splits every evaluation_interval steps; stored as "
    "one safetensors file with its config in the metadata.",
)
def trained_model(
    context: dg.AssetExecutionContext,
    config: TrainedModelConfig,
    tokenized_dataset: pa.Table,
    bpe_tokenizer: BPETokenizer,
    mlflow: MLflowResource,
) -> dg.Output[GPT]:
    model_config = config.gpt_config(bpe_tokenizer.vocab_size)
    train_config = config.training_config()
    model_config.validate()
    train_config.validate()
    train_data, test_data = dataset_splits(tokenized_dataset)
    data_hash = hashlib.sha256(train_data.tokens.tobytes() + test_data.tokens.tobytes()).hexdigest()
    run_key = fingerprint(model_config, {k: v for k, v in vars(train_config).items() if k != "resume"}, data_hash)
    checkpoint_dir = data_dir() / "checkpoints" / "trained_model" / run_key
    with mlflow.asset_run(context) as run:
        params = {**model_config.to_dict(), **vars(train_config)}
        run.log_params(params)
        run.set_tags({"checkpoint_dir": str(checkpoint_dir), "dataset_sha256": data_hash})

        reported: set[int] = set()

        def report(evaluation: Evaluation) -> None:
            reported.add(evaluation.step)
            context.log.info(progress_line(evaluation, train_config.training_iterations))
            run.log_metrics(
                {
                    "train_loss": evaluation.train_loss,
                    "test_loss": evaluation.test_loss,
                    "tokens_per_second": evaluation.tokens_per_second or float("nan"),
                },
                step=evaluation.step,
            )

        result = train(model_config, train_config, train_data, test_data, checkpoint_dir, report)
        for evaluation in result.evaluations:  # those restored from a checkpoint when resuming
            if evaluation.step not in reported:
                run.log_metrics(
                    {"train_loss": evaluation.train_loss, "test_loss": evaluation.test_loss}, step=evaluation.step
                )
        final = result.evaluations[-1]
        summary = {
            "final_train_loss": final.train_loss,
            "final_test_loss": final.test_loss,
            "training_seconds": result.seconds,
            "tokens_per_second": result.tokens_per_second,
            "parameters": result.model.num_parameters(),
        }
        run.log_metrics(summary)
        run.log_artifact(checkpoint_dir / "final.safetensors", "checkpoint")
        with tempfile.TemporaryDirectory() as tmp:
            run.log_artifact(_save_tokenizer_files(bpe_tokenizer, Path(tmp)), "tokenizer")
        run.log_dict(params, "config.json")
    history = [
        {"step": e.step, "train_loss": round(e.train_loss, 4), "test_loss": round(e.test_loss, 4)}
        for e in result.evaluations
    ]
    return dg.Output(
        result.model,
        metadata={
            "train_loss": dg.MetadataValue.float(final.train_loss),
            "test_loss": dg.MetadataValue.float(final.test_loss),
            "parameters": dg.MetadataValue.int(summary["parameters"]),
            "steps": dg.MetadataValue.int(result.steps),
            "tokens_per_second": dg.MetadataValue.float(result.tokens_per_second),
            "training_seconds": dg.MetadataValue.float(result.seconds),
            "device": str(next(result.model.parameters()).device),
            "resumed_from_step": dg.MetadataValue.int(result.resumed_from if result.resumed_from is not None else -1),
            "checkpoint_dir": dg.MetadataValue.path(str(checkpoint_dir)),
            "loss_history": dg.MetadataValue.json(history),
            **_run_link(mlflow, run),
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "parquet"},
    owners=OWNERS,
    code_version="1",
    description="Stories the trained model writes from the prompts (gpt-rs's sampling: window of "
    "the last context_length tokens, temperature, multinomial).",
)
def sample_generations(
    context: dg.AssetExecutionContext,
    config: SampleGenerationsConfig,
    trained_model: GPT,
    bpe_tokenizer: BPETokenizer,
    mlflow: MLflowResource,
) -> dg.Output[pl.DataFrame]:
    generation_config = config.generation_config()
    generation_config.validate()
    with mlflow.asset_run(context) as run:
        run.log_params(config.model_dump())
        frame = generate_samples(trained_model, bpe_tokenizer, generation_config)
        run.log_text(frame.write_json(), "generations.json")
    for row in frame.iter_rows(named=True):
        context.log.info(f"generation {row['sample']} for {row['prompt']!r}:\n{row['text']}")
    text = "\n\n---\n\n".join(_quote(t) for t in frame["text"])
    return dg.Output(
        frame,
        metadata={
            "generations": dg.MetadataValue.int(len(frame)),
            "text": dg.MetadataValue.md(text),
            "unknown_characters": generation_config.unknown,
            **_run_link(mlflow, run),
        },
    )


def _save_tokenizer_files(tokenizer: BPETokenizer, directory: Path) -> Path:
    """Ours (``bpe_tokenizer.json`` + listing) and Hugging Face's ``tokenizer.json`` when the
    vocabulary fits that format."""
    tokenizer.save(directory / "bpe_tokenizer.json")
    try:
        tokenizer.save_hf(directory / "tokenizer.json")
    except ValueError:
        pass
    return directory


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in text.split("\n"))


ASSETS = [raw_stories, bpe_tokenizer, tokenized_dataset, trained_model, sample_generations]
