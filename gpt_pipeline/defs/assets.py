"""The five assets of the gpt-rs lineage, group ``gpt``.

stories_source -> raw_stories -> bpe_tokenizer -> tokenized_dataset -> trained_model[variant]
    -> sample_generations[variant];  trained_model[every variant] -> champion_model (``defs.champion``)

``trained_model`` and ``sample_generations`` are partitioned by variant (dynamic partitions,
``defs.variants``; checked first thing); the data assets are shared. Each asset resolves its config
(field defaults, the variant's base, the run config, the variant's overrides: ``resolve_config``),
validates it before any expensive work, calls its step in the core
(``data.story_files.write_stories``, ``tokenizer.from_stories.train_tokenizer``,
``data.encode_stories.write_dataset``, ``training``, ``model.generations.generate_samples``: the same
functions ``gpt-pipeline tokenize | train | generate`` call), logs to its own MLflow run, runs its
blocking check on the value and only then yields it for the IO manager to store. The steps every
asset shares are ``defs.asset_step.AssetStep``'s; each asset here says only what is its own.
"""

import shutil
import tempfile
from pathlib import Path

import dagster as dg
import polars as pl

from gpt_pipeline import provenance, quality
from gpt_pipeline.data.config import DatasetConfig, StoriesConfig
from gpt_pipeline.data.dataset_files import load_splits
from gpt_pipeline.data.encode_stories import write_dataset
from gpt_pipeline.data.story_files import write_stories
from gpt_pipeline.data.table_file import TableFile
from gpt_pipeline.defs.asset_step import AssetStep, upstream_mlflow_run
from gpt_pipeline.defs.checks import BEATS_UNIGRAM, GENERATIONS_DECODE, IDS_IN_VOCAB, ROUND_TRIP, user_errors
from gpt_pipeline.defs.configs import (
    BpeTokenizerConfig,
    RawStoriesConfig,
    SampleGenerationsConfig,
    TokenizedDatasetConfig,
    TrainedModelConfig,
)
from gpt_pipeline.defs.launchers import retry_transient
from gpt_pipeline.defs.prompt_check import refuse_unseen_prompts
from gpt_pipeline.defs.resources import MLflowResource
from gpt_pipeline.defs.sources import RETRAIN, SOURCE_KEY, TRAINING_POOL
from gpt_pipeline.defs.variants import VARIANTS
from gpt_pipeline.defs.search_trials import trial_reporter
from gpt_pipeline.defs.training_run import plan_training, run_training
from gpt_pipeline.model.gpt import GPT, GPTConfig
from gpt_pipeline.model.generations import GenerationConfig, generate_samples, unseen_characters
from gpt_pipeline.storage import scratch_dir
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline.tokenizer.config import TokenizerConfig
from gpt_pipeline.training.config import TrainConfig
from gpt_pipeline.tokenizer.bundle import write_bundle
from gpt_pipeline.tokenizer.from_stories import train_tokenizer

GROUP = "gpt"
OWNERS = ["team:ml"]


@dg.asset(
    group_name=GROUP,
    kinds={"pyarrow", "parquet", "mlflow"},
    owners=OWNERS,
    code_version="2",
    deps=[SOURCE_KEY],
    automation_condition=RETRAIN,
    description="Stories, one per row in a `text` column: a Parquet file's text column (null and "
    "empty entries dropped) or, with no path, the embedded corpus the project generates itself. "
    "Streamed batch by batch into the stored file: no corpus size has to fit in memory.",
)
def raw_stories(
    context: dg.AssetExecutionContext, config: RawStoriesConfig, mlflow: MLflowResource
) -> dg.Output[TableFile]:
    step = AssetStep(context, mlflow, config)
    with step.run() as run:
        scratch = scratch_dir()
        path = scratch / "raw_stories.parquet"
        try:
            stats = write_stories(path, step.config.core(StoriesConfig))
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        run.log_metrics({"stories": stats["rows_kept"], "characters": stats["characters"]})
        step.record = provenance.of(TableFile(path), "raw_stories")  # the text digest in its footer
    return step.output(TableFile(path), {
        "source": stats["source"],
        "stories": dg.MetadataValue.int(stats["rows_kept"]),
        "rows_read": dg.MetadataValue.int(stats["rows_read"]),
        "null_dropped": dg.MetadataValue.int(stats["null_dropped"]),
        "empty_dropped": dg.MetadataValue.int(stats["empty_dropped"]),
        "characters": dg.MetadataValue.int(stats["characters"]),
        "preview": dg.MetadataValue.md(_quote(stats["first"])),
    })


@dg.asset(
    group_name=GROUP,
    kinds={"python", "json", "mlflow"},
    owners=OWNERS,
    code_version="2",
    check_specs=[ROUND_TRIP],
    automation_condition=RETRAIN,
    description="gpt-rs's byte-pair-encoding tokenizer over characters, trained on every story: "
    "no merges across spaces, quotes or newlines; ties go to the largest pair. Stored as a "
    "tokenizer bundle: our versioned JSON, a vocabulary listing (.vocab.txt) and a Hugging Face "
    "tokenizer.json (.hf.json). Reads the stories in batches and keeps only piece counts.",
)
def bpe_tokenizer(
    context: dg.AssetExecutionContext,
    config: BpeTokenizerConfig,
    raw_stories: TableFile,
    mlflow: MLflowResource,
):
    step = AssetStep(context, mlflow, config, check=ROUND_TRIP)
    with step.run() as run:
        stories = provenance.of(raw_stories, "raw_stories")
        tokenizer, stats = train_tokenizer(raw_stories, step.config.core(TokenizerConfig))
        # the provenance is stored in the tokenizer JSON
        step.made(provenance.tokenizer_digest(tokenizer), {"raw_stories": stories}, value=tokenizer)
        run.log_metrics({k: stats[k] for k in ("alphabet_size", "merges", "training_seconds", "chars_per_token_test")})
        yield from step.gate(quality.tokenizer_round_trip(tokenizer, raw_stories))
        with tempfile.TemporaryDirectory() as tmp:
            write_bundle(tokenizer, Path(tmp))
            run.log_artifact(Path(tmp), "tokenizer")
    yield from step.results(tokenizer, {
        "vocab_size": dg.MetadataValue.int(stats["vocab_size"]),
        "alphabet_size": dg.MetadataValue.int(stats["alphabet_size"]),
        "merges": dg.MetadataValue.int(stats["merges"]),
        "chars_per_token_test": dg.MetadataValue.float(stats["chars_per_token_test"]),
        "training_seconds": dg.MetadataValue.float(stats["training_seconds"]),
        "longest_tokens": dg.MetadataValue.json(stats["longest_tokens"]),
    })


@dg.asset(
    group_name=GROUP,
    kinds={"pyarrow", "parquet", "mlflow"},
    owners=OWNERS,
    code_version="2",
    check_specs=[IDS_IN_VOCAB],
    automation_condition=RETRAIN,
    description="Every story encoded with the tokenizer: a `list<uint16>` `tokens` column (`uint32` "
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
    step = AssetStep(context, mlflow, config, check=IDS_IN_VOCAB)
    # stored inputs that do not belong together: refused before any work
    inputs = step.check_inputs(raw_stories=raw_stories, bpe_tokenizer=bpe_tokenizer)
    with step.run() as run:
        scratch = scratch_dir()
        try:
            dataset, stats = write_dataset(
                bpe_tokenizer, raw_stories, step.config.core(DatasetConfig),
                scratch / "tokenized_dataset.parquet",
                metadata=provenance.footer(provenance.made("tokenized_dataset", "", inputs)),
            )
            step.made(stats["digest"])  # content_digest: the token arrays' digest
            run.log_metrics({k: v for k, v in stats.items() if isinstance(v, (int, float))})
            yield from step.gate(quality.token_ids_in_vocab(dataset, bpe_tokenizer.vocab_size))
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    yield from step.results(dataset, {
        **{k: dg.MetadataValue.int(v) for k, v in stats.items() if isinstance(v, int)},
        "encoding_seconds": dg.MetadataValue.float(stats["encoding_seconds"]),
        "length_stats": dg.MetadataValue.json({k: stats[k] for k in LENGTH_STATS}),
    })


LENGTH_STATS = ("stories", "tokens", "train_stories", "train_tokens", "test_stories", "test_tokens",
                "min_story_tokens", "mean_story_tokens", "max_story_tokens")  # data.dataset_stats's keys


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "safetensors", "mlflow"},
    owners=OWNERS,
    code_version="2",
    check_specs=[BEATS_UNIGRAM],
    partitions_def=VARIANTS,
    pool=TRAINING_POOL,
    automation_condition=RETRAIN,
    description="gpt-rs's causal decoder transformer trained on the train split (AdamW, gradient "
    "values clamped to 0.5), evaluated on both splits every evaluation_interval steps, with a "
    "checkpoint each time (a rematerialization resumes from the last one). One partition per "
    "variant of the sweep, stored as `trained_model/<variant>.safetensors` with its config in the "
    "metadata. Trainings take turns in the pool 'training'.",
)
def trained_model(
    context: dg.AssetExecutionContext,
    config: TrainedModelConfig,
    tokenized_dataset: TableFile,
    bpe_tokenizer: BPETokenizer,
    mlflow: MLflowResource,
):
    step = AssetStep(context, mlflow, config, check=BEATS_UNIGRAM)  # the partition key first, then the config
    config, variant = step.config, step.variant
    with retry_transient(context), user_errors():  # a retry resumes from the last checkpoint
        inputs = step.check_inputs(tokenized_dataset=tokenized_dataset, bpe_tokenizer=bpe_tokenizer,
                                   initial_checkpoint=config.initial_checkpoint)
        refuse_unseen_prompts(context, bpe_tokenizer)  # the run's sample prompts, before any training
        model_config = config.core(GPTConfig, vocab_size=bpe_tokenizer.vocab_size)
        train_config = config.core(TrainConfig)
        train_data, test_data = load_splits(tokenized_dataset)  # memory-mapped: read as sampled
        plan = plan_training(context, model_config, train_config, train_data, test_data, bpe_tokenizer,
                             initial_checkpoint=config.initial_checkpoint, dataset_file=tokenized_dataset,
                             launcher=config.launcher, k8s=config.k8s)
        outcome = yield from run_training(
            step, plan, bpe_tokenizer, export_hf=config.export_hf,
            tags={"gpt_pipeline/overrides": variant.describe()},
            # created after plan_training checked the data and config: a refused one leaves no parent run
            parent_run_id=mlflow.sweep_parent(variant.sweep, inputs["tokenized_dataset"].digest),
            on_evaluation=trial_reporter(variant),
        )
        step.made(provenance.weights_digest(outcome.model), value=outcome.model)  # in the safetensors metadata
    yield step.output(outcome.model, outcome.metadata)
    yield outcome.check_result()


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "parquet", "mlflow"},
    owners=OWNERS,
    code_version="2",
    check_specs=[GENERATIONS_DECODE],
    partitions_def=VARIANTS,
    automation_condition=RETRAIN,
    description="Stories the variant's trained model writes from the prompts (gpt-rs's sampling: "
    "window of the last context_length tokens, temperature, multinomial; optionally top-k), "
    "stored as `sample_generations/<variant>.parquet`.",
)
def sample_generations(
    context: dg.AssetExecutionContext,
    config: SampleGenerationsConfig,
    trained_model: GPT,
    bpe_tokenizer: BPETokenizer,
    mlflow: MLflowResource,
):
    step = AssetStep(context, mlflow, config, check=GENERATIONS_DECODE)  # the partition key first
    yield from write_generations(step, trained_model, bpe_tokenizer, "trained_model")


def write_generations(step: AssetStep, model: GPT, tokenizer: BPETokenizer, model_asset: str):
    """The work of ``sample_generations`` (a variant's model) and ``champion_generations`` (the
    champion's): generate, log to MLflow (nested under the model's own run, which gets the table
    too), gate, then yield the frame with its metadata."""
    with user_errors():
        step.check_inputs(**{model_asset: model, "bpe_tokenizer": tokenizer})
        generation_config = step.config.core(GenerationConfig)
        skipped = unseen_characters(tokenizer, generation_config.prompts)
        model_run = upstream_mlflow_run(step.context, model_asset)  # the same partition's: never another's
        with step.run(parent_run_id=model_run) as run:
            frame = generate_samples(model, tokenizer, generation_config)
            run.log_table(frame, "generations.json")
            if model_run:  # the model's run shows what its model writes, too
                run.client.log_table(model_run, data=frame.to_pandas(), artifact_file="generations.json")
            yield from step.gate(quality.generations_decode(frame["text"].to_list(), frame["prompt"].to_list(),
                                                            tokenizer))
            step.made(provenance.frame_digest(frame), value=frame)  # stored in the Parquet footer
    for row in frame.iter_rows(named=True):
        step.context.log.info(f"generation {row['sample']} for {row['prompt']!r}:\n{row['text']}")
    yield from step.results(frame, {
        "generations": dg.MetadataValue.int(len(frame)),
        "text": dg.MetadataValue.md("\n\n---\n\n".join(_quote(t) for t in frame["text"])),
        "table": generations_table(frame),
        "unknown_characters": generation_config.unknown,
        "skipped_characters": dg.MetadataValue.json(skipped if generation_config.unknown == "skip" else []),
    })


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
