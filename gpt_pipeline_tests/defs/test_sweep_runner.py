"""`gpt-pipeline sweep` end to end: variants in processes of their own, at the same time, against
one real Dagster instance and one real MLflow store; then the champion."""

from __future__ import annotations

import copy
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
from gpt_pipeline.defs.local_instance import LOCAL_INSTANCE_YAML
from gpt_pipeline.defs.variants import known_variants
from gpt_pipeline.model.gpt import GPT
from gpt_pipeline.model.generations import GenerationConfig, generate_samples
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG

RATES = {"lr_a": 0.002, "lr_b": 0.004, "lr_c": 0.008}
DATA_ASSETS = ("raw_stories", "bpe_tokenizer", "tokenized_dataset")


@pytest.fixture
def sweep_home(tmp_path, isolated_storage, monkeypatch):
    """A Dagster home whose pools take one step at a time (as `make`'s), and a base run config."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(LOCAL_INSTANCE_YAML)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    base = copy.deepcopy(TINY_RUN_CONFIG)
    base["ops"]["sample_generations"]["config"]["prompts"] = ["Once", "The dog", "A cat"]
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    return tmp_path


def _sweep(folder, variants: dict) -> str:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "test_sweep", "base": "base.yaml", "variants": variants}))
    return str(path)


def _run_records(instance, variant):
    return instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": variant}))


def test_three_variants_at_once_each_its_own_files_runs_and_generations(sweep_home, isolated_storage, capsys):
    data, mlruns = isolated_storage
    sweep = _sweep(sweep_home, {name: {"trained_model": {"learning_rate": rate}} for name, rate in RATES.items()})
    assert main(["sweep", "--sweep", sweep, "--parallel", "3"]) == 0
    out = capsys.readouterr().out
    assert "sweep wall time" in out and all(name in out for name in RATES)

    instance = dg.DagsterInstance.get()
    for asset in DATA_ASSETS:  # materialized once for the whole sweep
        records = instance.fetch_materializations(dg.AssetKey(asset), limit=10).records
        assert len(records) == 1, asset
    runs = {variant: _run_records(instance, variant) for variant in RATES}
    assert all(len(records) == 1 for records in runs.values())
    starts = [records[0].start_time for records in runs.values()]
    ends = [records[0].end_time for records in runs.values()]
    assert max(starts) < min(ends), "the three variants did not run at the same time"

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

    # Then `make run`'s config (the variant `default`), then a search with pruning: every variant stays.
    capsys.readouterr()
    assert main(["materialize", "--config", str(sweep_home / "base.yaml"), "--quiet"]) == 0
    search = _search(sweep_home, n_trials=6)
    assert main(["sweep", "--sweep", search]) == 0
    out = capsys.readouterr().out
    _agree_on_the_champion(instance, client, experiment, uri, {*RATES, "default"}, trials=6)
    assert "pruned at step" in out

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


def test_a_failing_variant_fails_alone_and_the_ranking_says_why(sweep_home, capsys):
    sweep = _sweep(sweep_home, {
        "good": {"trained_model": {"learning_rate": 0.004}},
        # one step of training does not beat the unigram baseline: beats_unigram refuses it
        "too_short": {"trained_model": {"training_iterations": 1, "evaluation_interval": 1}},
    })
    assert main(["sweep", "--sweep", sweep, "--parallel", "2"]) == 0
    out = capsys.readouterr().out
    live = [line.split()[:5] for line in out[:out.rindex("rank  variant")].splitlines()]  # as each variant ends
    assert ["rank", "variant", "state", "step", "test_bpc"] in live
    assert any(cells[1:4] == ["good", "trained", "40"] and float(cells[4]) > 0 for cells in live if len(cells) == 5)
    assert any(cells[1:4] == ["too_short", "failed", "-"] for cells in live if len(cells) >= 4)
    ranking = out[out.rindex("rank  variant"):]
    good = next(line for line in ranking.splitlines() if " good " in f" {line} ")
    short = next(line for line in ranking.splitlines() if "too_short" in line)
    assert good.startswith("1 ") and short.startswith("- ")
    assert "beats_unigram" in short and "failed" in short
    instance = dg.DagsterInstance.get()
    event = instance.get_latest_materialization_event(dg.AssetKey("champion_model"))
    metadata = event.asset_materialization.metadata
    assert metadata["champion"].value == "good"
    standing = {r.data["variant"]: r.data for r in metadata["standings"].value.records}  # tables
    details = {r.data["variant"]: r.data for r in metadata["variants"].value.records}
    assert standing["too_short"]["rank"] == "-" and "beats_unigram" in details["too_short"]["overrides / note"]


def test_trainings_take_turns_in_the_pool_and_parallel_raises_it_for_the_sweep_only(sweep_home):
    from gpt_pipeline.definitions import defs
    from gpt_pipeline.defs.sources import TRAINING_POOL
    from gpt_pipeline.defs.sweep_runner import _PoolLimit
    from gpt_pipeline.devices import training_threads

    assert defs.resolve_assets_def("trained_model").op.pool == TRAINING_POOL
    instance = dg.DagsterInstance.get()
    info = instance.event_log_storage.get_concurrency_info(TRAINING_POOL)
    assert info.limit == 1 and info.using_default_limit  # the home's dagster.yaml: one at a time
    with _PoolLimit(instance, 3):
        assert instance.event_log_storage.get_concurrency_info(TRAINING_POOL).limit == 3
    info = instance.event_log_storage.get_concurrency_info(TRAINING_POOL)
    assert info.limit == 1 and info.using_default_limit  # set back
    assert training_threads(0, at_once=3, cores=16) == 5 and training_threads(0, at_once=1, cores=2) == 2


def test_sigterm_stops_the_sweep_and_the_training_processes_it_started(sweep_home, isolated_storage):
    """SIGTERM (as Ctrl-C) of `gpt-pipeline sweep --parallel 2`: the `materialize` process of its
    variant gets SIGTERM and ends its Dagster run FAILURE, none is left behind, the sweep exits 130
    in a line. (One variant: a second process would cost its imports again, to show the same.)"""
    import os
    import signal
    import subprocess
    import sys
    import time

    data, _ = isolated_storage
    sweep = _sweep(sweep_home, {"long": {"trained_model": {"training_iterations": 100000, "evaluation_interval": 10}}})
    process = subprocess.Popen([sys.executable, "-m", "gpt_pipeline", "sweep", "--sweep", sweep, "--parallel", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    give_up = time.monotonic() + 240
    while not list((data / "checkpoints" / "trained_model" / "long").glob("*/*.safetensors")):
        assert process.poll() is None and time.monotonic() < give_up, process.communicate()[0][-3000:]
        time.sleep(0.2)
    stopped = time.monotonic()
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    assert time.monotonic() - stopped < 30
    assert process.returncode == 130 and out.splitlines()[-1] == "gpt-pipeline: interrupted", out[-2000:]
    assert "Traceback" not in out, out[-2000:]
    home = os.environ["DAGSTER_HOME"]
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):  # no materialize of this home left running
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        assert not (b"materialize" in cmdline and f"DAGSTER_HOME={home}".encode() in environ), cmdline
    with dg.DagsterInstance.get() as instance:
        (run,) = _run_records(instance, "long")
        assert run.dagster_run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
