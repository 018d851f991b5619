"""``champion_model``: the best variant of the sweep, promoted.

It depends on every variant (partition) of ``trained_model`` and of its ``model_evaluation``:
every variant the instance knows (``defs.variants``), however the code location was started.
``standings`` is the one election: among the variants whose latest model was trained on the
current ``tokenized_dataset``, not pruned, and passed its evaluation, the lowest
``test_bits_per_character`` (comparable across vocabularies, unlike a loss per token; ties go to
the variant added first). ``champion_model`` stores that model as ``data/champion_model.safetensors``,
points the MLflow registry alias ``champion`` at its version (``models:/gpt-pipeline@champion``)
and tags that version with the variant and run that won (``champion_variant``, ``champion_run_id``),
and shows the comparison in its metadata: every variant with its overrides, test loss, bits per
character, tokens/s, training seconds and MLflow run, and for a variant without a model on the
current data, why (its last failure, or "stale"). Its blocking check ``champion_generates``
loads what it stores and generates from it. A variant whose current model has no evaluation, or
failed the blocking check of ``model_evaluation`` (its continuations collapse), is not ranked: its
note says which; the standings show each variant's headline evaluation figures
(``defs.evaluation.evaluation_standing``).

``champion_generations``, unpartitioned, is what the champion writes from the prompts (the
``sample_generations`` step on ``champion_model``): a downstream consumer of the champion, as the
pyfunc model ``models:/gpt-pipeline@champion`` is outside Dagster.
"""


from datetime import timedelta

import dagster as dg
import torch

from gpt_pipeline import provenance
from gpt_pipeline.defs.asset_step import AssetStep
from gpt_pipeline.defs.assets import GROUP, OWNERS, write_generations
from gpt_pipeline.defs.checks import blocking_check, failure_line, user_errors
from gpt_pipeline.defs.configs import SampleGenerationsConfig
from gpt_pipeline.defs.evaluation import STANDING_COLUMNS, evaluation_standing
from gpt_pipeline.defs.io_manager import AssetFileIOManager
from gpt_pipeline.defs.metadata import standings_tables
from gpt_pipeline.defs.resources import MLflowResource
from gpt_pipeline.defs.sources import RETRAIN_CHAMPION, following
from gpt_pipeline.defs.variants import Variant, VariantError, known_variants, read_variant
from gpt_pipeline.model.sampling import generate_text
from gpt_pipeline.model.gpt import GPT
from gpt_pipeline.quality import Gate
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline.tracking.registry import set_champion
from gpt_pipeline.training.metrics import figure_text

CHAMPION_GENERATES = blocking_check(
    "champion_model", "champion_generates", "The elected model loads from its stored file and writes text."
)
CHAMPION_GENERATIONS_DECODE = blocking_check(
    "champion_generations", "generations_decode", "Every generation is non-empty and decodes."
)
COLUMNS = ("rank", "variant", "overrides", "test_loss", "test_bits_per_character", "tokens_per_second",
           "training_seconds", *STANDING_COLUMNS, "mlflow_run", "note")


def _value(metadata: dict, key: str):
    entry = metadata.get(key)
    return None if entry is None else entry.value


def failure_reason(instance: dg.DagsterInstance, variant: str, after: float | None) -> str | None:
    """The first line of the latest failure of ``trained_model[variant]`` newer than ``after``
    (a timestamp), or None."""
    runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": variant},
                                           statuses=[dg.DagsterRunStatus.FAILURE]), limit=5)
    for run in runs:
        for record in instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records:
            event = record.event_log_entry
            if event.step_key != "trained_model" or (after is not None and event.timestamp <= after):
                continue
            return f"failed (run {run.run_id[:8]}): " + failure_line(event.dagster_event.step_failure_data.error)
    return None


def standings(instance: dg.DagsterInstance, data_digest: str | None, variants: list[str] | None = None) -> list[dict]:
    """THE election (``champion_model``, ``gpt-pipeline sweep`` and the search read it): one row
    per variant of the instance (or of ``variants``), ranked: those whose latest model was trained
    on the data with ``data_digest`` by test bits per character (ties: the variant added first),
    then the rest, unranked, with why in ``note`` (stale, pruned at step N, failed, not trained,
    not evaluated, evaluation failed): a model is elected only once its evaluation passed."""
    rows = []
    for order, variant in enumerate(variants if variants is not None else known_variants(instance)):
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("trained_model"), asset_partitions=[variant]), limit=1).records
        meta = records[0].asset_materialization.metadata if records else {}
        record = _record(variant)
        row = {"order": order, "variant": variant, "overrides": record.describe() if record else "(unrecorded)",
               **{key: _value(meta, key) for key in ("test_loss", "test_bits_per_character", "tokens_per_second",
                                                    "training_seconds", "mlflow_run", "mlflow_run_id",
                                                    "registered_model_version", "content_digest", "pruned_at_step",
                                                    "steps")},
               "note": ""}
        failure = failure_reason(instance, variant, records[0].timestamp if records else None)
        if not records:
            row["note"] = failure or "not trained yet"
        elif _value(meta, "made_from.tokenized_dataset") != data_digest:
            row["note"] = failure or "stale: trained on other data"
        elif _value(meta, "pruned"):
            row["note"] = f"pruned at step {row['pruned_at_step']}"
        elif row["test_bits_per_character"] is None:
            row["note"] = "no test_bits_per_character recorded"
        elif failure:
            row["note"] = f"its last retraining {failure}; ranked with its previous model"
        # model_evaluation (defs.evaluation): its headline figures; no passing evaluation, no rank
        figures, not_eligible = evaluation_standing(instance, variant, row["content_digest"])
        row.update(figures)
        if not_eligible and (not row["note"] or row["note"].startswith("its last")):
            row["note"] = not_eligible
        rows.append(row)
    ranked = sorted((r for r in rows if not r["note"] or r["note"].startswith("its last")),
                    key=lambda r: (r["test_bits_per_character"], r["order"]))
    for rank, row in enumerate(ranked, start=1):
        row["rank"] = rank
    return ranked + [{**r, "rank": None} for r in rows if r not in ranked]


def _record(variant: str) -> Variant | None:
    try:
        return read_variant(variant)
    except VariantError:
        return None


def current_data_digest(instance: dg.DagsterInstance) -> str | None:
    """The content digest of the latest ``tokenized_dataset``: what a champion must be trained on."""
    dataset = instance.get_latest_materialization_event(dg.AssetKey("tokenized_dataset"))
    return _value(dataset.asset_materialization.metadata, "content_digest") if dataset else None


def comparison_markdown(rows: list[dict]) -> str:
    """The standings as a Markdown table (the run log and MLflow's standings.md; the Dagster UI shows
    ``defs.metadata.standings_tables``)."""
    def cell(row, key):
        value = row.get(key)
        if key == "mlflow_run":
            return f"[{(row.get('mlflow_run_id') or '')[:8]}]({value})" if value else ""
        if isinstance(value, float):
            return figure_text(key, value)
        return "" if value is None else str(value).replace("|", "\\|")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row, key) for key in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def generates(model: GPT, tokenizer: BPETokenizer) -> Gate:
    """The model writes at least one character after a prompt (``Once``, or its first token)."""
    try:
        prompt = "Once" if tokenizer.encode("Once") else tokenizer.token_text(0)
    except ValueError:  # a vocabulary without these characters
        prompt = tokenizer.token_text(0)
    try:
        text = generate_text(model, tokenizer, prompt, 8, temperature=1.0, seed=0)[0]
    except Exception as error:  # noqa: BLE001 - any failure is the check's finding
        return Gate(False, f"generation failed: {type(error).__name__}: {error}")
    added = len(text) - len(prompt)
    return Gate(added > 0, f"wrote {added} characters after {prompt!r}", {"characters": added})


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "safetensors", "mlflow"},
    owners=OWNERS,
    code_version="1",
    deps=[dg.AssetDep("trained_model", partition_mapping=dg.AllPartitionMapping()),
          dg.AssetDep("model_evaluation", partition_mapping=dg.AllPartitionMapping()), "tokenized_dataset"],
    check_specs=[CHAMPION_GENERATES],
    automation_condition=RETRAIN_CHAMPION,
    freshness_policy=dg.FreshnessPolicy.time_window(fail_window=timedelta(days=8), warn_window=timedelta(days=7)),
    description="The variant of trained_model with the lowest test bits per character among those "
    "trained on the current data whose model_evaluation passed: stored as champion_model.safetensors, "
    "aliased 'champion' in the MLflow registry, with every variant's standing in its metadata.",
)
def champion_model(
    context: dg.AssetExecutionContext,
    bpe_tokenizer: BPETokenizer,
    mlflow: MLflowResource,
    io_manager: dg.ResourceParam[AssetFileIOManager],
):
    step = AssetStep(context, mlflow, check=CHAMPION_GENERATES)
    digest = current_data_digest(context.instance)
    rows = standings(context.instance, digest)
    table = comparison_markdown(rows)
    context.log.info("standings:\n" + table)
    best = rows[0] if rows and rows[0]["rank"] == 1 else None
    if best is None:
        raise dg.Failure(description="champion_model: no variant has an evaluated model trained on the current data: "
                         + "; ".join(f"{r['variant']}: {r['note']}" for r in rows), allow_retries=False)
    with user_errors():
        model = io_manager.load_stored(dg.AssetKey("trained_model"), GPT, best["variant"])
        step.made(provenance.weights_digest(model), {
            "trained_model": best["content_digest"] or "", "tokenized_dataset": digest or "",
            "bpe_tokenizer": provenance.of(bpe_tokenizer, "bpe_tokenizer").digest})
        if best["content_digest"] and provenance.weights_digest(model) != best["content_digest"]:
            raise ValueError(f"trained_model[{best['variant']}] changed since its materialization "
                             "(a run is writing it): materialize champion_model again when it is done")
        yield from step.gate(generates(model, bpe_tokenizer))
        version = best["registered_model_version"]
        if version is not None:  # the version names the variant and the run that won, whoever registered it
            set_champion(mlflow.tracker().client, version, variant=best["variant"], run_id=best["mlflow_run_id"],
                         bits_per_character=best["test_bits_per_character"])
        sweep = (_record(best["variant"]) or Variant(best["variant"])).sweep
        with step.run(tags={"gpt_pipeline/sweep": sweep, "gpt_pipeline/champion": best["variant"]},
                      parent_run_id=mlflow.sweep_parent(sweep, digest or "")) as run:
            run.log_metrics({"champion_test_bits_per_character": best["test_bits_per_character"]})
            run.log_text(table, "standings.md")
            run.log_dict({"standings": [{k: r.get(k) for k in (*COLUMNS, "mlflow_run_id")} for r in rows]},
                         "standings.json")
    yield from step.results(provenance.attach(model.to(torch.device("cpu")), step.record), {
        "champion": best["variant"],
        "overrides": best["overrides"],
        "test_bits_per_character": dg.MetadataValue.float(float(best["test_bits_per_character"])),
        "registered_model_version": dg.MetadataValue.int(int(version) if version is not None else -1),
        **standings_tables(rows),
    })


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "parquet", "mlflow"},
    owners=OWNERS,
    code_version="1",
    check_specs=[CHAMPION_GENERATIONS_DECODE],
    automation_condition=following("champion_model"),
    description="Stories the champion writes from the prompts (sample_generations' config and "
    "sampling, on champion_model): stored as champion_generations.parquet.",
)
def champion_generations(
    context: dg.AssetExecutionContext,
    config: SampleGenerationsConfig,
    champion_model: GPT,
    bpe_tokenizer: BPETokenizer,
    mlflow: MLflowResource,
):
    step = AssetStep(context, mlflow, config, check=CHAMPION_GENERATIONS_DECODE, like="sample_generations")
    yield from write_generations(step, champion_model, bpe_tokenizer, "champion_model")


CHAMPION_ASSETS = [champion_model, champion_generations]
