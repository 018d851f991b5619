"""`gpt-pipeline sweep` end to end through Dagster: the sweep is submitted, a real `dagster-daemon`
(its sensor `sweep_sensor`, its run queue) launches every variant and trial as a queued run of
its own process, as many at once as the pool `training` allows, against one real Dagster instance
and one real MLflow store; then the champion. (Ctrl-C and kill -9 of the command:
``test_run_workers``.)"""

from __future__ import annotations

import json

import dagster as dg
import mlflow
import polars as pl
import pytest
import yaml
from mlflow.tracking import MlflowClient

from gpt_pipeline import provenance
from gpt_pipeline.cli import main
from gpt_pipeline.defs.io_manager import AssetFileIOManager
from gpt_pipeline.defs.variants import known_variants
from gpt_pipeline.model.gpt import GPT
from gpt_pipeline.model.generations import GenerationConfig, generate_samples
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG

RATES = {"lr_a": 0.002, "lr_b": 0.004, "lr_c": 0.008}
DATA_ASSETS = ("raw_stories", "bpe_tokenizer", "tokenized_dataset")


@pytest.fixture
def daemon(sweep_home):
    """A `dagster-daemon` serving the sweep's instance (as `dagster dev` would): the command uses it
    rather than starting its own."""
    import time

    from gpt_pipeline.defs.sweep_daemon import DaemonChild, daemon_alive

    instance = dg.DagsterInstance.get()  # its storage created before the daemon opens it
    child = DaemonChild(sweep_home / "home")
    try:
        with instance:
            give_up = time.monotonic() + 180
            while not daemon_alive(instance):
                child.check()
                assert time.monotonic() < give_up, "the daemon did not beat within 180 s"
                time.sleep(0.5)
        yield child
    finally:
        child.stop()
    assert child.process.returncode is not None


def _sweep(folder, variants: dict) -> str:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "test_sweep", "base": "base.yaml", "variants": variants}))
    return str(path)


def _run_records(instance, variant):
    return instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": variant}))


def _launched_by_the_daemon(instance, record) -> None:
    """A run the sensor requested (its tags) and the run queue launched (it was enqueued)."""
    run = record.dagster_run
    assert run.tags["dagster/sensor_name"] == "sweep_sensor" and run.tags["gpt_pipeline/submission"], run.tags
    assert instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_ENQUEUED).records, run.run_id


def _most_at_once(records) -> int:
    """The most runs of ``records`` that were started and not yet ended at one moment."""
    edges = sorted([(r.start_time, 1) for r in records] + [(r.end_time, -1) for r in records], key=lambda e: (e[0], e[1]))
    at_once = most = 0
    for _, change in edges:
        at_once += change
        most = max(most, at_once)
    return most


def test_three_variants_at_once_each_its_own_files_runs_and_generations(sweep_home, isolated_storage, capsys, daemon):
    from gpt_pipeline.defs.sources import TRAINING_POOL

    data, mlruns = isolated_storage
    instance = dg.DagsterInstance.get()
    instance.event_log_storage.set_concurrency_slots(TRAINING_POOL, 2)  # `dagster instance concurrency set training 2`
    sweep = _sweep(sweep_home, {name: {"trained_model": {"learning_rate": rate}} for name, rate in RATES.items()})
    assert main(["sweep", "--sweep", sweep]) == 0
    out = capsys.readouterr().out
    assert "sweep wall time" in out and all(name in out for name in RATES)
    assert "starting the Dagster daemon" not in out  # the instance's daemon served it

    for asset in DATA_ASSETS:  # materialized once for the whole sweep
        records = instance.fetch_materializations(dg.AssetKey(asset), limit=10).records
        assert len(records) == 1, asset
    runs = {variant: _run_records(instance, variant) for variant in RATES}
    assert all(len(records) == 1 for records in runs.values())
    for (record,) in runs.values():
        _launched_by_the_daemon(instance, record)
    # the three were queued together; the pool let two train at once, never three
    assert _most_at_once([records[0] for records in runs.values()]) == 2

    storage = AssetFileIOManager()
    tokenizer = storage.load_stored(dg.AssetKey("bpe_tokenizer"), BPETokenizer)
    models = {v: storage.load_stored(dg.AssetKey("trained_model"), GPT, v) for v in RATES}
    digests = {v: provenance.weights_digest(m) for v, m in models.items()}
    assert len(set(digests.values())) == 3  # three distinct stored models
    assert {p.name for p in (data / "trained_model").iterdir()} == {f"{v}.safetensors" for v in RATES}

    uri = f"sqlite:///{mlruns / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("gpt-pipeline")
    generation_settings = {**TINY_RUN_CONFIG["ops"]["sample_generations"]["config"],
                           "prompts": ("Once", "The dog", "A cat")}
    by_variant = {}
    for variant, model in models.items():
        stored = pl.read_parquet(data / "sample_generations" / f"{variant}.parquet")
        again = generate_samples(model, tokenizer, GenerationConfig(**generation_settings))
        assert stored["text"].to_list() == again["text"].to_list(), variant  # from its own model
        trainings = client.search_runs(
            [experiment.experiment_id],
            f"tags.`dagster.asset_key` = 'trained_model' and tags.`gpt_pipeline/variant` = '{variant}'")
        assert len(trainings) == 1, [(r.info.status, r.info.run_name, r.data.tags.get("dagster.run_id")) for r in trainings]
        (training,) = trainings
        by_variant[variant] = training
        assert training.data.tags["gpt_pipeline/sweep"] == "test_sweep"
        assert float(training.data.params["learning_rate"]) == RATES[variant]
        (sweep_home / variant).mkdir()
        logged = client.download_artifacts(training.info.run_id, "generations.json", str(sweep_home / variant))
        table = json.loads(open(logged).read())
        texts = [row[table["columns"].index("text")] for row in table["data"]]
        assert texts == stored["text"].to_list(), variant  # its run holds its own generations only
        (generation_run,) = client.search_runs(
            [experiment.experiment_id],
            f"tags.`dagster.asset_key` = 'sample_generations' and tags.`gpt_pipeline/variant` = '{variant}'")
        assert generation_run.data.tags["mlflow.parentRunId"] == training.info.run_id
    parents = {run.data.tags["mlflow.parentRunId"] for run in by_variant.values()}
    assert len(parents) == 1  # one parent run for the sweep
    parent = client.get_run(parents.pop())
    assert parent.data.tags["gpt_pipeline/role"] == "sweep" and parent.data.tags["gpt_pipeline/sweep"] == "test_sweep"

    bits = {v: run.data.metrics["final_test_bits_per_character"] for v, run in by_variant.items()}
    best = min(bits, key=bits.get)
    champion = client.get_model_version_by_alias("gpt-pipeline", "champion")
    assert champion.run_id == by_variant[best].info.run_id
    assert provenance.weights_digest(storage.load_stored(dg.AssetKey("champion_model"), GPT)) == digests[best]
    champion_event = instance.get_latest_materialization_event(dg.AssetKey("champion_model"))
    assert champion_event.asset_materialization.metadata["champion"].value == best

    # mlflow's module functions use $MLFLOW_TRACKING_URI (isolated_storage's, the sweep's store); no
    # mlflow.set_tracking_uri, which would outlive this test
    ranked = mlflow.search_logged_models(experiment_ids=[experiment.experiment_id], output_format="list",
                                         order_by=[{"field_name": "metrics.test_bits_per_character"}])
    assert [m.source_run_id for m in ranked] == [by_variant[v].info.run_id for v in sorted(bits, key=bits.get)]
    assert [m.name for m in ranked] == sorted(bits, key=bits.get)  # each logged model named for its variant

    # Then `make run`'s config (the variant `default`), then a search with pruning (the pool still
    # at 2: Optuna is asked for two trials at once; the default pool's one at a time is
    # test_run_workers' queued variant): every variant stays.
    capsys.readouterr()
    assert main(["materialize", "--config", str(sweep_home / "base.yaml"), "--quiet"]) == 0
    search = _search(sweep_home, n_trials=6)
    assert main(["sweep", "--sweep", search]) == 0
    out = capsys.readouterr().out
    _agree_on_the_champion(instance, client, experiment, uri, {*RATES, "default"}, trials=6)
    assert "pruned at step" in out
    trial_runs = [r for n in range(6) for r in _run_records(instance, f"search_test-t{n:03d}")]
    assert len(trial_runs) == 6 and _most_at_once(trial_runs) == 2
    for record in trial_runs:
        _launched_by_the_daemon(instance, record)
        assert record.dagster_run.tags["gpt_pipeline/trial"] in {str(n) for n in range(6)}

    # Started again with one trial more: the study goes on, finished trials are not retrained.
    runs_before = {v: len(_run_records(instance, v)) for v in known_variants(instance)}
    assert main(["sweep", "--sweep", _search(sweep_home, n_trials=7)]) == 0
    after = {v: len(_run_records(instance, v)) for v in known_variants(instance)}
    new = set(after) - set(runs_before)
    assert new == {"search_test-t006"} and after["search_test-t006"] == 1
    assert all(after[v] == runs_before[v] for v in runs_before if v.startswith("search_test-"))
    _agree_on_the_champion(instance, client, experiment, uri, {*RATES, "default"}, trials=7)

    # MLflow reads like a training project: the search's parent run spans its trials, and the links
    # from Dagster open the model-training view of MLflow's UI.
    trials = client.search_runs([experiment.experiment_id], "tags.`gpt_pipeline/sweep` = 'search_test' and "
                                "tags.`dagster.asset_key` = 'trained_model'")
    (parent_id,) = {run.data.tags["mlflow.parentRunId"] for run in trials}
    parent = client.get_run(parent_id).info
    assert parent.start_time <= min(r.info.start_time for r in trials)
    assert parent.end_time >= max(r.info.end_time for r in trials)
    link = instance.get_latest_materialization_event(dg.AssetKey("trained_model")).asset_materialization.metadata
    assert link["mlflow_run"].value.endswith("?workflowType=machine_learning")


def _search(folder, n_trials: int) -> str:
    path = folder / "search.yaml"
    path.write_text(yaml.safe_dump({"name": "search_test", "base": "base.yaml", "search": {
        "n_trials": n_trials, "seed": 3, "sampler": "random",
        "pruner": {"kind": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
        "space": {"trained_model.learning_rate": {"low": 0.0003, "high": 0.03, "log": True}}}}))
    return str(path)


def _agree_on_the_champion(instance, client, experiment, uri, listed: set, trials: int) -> None:
    """Every variant is still a partition; champion_model, compare, the registry alias and
    search_logged_models name the same variant; at least one trial was pruned and is not it."""
    from gpt_pipeline.defs.champion import current_data_digest, standings
    from gpt_pipeline.tracking.compare import compare_runs

    variants = set(known_variants(instance))
    assert listed | {f"search_test-t{n:03d}" for n in range(trials)} == variants
    rows = standings(instance, current_data_digest(instance))
    winner = rows[0]["variant"]
    assert rows[0]["rank"] == 1
    pruned = [r["variant"] for r in rows if r["note"].startswith("pruned at step")]
    assert pruned and winner not in pruned and all(r["rank"] is None for r in rows if r["variant"] in pruned)
    event = instance.get_latest_materialization_event(dg.AssetKey("champion_model"))
    assert event.asset_materialization.metadata["champion"].value == winner
    starred = [row for row in compare_runs(uri) if row["champion"]]
    assert len(starred) == 1 and starred[0]["variant"] == winner
    version = client.get_model_version_by_alias("gpt-pipeline", "champion")
    assert version.tags["champion_variant"] == winner == version.tags["variant"]
    assert client.get_run(version.tags["champion_run_id"]).data.tags["gpt_pipeline/variant"] == winner
    assert winner in version.description and float(version.tags["test_bits_per_character"]) > 0
    best = mlflow.search_logged_models(experiment_ids=[experiment.experiment_id], output_format="list",
                                       order_by=[{"field_name": "metrics.test_bits_per_character"}])[0]
    assert best.name == winner
    for variant in pruned:  # tagged pruned in MLflow, no model logged
        (run,) = client.search_runs([experiment.experiment_id], f"tags.`dagster.asset_key` = 'trained_model' and "
                                    f"tags.`gpt_pipeline/variant` = '{variant}'")
        assert run.data.tags["gpt_pipeline/pruned"] == "true" and not run.outputs.model_outputs
