"""``model_evaluation`` (one partition per variant) and ``champion_evaluation``: a model judged by
its stories, not only its loss (``gpt_pipeline.evaluation``; docs/evaluation.md).

Each evaluates its model with the tokenizer and the tokenized dataset's splits, then:

- logs the figures to an MLflow run of its own, nested under the model's run, and the same
  figures (``eval_<figure>``) on the model's run and on its logged model, so that
  ``gpt-pipeline compare --by NAME`` and ``mlflow.search_logged_models`` rank by any of them;
- runs the blocking check ``continuations_do_not_collapse`` (``evaluate.collapse_gate``): a model
  whose continuations loop or invent words is failed before anything is stored, and
  ``champion_model`` passes over a variant whose current model failed it;
- stores the continuations (one row per held-out story: prompt, true continuation, the model's,
  the bigram's) as Parquet, with the figures' table, the curve by position (model vs bigram)
  and five continuations beside their true ones in the metadata.

Every path that trains passes through them: ``train_gpt_job`` (``make run``, ``gpt-pipeline
materialize``), the sweeps' per-variant step and declarative automation (``RETRAIN``: a variant
is evaluated when its model changes; ``champion_evaluation`` follows ``champion_model``). The
election (``defs.champion.standings``) ranks only a variant whose current model passed its
evaluation. They are in the lineage's group (``gpt``: the UI's "Materialize all" evaluates
too); ``evaluate_job`` runs them alone, e.g. with other settings:
``gpt-pipeline materialize --job evaluate_job --select model_evaluation --partition VARIANT``.
"""

import dataclasses
import tempfile
from pathlib import Path

import dagster as dg
import polars as pl

from gpt_pipeline import provenance
from gpt_pipeline.data.dataset_files import load_splits
from gpt_pipeline.data.table_file import TableFile
from gpt_pipeline.defs.asset_step import AssetStep, latest_metadata, upstream_mlflow_run
from gpt_pipeline.defs.assets import GROUP, OWNERS
from gpt_pipeline.defs.checks import blocking_check, user_errors
from gpt_pipeline.defs.configs import ModelEvaluationConfig
from gpt_pipeline.defs.resources import MLflowResource
from gpt_pipeline.defs.sources import RETRAIN, following
from gpt_pipeline.defs.variants import VARIANTS, read_variant
from gpt_pipeline.defs.training_run import loss_curve_markdown
from gpt_pipeline.evaluation.config import EvaluationConfig
from gpt_pipeline.evaluation.evaluate import Evaluation, collapse_gate, evaluate
from gpt_pipeline.evaluation.report import markdown_table, position_curve_png, samples, samples_markdown
from gpt_pipeline.model.gpt import GPT
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline.tracking.tracker import TrackedRun

PREFIX = "eval_"  # MLflow metrics and metadata: eval_<figure> (Evaluation.figures' names)
CHECK_NAME = "continuations_do_not_collapse"
CHECK_DESCRIPTION = ("The continuations' repeated 4-gram rate and share of words unseen in training exceed "
                     "the true continuations' by at most the configured margins.")
MODEL_CHECK = blocking_check("model_evaluation", CHECK_NAME, CHECK_DESCRIPTION)
CHAMPION_CHECK = blocking_check("champion_evaluation", CHECK_NAME, CHECK_DESCRIPTION)
MODEL_DIGEST = "model_digest"  # in the check's metadata: which weights it judged (champion_model reads it)


def continuations_frame(evaluation: Evaluation) -> pl.DataFrame:
    """One row per held-out story: its index in the test split, the first sentence, the true
    continuation, the model's and the bigram's."""
    return pl.DataFrame({
        "story": [s.index for s in evaluation.stories],
        "prompt": [s.prompt for s in evaluation.stories],
        "truth": [s.truth for s in evaluation.stories],
        "model": evaluation.continuations["model"],
        "bigram": evaluation.continuations["bigram"],
    }, schema={"story": pl.Int64, "prompt": pl.String, "truth": pl.String, "model": pl.String,
               "bigram": pl.String})


def samples_table(evaluation: Evaluation) -> dg.MetadataValue:
    schema = dg.TableSchema(columns=[dg.TableColumn(name, "string") for name in ("prompt", "model", "truth")])
    return dg.MetadataValue.table([dg.TableRecord(row) for row in samples(evaluation)], schema=schema)


def headline(figures: dict[str, float | None]) -> dict[str, float]:
    """The model's own figures (not the true stories' or the bigram's, which the table shows), and
    the bigram's bits per character: the numbers in the metadata."""
    others = (f"{PREFIX}reference_", f"{PREFIX}bigram_")
    return {name: value for name, value in figures.items() if value is not None
            and (not name.startswith(others) or name == f"{PREFIX}bigram_test_bits_per_character")}


def model_logged_id(context: dg.AssetExecutionContext, model_asset: str) -> str | None:
    """The logged model (``models:/<id>``) of the latest materialization of ``model_asset``'s
    partition, when it recorded one (``trained_model`` does)."""
    uri = latest_metadata(context, model_asset, "mlflow_model_uri")
    return uri.removeprefix("models:/") if uri is not None and uri.startswith("models:/") else None


def champion_variant(instance: dg.DagsterInstance) -> str | None:
    """The variant the latest ``champion_model`` elected (its metadata), if any."""
    records = instance.fetch_materializations(dg.AssetKey("champion_model"), limit=1).records
    meta = records[0].asset_materialization.metadata if records and records[0].asset_materialization else {}
    return meta["champion"].value if "champion" in meta else None


def run_evaluation(step: AssetStep, model: GPT, tokenizer: BPETokenizer, dataset: TableFile, model_asset: str):
    """The work of ``model_evaluation`` and ``champion_evaluation`` (see the module docstring)."""
    context, asset = step.context, step.asset
    with user_errors():  # a bad config or inputs that do not belong together: refused before any work
        settings = step.config.core(EvaluationConfig)
        inputs = step.check_inputs(**{model_asset: model, "bpe_tokenizer": tokenizer, "tokenized_dataset": dataset})
        train, test = load_splits(dataset)
        model_run = upstream_mlflow_run(context, model_asset)
        with step.run(params=dataclasses.asdict(settings), parent_run_id=model_run) as run:
            evaluation = evaluate(model.cpu(), tokenizer, train, test, settings)
            figures = {PREFIX + name: value for name, value in evaluation.figures().items()}
            outcome = collapse_gate(evaluation, settings)
            run.log_metrics({**figures, f"{PREFIX}passed": float(outcome.passed)})
            if model_run:  # the model's run and its logged model carry the figures too
                TrackedRun(run.client, model_run, run.experiment_id).log_metrics(
                    {**figures, f"{PREFIX}passed": float(outcome.passed)}, model_id=model_logged_id(context, model_asset))
            table = markdown_table(evaluation)
            frame = continuations_frame(evaluation)
            run.log_text(table, "evaluation.md")
            run.log_table(frame, "continuations.json")
            with tempfile.TemporaryDirectory() as tmp:
                run.log_artifact(position_curve_png(evaluation, Path(tmp) / "bits_by_position.png", title=asset))
                curve = loss_curve_markdown(position_curve_png(evaluation, Path(tmp) / "small.png", dpi=60))
            # which weights it judged: champion_model reads it in the check's metadata
            yield from step.gate(dataclasses.replace(outcome, figures={**outcome.figures,
                                                                       MODEL_DIGEST: inputs[model_asset].digest}))
            step.made(provenance.frame_digest(frame), value=frame)
    context.log.info(f"{asset}:\n{table}")
    yield from step.results(frame, {
        "evaluation": dg.MetadataValue.md(table),
        "bits_by_position": dg.MetadataValue.md(curve),
        "samples": samples_table(evaluation),
        "samples_text": dg.MetadataValue.md(samples_markdown(evaluation)),
        **{name: dg.MetadataValue.float(float(value)) for name, value in headline(figures).items()},
        "evaluation_seconds": dg.MetadataValue.float(round(sum(evaluation.seconds.values()), 2)),
    })


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "parquet", "mlflow"},
    owners=OWNERS,
    code_version="1",
    check_specs=[MODEL_CHECK],
    partitions_def=VARIANTS,
    automation_condition=RETRAIN,
    description="The variant's model judged by its stories: test bits per character and its curve by "
    "position beside a bigram baseline's; held-out test stories cut after their first sentence and "
    "continued, with distinct-n, repeated 4-grams, invented words, sentence ends and length and "
    "ROUGE-L beside the true continuations'. Stored as `model_evaluation/<variant>.parquet` (the "
    "continuations); the figures go to the model's MLflow run and logged model as eval_*.",
)
def model_evaluation(
    context: dg.AssetExecutionContext,
    config: ModelEvaluationConfig,
    trained_model: GPT,
    bpe_tokenizer: BPETokenizer,
    tokenized_dataset: TableFile,
    mlflow: MLflowResource,
):
    step = AssetStep(context, mlflow, config, check=MODEL_CHECK)  # the partition key first
    yield from run_evaluation(step, trained_model, bpe_tokenizer, tokenized_dataset, "trained_model")


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "parquet", "mlflow"},
    owners=OWNERS,
    code_version="1",
    check_specs=[CHAMPION_CHECK],
    automation_condition=following("champion_model"),
    description="The champion judged as model_evaluation judges a variant (its config and figures), "
    "stored as champion_evaluation.parquet.",
)
def champion_evaluation(
    context: dg.AssetExecutionContext,
    config: ModelEvaluationConfig,
    champion_model: GPT,
    bpe_tokenizer: BPETokenizer,
    tokenized_dataset: TableFile,
    mlflow: MLflowResource,
):
    won = champion_variant(context.instance)  # judged with its variant's model_evaluation settings
    step = AssetStep(context, mlflow, config, check=CHAMPION_CHECK, like="model_evaluation",
                     like_variant=read_variant(won) if won else None)
    yield from run_evaluation(step, champion_model, bpe_tokenizer, tokenized_dataset, "champion_model")


EVALUATION_ASSETS = [model_evaluation, champion_evaluation]
evaluate_job = dg.define_asset_job(
    "evaluate_job", selection=dg.AssetSelection.assets(*EVALUATION_ASSETS), executor_def=dg.in_process_executor,
    description="Evaluate the variants' models (model_evaluation, one partition per variant) and the "
    "champion (champion_evaluation): likelihood against a bigram, continuations of held-out stories.")
EVALUATION_JOBS = [evaluate_job]


# --- what champion_model reads ------------------------------------------------------------------

STANDING_COLUMNS = ("eval_rouge_l", "eval_repeated_4gram_rate", "eval_unseen_word_rate")  # headline figures
_CHECK_HISTORY = 200  # latest check evaluations read when looking for a model's


def evaluation_standing(instance: dg.DagsterInstance, variant: str, model_digest: str | None
                        ) -> tuple[dict[str, float | None], str | None]:
    """``(figures, reason)`` of ``trained_model[variant]`` with weights ``model_digest``: the
    headline figures (``STANDING_COLUMNS``) of its latest ``model_evaluation`` when that judged
    these weights (None each, when it has none), and why these weights cannot be elected: None when
    their latest evaluation passed ``continuations_do_not_collapse``, else the check's one-line
    finding when it failed, or that they have not been evaluated."""
    figures: dict[str, float | None] = dict.fromkeys(STANDING_COLUMNS)
    not_evaluated = f"not evaluated: its current model has no model_evaluation (materialize model_evaluation[{variant}])"
    if not model_digest:
        return figures, not_evaluated
    found = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=MODEL_CHECK.asset_key, asset_partitions=[variant]), limit=1).records
    meta = found[0].asset_materialization.metadata if found else {}
    evaluated = meta.get("made_from.trained_model") is not None and meta["made_from.trained_model"].value == model_digest
    if evaluated:  # stored only when the check passed
        figures.update({name: meta[name].value for name in STANDING_COLUMNS if name in meta})
    history = instance.event_log_storage.get_asset_check_execution_history(MODEL_CHECK.key, limit=_CHECK_HISTORY)
    for record in history:  # newest first; planned executions carry no evaluation
        event = record.event.dagster_event if record.event is not None else None
        check = event.event_specific_data if event is not None else None
        judged = getattr(check, "metadata", {}).get(MODEL_DIGEST)
        if isinstance(check, dg.AssetCheckEvaluation) and judged is not None and judged.value == model_digest:
            if not check.passed:  # a later evaluation of the same weights (other settings) failed
                return figures, f"evaluation failed: {check.description}"
            break
    return figures, None if evaluated else not_evaluated
