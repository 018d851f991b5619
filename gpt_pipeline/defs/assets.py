"""The five assets of the gpt-rs lineage, group ``gpt``.

raw_stories -> bpe_tokenizer -> tokenized_dataset -> trained_model -> sample_generations

Each asset reads its config, validates it before any expensive work, calls the core
(``gpt_pipeline.pipeline`` and friends), logs to its own MLflow run, runs its blocking check on
the value and only then yields it for the IO manager to store.
"""

import shutil
import tempfile
from pathlib import Path

import dagster as dg
import polars as pl

from gpt_pipeline import quality
from gpt_pipeline.data.dataset_files import load_splits
from gpt_pipeline.defs.checks import (
    BEATS_UNIGRAM,
    GENERATIONS_DECODE,
    IDS_IN_VOCAB,
    ROUND_TRIP,
    check_result,
    gate,
    user_errors,
)
from gpt_pipeline.defs.configs import (
    RawStoriesConfig,
    SampleGenerationsConfig,
    TokenizedDatasetConfig,
    TokenizerConfig,
    TrainedModelConfig,
)
from gpt_pipeline.defs.launchers import retry_transient
from gpt_pipeline.defs.resources import MLflowResource
from gpt_pipeline.defs.training_run import run_training
from gpt_pipeline.model.gpt import GPT
from gpt_pipeline.pipeline import (
    generate_samples,
    save_tokenizer_bundle,
    train_tokenizer,
    unseen_characters,
    write_stories,
    write_tokenized_stories,
)
from gpt_pipeline.storage import scratch_dir
from gpt_pipeline.data.table_file import TableFile
from gpt_pipeline.tokenizer import BPETokenizer

GROUP = "gpt"
OWNERS = ["team:ml"]


def run_link(mlflow: MLflowResource, run) -> dict[str, dg.MetadataValue]:
    return {
        "mlflow_run_id": dg.MetadataValue.text(run.run_id),
        "mlflow_run": dg.MetadataValue.url(mlflow.run_url(run)),
    }


@dg.asset(
    group_name=GROUP,
    kinds={"pyarrow", "parquet", "mlflow"},
    owners=OWNERS,
    code_version="1",
    description="Stories, one per row in a `text` column: a Parquet file's text column (null and "
    "empty entries dropped) or, with no path, the embedded corpus the project generates itself. "
    "Streamed batch by batch into the stored file: no corpus size has to fit in memory.",
)
def raw_stories(
    context: dg.AssetExecutionContext, config: RawStoriesConfig, mlflow: MLflowResource
) -> dg.Output[TableFile]:
    with user_errors(), mlflow.asset_run(context) as run:
        run.log_params(config.model_dump())
        scratch = scratch_dir()
        path = scratch / "raw_stories.parquet"
        try:
            stats = write_stories(path, config.path, config.text_column, config.num_stories, config.seed)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        run.log_metrics({"stories": stats["rows_kept"], "characters": stats["characters"]})
    return dg.Output(
        TableFile(path),
        metadata={
            "source": stats["source"],
            "stories": dg.MetadataValue.int(stats["rows_kept"]),
            "rows_read": dg.MetadataValue.int(stats["rows_read"]),
            "null_dropped": dg.MetadataValue.int(stats["null_dropped"]),
            "empty_dropped": dg.MetadataValue.int(stats["empty_dropped"]),
            "characters": dg.MetadataValue.int(stats["characters"]),
            "preview": dg.MetadataValue.md(_quote(stats["first"])),
            **run_link(mlflow, run),
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds={"python", "json", "mlflow"},
    owners=OWNERS,
    code_version="1",
    check_specs=[ROUND_TRIP],
    description="gpt-rs's byte-pair-encoding tokenizer over characters, trained on every story: "
    "no merges across spaces, quotes or newlines; ties go to the largest pair. Stored as our "
    "versioned JSON, a vocabulary listing and a Hugging Face tokenizer.json. Reads the stories "
    "in batches and keeps only piece counts.",
)
def bpe_tokenizer(
    context: dg.AssetExecutionContext,
    config: TokenizerConfig,
    raw_stories: TableFile,
    mlflow: MLflowResource,
):
    with user_errors(), mlflow.asset_run(context) as run:
        run.log_params(config.model_dump())
        tokenizer, stats = train_tokenizer(raw_stories, config.vocab_size)
        run.log_metrics({k: stats[k] for k in ("alphabet_size", "merges", "training_seconds", "chars_per_token_test")})
        outcome = quality.tokenizer_round_trip(tokenizer, raw_stories)
        yield from gate(ROUND_TRIP, outcome)
        with tempfile.TemporaryDirectory() as tmp:
            run.log_artifact(save_tokenizer_bundle(tokenizer, Path(tmp)), "tokenizer")
    yield dg.Output(
        tokenizer,
        metadata={
            "vocab_size": dg.MetadataValue.int(stats["vocab_size"]),
            "alphabet_size": dg.MetadataValue.int(stats["alphabet_size"]),
            "merges": dg.MetadataValue.int(stats["merges"]),
            "chars_per_token_test": dg.MetadataValue.float(stats["chars_per_token_test"]),
            "training_seconds": dg.MetadataValue.float(stats["training_seconds"]),
            "longest_tokens": dg.MetadataValue.json(stats["longest_tokens"]),
            **run_link(mlflow, run),
        },
    )
    yield check_result(ROUND_TRIP, outcome)


@dg.asset(
    group_name=GROUP,
    kinds={"pyarrow", "parquet", "mlflow"},
    owners=OWNERS,
    code_version="1",
    check_specs=[IDS_IN_VOCAB],
    description="Every story encoded with the tokenizer: a list<uint16> `tokens` column (uint32 "
    "above 65,536 tokens) and gpt-rs's split (`split`: the first training_percentage train). "
    "Encoded and written batch by batch (one row group each), with the token arrays that "
    "training memory-maps beside it (`tokenized_dataset.token_arrays.safetensors`).",
)
def tokenized_dataset(
    context: dg.AssetExecutionContext,
    config: TokenizedDatasetConfig,
    raw_stories: TableFile,
    bpe_tokenizer: BPETokenizer,
    mlflow: MLflowResource,
):
    with user_errors(), mlflow.asset_run(context) as run:
        run.log_params(config.model_dump())
        scratch = scratch_dir()
        try:
            dataset, stats = write_tokenized_stories(
                bpe_tokenizer, raw_stories, config.training_percentage, scratch / "tokenized_dataset.parquet"
            )
            run.log_metrics({k: v for k, v in stats.items() if isinstance(v, (int, float))})
            outcome = quality.token_ids_in_vocab(dataset, bpe_tokenizer.vocab_size)
            yield from gate(IDS_IN_VOCAB, outcome)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    yield dg.Output(
        dataset,
        metadata={
            **{k: dg.MetadataValue.int(v) for k, v in stats.items() if isinstance(v, int)},
            "encoding_seconds": dg.MetadataValue.float(stats["encoding_seconds"]),
            "length_stats": dg.MetadataValue.json({k: stats[k] for k in LENGTH_STATS}),
            "content_digest": dg.MetadataValue.text(stats["digest"]),
            **run_link(mlflow, run),
        },
    )
    yield check_result(IDS_IN_VOCAB, outcome)


LENGTH_STATS = ("stories", "tokens", "train_stories", "train_tokens", "test_stories", "test_tokens",
                "min_story_tokens", "mean_story_tokens", "max_story_tokens")  # data.dataset_stats's keys


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "safetensors", "mlflow"},
    owners=OWNERS,
    code_version="1",
    check_specs=[BEATS_UNIGRAM],
    description="gpt-rs's causal decoder transformer trained on the train split (AdamW, gradient "
    "values clamped to 0.5), evaluated on both splits every evaluation_interval steps, with a "
    "checkpoint each time (a rematerialization resumes from the last one). Stored as one "
    "safetensors file with its config in the metadata.",
)
def trained_model(
    context: dg.AssetExecutionContext,
    config: TrainedModelConfig,
    tokenized_dataset: TableFile,
    bpe_tokenizer: BPETokenizer,
    mlflow: MLflowResource,
):
    with retry_transient(context), user_errors():  # a retry resumes from the last checkpoint
        model_config = config.gpt_config(bpe_tokenizer.vocab_size).validate()
        train_config = config.training_config().validate()
        train_data, test_data = load_splits(tokenized_dataset)  # memory-mapped: read as sampled
        outcome = yield from run_training(
            context,
            mlflow,
            model_config,
            train_config,
            train_data,
            test_data,
            bpe_tokenizer,
            initial_checkpoint=config.initial_checkpoint,
            export_hf=config.export_hf,
            dataset_file=tokenized_dataset,
            launcher=config.launcher,
            k8s=config.k8s,
        )
    yield outcome.output
    yield check_result(BEATS_UNIGRAM, outcome.gate)


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "parquet", "mlflow"},
    owners=OWNERS,
    code_version="1",
    check_specs=[GENERATIONS_DECODE],
    description="Stories the trained model writes from the prompts (gpt-rs's sampling: window of "
    "the last context_length tokens, temperature, multinomial; optionally top-k).",
)
def sample_generations(
    context: dg.AssetExecutionContext,
    config: SampleGenerationsConfig,
    trained_model: GPT,
    bpe_tokenizer: BPETokenizer,
    mlflow: MLflowResource,
):
    with user_errors():
        generation_config = config.generation_config()
        generation_config.validate()
        skipped = unseen_characters(bpe_tokenizer, generation_config.prompts)
        with mlflow.asset_run(context) as run:
            run.log_params(config.model_dump())
            frame = generate_samples(trained_model, bpe_tokenizer, generation_config)
            run.log_table(frame, "generations.json")
            training_run = upstream_mlflow_run(context, "trained_model")
            if training_run:  # the training's run shows what its model writes, too
                run.client.log_table(training_run, data=frame.to_pandas(), artifact_file="generations.json")
            outcome = quality.generations_decode(frame["text"].to_list(), frame["prompt"].to_list(), bpe_tokenizer)
            yield from gate(GENERATIONS_DECODE, outcome)
    for row in frame.iter_rows(named=True):
        context.log.info(f"generation {row['sample']} for {row['prompt']!r}:\n{row['text']}")
    yield dg.Output(
        frame,
        metadata={
            "generations": dg.MetadataValue.int(len(frame)),
            "text": dg.MetadataValue.md("\n\n---\n\n".join(_quote(t) for t in frame["text"])),
            "table": generations_table(frame),
            "unknown_characters": generation_config.unknown,
            "skipped_characters": dg.MetadataValue.json(skipped if generation_config.unknown == "skip" else []),
            **run_link(mlflow, run),
        },
    )
    yield check_result(GENERATIONS_DECODE, outcome)


def upstream_mlflow_run(context: dg.AssetExecutionContext, asset: str) -> str | None:
    """The MLflow run id recorded in ``asset``'s latest materialization, if any."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get("mlflow_run_id")
    return value.value if value is not None else None


def generations_table(frame: pl.DataFrame) -> dg.MetadataValue:
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn("prompt", "string"),
            dg.TableColumn("sample", "int"),
            dg.TableColumn("token_count", "int"),
            dg.TableColumn("text", "string"),
        ]
    )
    records = [
        dg.TableRecord({k: row[k] for k in ("prompt", "sample", "token_count", "text")})
        for row in frame.iter_rows(named=True)
    ]
    return dg.MetadataValue.table(records, schema=schema)


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in text.split("\n"))


ASSETS = [raw_stories, bpe_tokenizer, tokenized_dataset, trained_model, sample_generations]
