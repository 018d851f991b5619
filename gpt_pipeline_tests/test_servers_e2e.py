"""End to end against the real servers: ``dagster dev``, its code location loaded (nothing read
from a sweep file), a sweep's two variants added to the instance as dynamic partitions, the data
assets launched through GraphQL ``launchRun`` with a run config as the Launchpad launches them;
a ``launchRun`` of ``trained_model`` with partition key ``../x`` refused before any work; then a
backfill of the variants and the champion launched as the Dagster UI launches one (both variant
partitions of ``trained_model`` and ``sample_generations``, then ``champion_model``; no run
config: each variant's config is bound to its partition); then ``mlflow server`` on the same SQLite store
serves the training runs, a metric history, the artifacts and the ``champion`` alias through
MLflow's REST API. Both servers are stopped in a ``finally``, and no process they started may
outlive the test.

Leaks are found by the marker every started process carries (``server_processes``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import dagster as dg
import yaml

from gpt_pipeline.defs.local_instance import LOCAL_INSTANCE_YAML
from gpt_pipeline.defs.sweeps import load_sweep, variant_record
from gpt_pipeline.defs.variants import save_variant
from gpt_pipeline_tests.server_processes import (
    BIN,
    MARKER,
    _free_port,
    _graphql,
    _http_json,
    _marked_processes,
    _start,
    _stop,
    _tail,
    _wait_all_exited,
    _wait_for,
)
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG

REPO_ROOT = Path(__file__).resolve().parents[1]
# The whole test. The backfill takes five iterations of Dagster's backfill daemon, which runs one
# every 30 s (a fixed interval): it finds the backfill, then requests the data assets, the two
# variants, the champion, and marks it complete; about 150 s of the usual 180 s here.
# Before the backfill, two runs of their own (the data assets, and the ../x launch refused), about
# 60 s more.
BUDGET_SECONDS = 320


WORKSPACE_QUERY = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "\
    "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
# What the UI's "Materialize all" reads of the group's assets before it picks a launch.
ASSET_NODES_QUERY = """{ assetNodes { assetKey { path } groupName isObservable isExecutable
  isMaterializable jobNames partitionDefinition { type } partitionKeysByDimension { partitionKeys } } }"""
# The UI's mutation (ui-core/src/instance/backfill/BackfillUtils.tsx), as it sends it.
LAUNCH_BACKFILL_MUTATION = """mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PartitionSetNotFoundError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on UnauthorizedError { message }
    ... on PipelineNotFoundError { message }
    ... on RunConflict { message }
    ... on ConflictingExecutionParamsError { message }
    ... on RunConfigValidationInvalid { errors { message path reason } }
    ... on PythonError { message stack }
  } }"""
BACKFILL_QUERY = """query Backfill($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename ... on PythonError { message }
  ... on PartitionBackfill { status isAssetBackfill error { message }
    runs { runId status startTime endTime tags { key value } }
    assetBackfillData { assetBackfillStatuses { __typename
      ... on AssetPartitionsStatusCounts { assetKey { path } numPartitionsTargeted
        numPartitionsInProgress numPartitionsMaterialized numPartitionsFailed }
      ... on UnpartitionedAssetStatus { assetKey { path } inProgress materialized failed } } } } } }"""
BACKFILL_DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
MATERIALIZATIONS_QUERY = """query Materializations($key: [String!]!) { assetOrError(assetKey: {path: $key}) {
  ... on Asset { assetMaterializations { runId partition
    metadataEntries { label ... on TextMetadataEntry { text } } } } } }"""
DATA_ASSETS = ("raw_stories", "bpe_tokenizer", "tokenized_dataset")
VARIANT_ASSETS = ("trained_model", "sample_generations", "model_evaluation")
CHAMPION_ASSETS = ("champion_model", "champion_generations")
ELECTED_ASSETS = (*CHAMPION_ASSETS, "champion_evaluation")  # unpartitioned, after the variants
ALL_ASSETS = (*DATA_ASSETS, *VARIANT_ASSETS, *ELECTED_ASSETS)
# Two variants of one sweep: the test's tiny config as the base, learning rates apart.
VARIANT_RATES = {"lr_low": 0.003, "lr_high": 0.006}


def _write_sweep(folder: Path) -> Path:
    (folder / "base.yaml").write_text(yaml.safe_dump(TINY_RUN_CONFIG))
    sweep = folder / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "e2e", "base": "base.yaml",
        "variants": {v: {"trained_model": {"learning_rate": rate}} for v, rate in VARIANT_RATES.items()},
    }, sort_keys=False))
    return sweep


def _materializations(port: int, asset: str) -> list[dict]:
    found = _graphql(port, MATERIALIZATIONS_QUERY, {"key": [asset]})["assetOrError"]["assetMaterializations"]
    return [{**m, "metadata": {e["label"]: e.get("text") for e in m["metadataEntries"]}} for m in found]


def _location_loaded(port: int) -> bool:
    entries = _graphql(port, WORKSPACE_QUERY)["workspaceOrError"]["locationEntries"]
    errors = [e for e in entries if (e["locationOrLoadError"] or {}).get("__typename") == "PythonError"]
    if errors:
        raise AssertionError(f"code location failed to load: {entries}")
    return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)


LAUNCH_RUN_MUTATION = """mutation LaunchRun($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) { __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
    ... on PipelineNotFoundError { message } } }"""
RUN_QUERY = """query Run($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }"""
RUN_DONE = {"SUCCESS", "FAILURE", "CANCELED"}


def _launch_run(port: int, assets, run_config: dict, tags: dict) -> dict:
    params = {"selector": {"repositoryLocationName": "gpt_pipeline", "repositoryName": "__repository__",
                           "jobName": "__ASSET_JOB", "assetSelection": [{"path": [a]} for a in assets]},
              "runConfigData": run_config, "mode": "default",
              "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]}}
    return _graphql(port, LAUNCH_RUN_MUTATION, {"executionParams": params})["launchRun"]


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_dagster_run_then_mlflow_rest(tmp_path, monkeypatch):
    started = time.monotonic()
    deadline = started + BUDGET_SECONDS
    phases: dict[str, float] = {}  # seconds since the start, printed at the end (pytest -s)
    token = uuid.uuid4().hex
    store = tmp_path / "mlruns" / "mlflow.db"
    tracking_uri = f"sqlite:///{store}"
    (tmp_path / "dagster_home").mkdir()
    # The instance `make dagster-ui` uses (the Makefile's dagster.yaml): pools take one run at a
    # time, so the two variants' trainings take turns in the pool "training", in the run queue.
    (tmp_path / "dagster_home" / "dagster.yaml").write_text(LOCAL_INSTANCE_YAML)
    env = {
        **os.environ,
        MARKER: token,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "GPT_PIPELINE_DATA_DIR": str(tmp_path / "data"),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no job-runner worker pool beside the server
        "PYTHONUNBUFFERED": "1",
    }
    dagster_port, mlflow_port = _free_port(), _free_port()
    dagster_log, mlflow_log = tmp_path / "dagster.log", tmp_path / "mlflow.log"
    servers: list[subprocess.Popen] = []
    try:
        # --- Dagster: load the code location, backfill the group through GraphQL, wait for success.
        dagster = _start(
            [str(BIN / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(dagster_port),
             "-w", str(REPO_ROOT / "workspace.yaml")],
            env, dagster_log, tmp_path,
        )
        servers.append(dagster)
        _wait_for("dagster dev loads the code location", lambda: _location_loaded(dagster_port),
                  deadline, dagster, dagster_log)
        phases["location loaded"] = time.monotonic() - started
        commands = list(_marked_processes(token).values())
        assert sum("code-server start" in c for c in commands) == 1, commands
        assert sum("dagster_webserver" in c for c in commands) == 1, commands
        assert sum("dagster._daemon" in c for c in commands) == 1, commands

        # What "Materialize all…" on group gpt launches, as Dagster 1.13's UI decides it (ui-core
        # LaunchAssetExecutionButton: optionsForExecuteButton keeps the executable assets that are
        # not observable, so not stories_source; stateForLaunchingAssets: they share one
        # partitioning or none, and their first job in common, jobNames sorted, is the hidden
        # __ASSET_JOB; LaunchAssetChoosePartitionsDialog's onLaunchAsBackfill for such a target):
        # a pure asset backfill of the partitions chosen in the dialog (here all of them), with the
        # UI's tag and, no config saved in the dialog, no runConfigData. One backfill holds the
        # unpartitioned and the partitioned assets alike: Dagster runs the data assets once, then
        # each variant (trained_model, sample_generations and model_evaluation of one partition in one run), then
        # champion_model with champion_generations and champion_evaluation.
        # The sweep adds its variants to the instance (as `gpt-pipeline sweep` does), data first.
        monkeypatch.setenv("GPT_PIPELINE_DATA_DIR", str(tmp_path / "data"))
        sweep = load_sweep(_write_sweep(tmp_path))
        with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
            for variant in sweep.variants:
                save_variant(instance, variant_record(sweep, variant))
        data_config = {"ops": {a: TINY_RUN_CONFIG["ops"][a] for a in DATA_ASSETS}}
        data_run = _launch_run(dagster_port, DATA_ASSETS, data_config, {"dagster/from_ui": "true"})
        assert data_run["__typename"] == "LaunchRunSuccess", data_run
        data_run_id = data_run["run"]["runId"]

        def run_done(run_id):
            return lambda: (lambda s: s if s in RUN_DONE else None)(
                _graphql(dagster_port, RUN_QUERY, {"id": run_id})["runOrError"]["status"])

        assert _wait_for("the data run ends", run_done(data_run_id), deadline, dagster, dagster_log) == "SUCCESS"
        phases["data run done"] = time.monotonic() - started

        # A partition key that is no variant, and no safe name: refused before any work.
        before = _files(tmp_path)
        bad = _launch_run(dagster_port, ["trained_model"], {"ops": {"trained_model": TINY_RUN_CONFIG["ops"]["trained_model"]}},
                          {"dagster/partition": "../x"})
        if bad["__typename"] == "LaunchRunSuccess":  # launched: it must fail before any work
            assert _wait_for("the ../x run ends", run_done(bad["run"]["runId"]), deadline, dagster,
                             dagster_log) == "FAILURE"
        new_files = {f for f in _files(tmp_path) - before if not f.startswith(("dagster_home/", "dagster.log"))}
        assert not new_files, new_files  # no model, checkpoint or file outside data/
        phases["../x refused"] = time.monotonic() - started

        nodes = [n for n in _graphql(dagster_port, ASSET_NODES_QUERY)["assetNodes"] if n["groupName"] == "gpt"]
        assert {n["assetKey"]["path"][0] for n in nodes if n["isObservable"]} == {"stories_source"}
        selected = [n for n in nodes if n["isExecutable"] and not n["isObservable"]]
        assert {n["assetKey"]["path"][0] for n in selected} == set(ALL_ASSETS)
        selected = [n for n in selected if n["assetKey"]["path"][0] not in DATA_ASSETS]  # materialized above
        assert all(n["jobNames"][0] == "__ASSET_JOB" for n in selected), [n["jobNames"] for n in selected]
        partitioned = [n for n in selected if n["partitionDefinition"]]
        assert {n["assetKey"]["path"][0] for n in partitioned} == set(VARIANT_ASSETS)
        assert all(n["partitionDefinition"]["type"] == "DYNAMIC" for n in partitioned)
        partition_keys = partitioned[0]["partitionKeysByDimension"][0]["partitionKeys"]
        assert partition_keys == list(VARIANT_RATES)  # the variants the sweep added, in its order
        backfill_params = {
            "tags": [{"key": "dagster/from_ui", "value": "true"}],
            "assetSelection": [{"path": n["assetKey"]["path"]} for n in selected],
            "partitionNames": partition_keys,
            "fromFailure": False,
        }
        launched = _graphql(dagster_port, LAUNCH_BACKFILL_MUTATION,
                            {"backfillParams": backfill_params})["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill_id = launched["backfillId"]
        phases["backfill launched"] = time.monotonic() - started

        def backfill_done():
            found = _graphql(dagster_port, BACKFILL_QUERY, {"id": backfill_id})["partitionBackfillOrError"]
            assert found["__typename"] == "PartitionBackfill", found
            return found if found["status"] in BACKFILL_DONE else None

        backfill = _wait_for("the backfill completes", backfill_done, deadline, dagster, dagster_log)
        phases["backfill done"] = time.monotonic() - started
        assert backfill["status"] == "COMPLETED_SUCCESS", (backfill, _tail(dagster_log, 80))
        assert backfill["isAssetBackfill"] and backfill["error"] is None
        statuses = {s["assetKey"]["path"][0]: s for s in backfill["assetBackfillData"]["assetBackfillStatuses"]}
        assert set(statuses) == {*VARIANT_ASSETS, *ELECTED_ASSETS}
        for asset in ELECTED_ASSETS:
            assert statuses[asset]["__typename"] == "UnpartitionedAssetStatus", statuses[asset]
            assert statuses[asset]["materialized"] and not statuses[asset]["failed"], statuses[asset]
        for asset in VARIANT_ASSETS:
            assert {k: statuses[asset][k] for k in ("numPartitionsTargeted", "numPartitionsMaterialized",
                                                    "numPartitionsFailed", "numPartitionsInProgress")} \
                == {"numPartitionsTargeted": 2, "numPartitionsMaterialized": 2,
                    "numPartitionsFailed": 0, "numPartitionsInProgress": 0}, statuses[asset]
        runs = {r["runId"]: r for r in backfill["runs"]}
        assert all(r["status"] == "SUCCESS" for r in runs.values()), runs
        # The variants' trainings took turns in the pool "training" (one run at a time, the later
        # one held in the run queue): their runs never overlap.
        trained = sorted((r["startTime"], r["endTime"]) for r in runs.values()
                         if any(t["key"] == "dagster/partition" for t in r["tags"]))
        assert len(trained) == 2 and trained[0][1] <= trained[1][0], trained
        # Every materialization came from the data run or the backfill's runs: the data assets once
        # each (one run), each variant partition once, the champion and its generations once.
        materialized = {a: _materializations(dagster_port, a) for a in ALL_ASSETS}
        for asset, events in materialized.items():
            assert {e["runId"] for e in events} <= {*runs, data_run_id}, (asset, events, runs)
        for asset in (*DATA_ASSETS, *ELECTED_ASSETS):
            assert [e["partition"] for e in materialized[asset]] == [None], (asset, materialized[asset])
        assert {materialized[a][0]["runId"] for a in DATA_ASSETS} == {data_run_id}  # shared by every variant
        for asset in VARIANT_ASSETS:
            assert sorted(e["partition"] for e in materialized[asset]) == sorted(VARIANT_RATES), materialized[asset]
        assert (tmp_path / "data" / "champion_model.safetensors").is_file()
        assert (tmp_path / "data" / "champion_generations.parquet").is_file()
        for variant in VARIANT_RATES:
            assert (tmp_path / "data" / "trained_model" / f"{variant}.safetensors").is_file()
            assert (tmp_path / "data" / "sample_generations" / f"{variant}.parquet").is_file()
            assert (tmp_path / "data" / "model_evaluation" / f"{variant}.parquet").is_file()
        trainings = {e["partition"]: e for e in materialized["trained_model"]}
        elected = materialized["champion_model"][0]["metadata"]["champion"]
        champion_runs = {a: materialized[a][0]["metadata"]["mlflow_run_id"] for a in CHAMPION_ASSETS}

        # --- MLflow: serve the same store, read the runs back over REST.
        mlflow = _start(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", tracking_uri,
             "--default-artifact-root", (store.parent / "artifacts").as_uri(),
             "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
            env, mlflow_log, tmp_path,
        )
        servers.append(mlflow)
        api = f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow"
        experiment = _wait_for(
            "mlflow server answers",
            lambda: _http_json(f"{api}/experiments/get-by-name?experiment_name=gpt-pipeline")["experiment"],
            deadline, mlflow, mlflow_log,
        )

        def training_run(variant: str) -> dict:
            found = _http_json(f"{api}/runs/search", {
                "experiment_ids": [experiment["experiment_id"]],
                "filter": f"tags.`dagster.asset_key` = 'trained_model' and tags.`gpt_pipeline/variant` = '{variant}'",
            })["runs"]
            assert len(found) == 1, found
            return found[0]

        assert _http_json(f"{api}/runs/search", {  # the refused ../x run logged nothing
            "experiment_ids": [experiment["experiment_id"]],
            "filter": "tags.`dagster.partition` = '../x'"}).get("runs", []) == []
        model_config = TINY_RUN_CONFIG["ops"]["trained_model"]["config"]
        by_variant = {variant: training_run(variant) for variant in VARIANT_RATES}
        parents = set()
        for variant, found in by_variant.items():
            tags = {t["key"]: t["value"] for t in found["data"]["tags"]}
            params = {p["key"]: p["value"] for p in found["data"]["params"]}
            assert found["info"]["run_id"] == trainings[variant]["metadata"]["mlflow_run_id"]  # linked from Dagster
            assert tags["dagster.run_id"] == trainings[variant]["runId"]
            assert tags["gpt_pipeline/sweep"] == "e2e" and tags["dagster.partition"] == variant
            assert float(params["learning_rate"]) == VARIANT_RATES[variant]  # the variant's override
            assert int(params["training_iterations"]) == model_config["training_iterations"]  # the sweep's base
            parents.add(tags["mlflow.parentRunId"])
        assert len(parents) == 1  # both variants nested under the sweep's one parent run
        parent = _http_json(f"{api}/runs/get?run_id={parents.pop()}")["run"]
        parent_tags = {t["key"]: t["value"] for t in parent["data"]["tags"]}
        assert parent_tags["gpt_pipeline/role"] == "sweep" and "dagster.asset_key" not in parent_tags

        variant = next(iter(VARIANT_RATES))
        run = by_variant[variant]
        run_id = run["info"]["run_id"]
        assert run["info"]["status"] == "FINISHED"
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert int(params["vocab_size"]) == TINY_RUN_CONFIG["ops"]["bpe_tokenizer"]["config"]["vocab_size"]

        history = _http_json(f"{api}/metrics/get-history?run_id={run_id}&metric_key=test_loss")["metrics"]
        assert sorted(m["step"] for m in history) == [0, 20, 40]  # evaluation_interval 20 of 40 steps
        assert all(math.isfinite(m["value"]) and m["value"] > 0 for m in history)
        latest_metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert latest_metrics["test_loss"] == max(history, key=lambda m: m["step"])["value"]

        def listing(path: str = "") -> dict[str, dict]:
            query = urllib.parse.urlencode({"run_id": run_id, **({"path": path} if path else {})})
            return {f["path"]: f for f in _http_json(f"{api}/artifacts/list?{query}").get("files", [])}

        top = listing()
        assert {"checkpoint", "tokenizer", "config.json"} <= set(top)
        assert listing("checkpoint")["checkpoint/final.safetensors"]["file_size"] > 0
        assert "tokenizer/bpe_tokenizer.json" in listing("tokenizer")
        query = urllib.parse.urlencode({"run_id": run_id, "path": "config.json"})
        url = f"http://127.0.0.1:{mlflow_port}/get-artifact?{query}"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert json.loads(response.read())["learning_rate"] == VARIANT_RATES[variant]
        assert "loss_curve.png" in top and "generations.json" in top

        # The champion alias: the training run of the variant with the lower test bits per character.
        bits = {v: {m["key"]: m["value"] for m in r["data"]["metrics"]}["final_test_bits_per_character"]
                for v, r in by_variant.items()}
        assert len(set(bits.values())) == len(bits), bits  # no tie (a tie elects by file order)
        winner = min(bits, key=bits.get)
        assert elected == winner, (elected, bits)
        best = _http_json(f"{api}/registered-models/alias?name=gpt-pipeline&alias=champion")["model_version"]
        assert best["run_id"] == by_variant[winner]["info"]["run_id"]
        winner_metrics = {m["key"]: m["value"] for m in by_variant[winner]["data"]["metrics"]}
        assert float({t["key"]: t["value"] for t in best["tags"]}["test_loss"]) == winner_metrics["test_loss"]
        generations = _http_json(f"{api}/runs/get?run_id={champion_runs['champion_generations']}")["run"]
        assert {t["key"]: t["value"] for t in generations["data"]["tags"]}["mlflow.parentRunId"] \
            == champion_runs["champion_model"]  # nested under the champion's own run
        phases["mlflow checked"] = time.monotonic() - started
        first = min(r["startTime"] for r in runs.values())
        print("phases (s):", {k: round(v) for k, v in phases.items()}, "runs (s after the first start):",
              sorted((round(r["startTime"] - first), round(r["endTime"] - first)) for r in runs.values()))
    finally:
        stopped_cleanly = [_stop(server) for server in reversed(servers)]
        survivors = _wait_all_exited(token)
        for pid in survivors:  # ours by the marker: never leave them running
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert all(stopped_cleanly), f"a server ignored SIGTERM: {stopped_cleanly}"
    assert survivors == {}, f"processes outlived their servers: {survivors}"
