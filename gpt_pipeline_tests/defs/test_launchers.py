"""trained_model's launchers: training through Dagster Pipes, retries that resume, the settings
refused before training, and the Kubernetes pod spec (known answers; no cluster here).

The Pipes tests materialize the real lineage (tiny config) in an ephemeral Dagster instance
with a real MLflow SQLite store. The retry test SIGKILLs the Pipes worker once it has written
its step-20 checkpoint: Dagster retries the step (the asset's RetryPolicy) and the retry resumes
from that checkpoint.
"""

from __future__ import annotations

import copy
import importlib.util
import shlex
import signal
import threading
from pathlib import Path

import dagster as dg
import psutil
import pytest
from mlflow.tracking import MlflowClient

from gpt_pipeline.defs.assets import ASSETS
from gpt_pipeline.defs.io_manager import AssetFileIOManager
from gpt_pipeline.defs.k8s import K8sLaunchConfig, check_pod_settings, pod_command, pod_spec
from gpt_pipeline.defs.checks import user_errors
from gpt_pipeline.defs.launchers import other_nodes_command, resolve_launcher, retry_transient
from gpt_pipeline.defs.resources import MLflowResource
from gpt_pipeline.model.gpt import GPTConfig
from gpt_pipeline.training.config import TrainConfig
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG, with_default_variant

UPSTREAM = ["raw_stories", "bpe_tokenizer", "tokenized_dataset"]


def _run_config(**changes) -> dict:
    run_config = copy.deepcopy(TINY_RUN_CONFIG)
    run_config["ops"]["trained_model"]["config"].update(changes)
    del run_config["ops"]["sample_generations"], run_config["ops"]["model_evaluation"]
    return run_config


def _materialize(run_config: dict, instance: dg.DagsterInstance) -> dg.ExecuteInJobResult:
    return dg.materialize(ASSETS, selection=[*UPSTREAM, "trained_model"], run_config=run_config,
                          resources={"io_manager": AssetFileIOManager(), "mlflow": MLflowResource()},
                          instance=with_default_variant(instance), raise_on_error=False, partition_key="default")


def _training_runs(mlruns: Path) -> list:
    client = MlflowClient(f"sqlite:///{mlruns / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("gpt-pipeline")
    runs = [r for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get("dagster.asset_key") == "trained_model"]
    return sorted(runs, key=lambda r: r.info.start_time), client


def _log_messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [e.user_message for e in instance.all_logs(run_id) if e.user_message]


# --- through Pipes ------------------------------------------------------------------------------


@pytest.mark.parametrize("processes", [1, 2])
def test_a_pipes_training_reports_its_evaluations_to_dagster_and_mlflow(isolated_storage, processes):
    data, mlruns = isolated_storage
    instance = dg.DagsterInstance.ephemeral()
    result = _materialize(_run_config(launcher="subprocess", num_processes=processes), instance)
    assert result.success
    metadata = result.asset_materializations_for_node("trained_model")[0].metadata
    assert metadata["steps"].value == 40 and "resumed_from_step" not in metadata  # nothing resumed
    assert [r.data["step"] for r in metadata["loss_history"].value.records] == [0, 20, 40]
    messages = _log_messages(instance, result.run_id)
    assert any("external process successfully opened dagster pipes" in m for m in messages)
    for step in (0, 20, 40):  # the worker's Pipes log lines, in the Dagster event log
        assert any(m.startswith(f"step {step}/40: train loss ") for m in messages), messages
    runs, client = _training_runs(mlruns)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, "test_loss")
    assert [m.step for m in history] == [0, 20, 40]  # the custom messages, logged by the asset
    speeds = {m.step: m.value for m in client.get_metric_history(runs[0].info.run_id, "tokens_per_second")}
    assert speeds[20] > 0 and speeds[40] > 0  # tokens/s of each evaluation after the first


def _kill_worker_after_checkpoint(data: Path, step: int, killed: list, stop: threading.Event) -> None:
    """SIGKILL the Pipes worker of this process once checkpoint ``step`` exists."""
    me = psutil.Process()
    while not stop.is_set():
        if list((data / "checkpoints" / "trained_model" / "default").glob(f"*/{step}.safetensors")):
            for child in me.children(recursive=True):
                if "gpt_pipeline.defs.pipes_worker" in " ".join(child.cmdline()):
                    child.send_signal(signal.SIGKILL)
                    killed.append(child.pid)
                    return
        stop.wait(0.01)


def test_a_killed_worker_is_retried_and_resumes_from_its_checkpoint(isolated_storage):
    data, mlruns = isolated_storage
    instance = dg.DagsterInstance.ephemeral()
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=_kill_worker_after_checkpoint, args=(data, 20, killed, stop), daemon=True)
    killer.start()
    try:
        result = _materialize(_run_config(launcher="subprocess", training_iterations=120), instance)
    finally:
        stop.set()
        killer.join()
    assert killed, "the worker was never killed"
    assert result.success
    metadata = result.asset_materializations_for_node("trained_model")[0].metadata
    assert metadata["steps"].value == 120
    assert metadata["resumed_from_step"].value >= 20  # the retry started from the killed run's checkpoint
    events = instance.all_logs(result.run_id)
    restarted = [e for e in events if e.dagster_event and e.dagster_event.event_type_value == "STEP_RESTARTED"]
    assert len(restarted) == 1
    messages = _log_messages(instance, result.run_id)
    assert any("the training worker was killed by SIGKILL" in m and "retryable" in m for m in messages)
    runs, _ = _training_runs(mlruns)
    assert [r.info.status for r in runs] == ["FAILED", "FINISHED"]


def test_bad_input_is_not_retried(isolated_storage):
    instance = dg.DagsterInstance.ephemeral()
    result = _materialize(_run_config(launcher="subprocess", contexts_per_batch=100_000), instance)
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert len(failure) == 1 and "contexts_per_batch=100000" in failure[0].step_failure_data.error.message
    assert not [e for e in result.all_events if e.event_type_value == "STEP_RESTARTED"]


def test_retry_transient_retries_unexpected_errors_and_not_user_errors():
    """An unexpected error (a connection that broke, as when the MLflow server goes away) is
    retried with the policy's backoff; a bad-input error fails at once."""
    attempts = {"transient": 0, "user": 0}

    @dg.asset
    def transient(context):
        with retry_transient(context), user_errors():
            attempts["transient"] += 1
            if attempts["transient"] == 1:
                raise ConnectionError("connection to the MLflow server was refused")

    @dg.asset
    def user(context):
        with retry_transient(context), user_errors():
            attempts["user"] += 1
            raise ValueError("TrainConfig.seed must be an integer >= 0, got -1")

    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([transient], instance=instance).success
    assert attempts["transient"] == 2
    result = dg.materialize([user], instance=instance, raise_on_error=False)
    assert not result.success and attempts["user"] == 1
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_failure_data.error.message.strip().endswith("TrainConfig.seed must be an integer >= 0, got -1")


# --- settings refused up front ------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "message"), [
    (dict(nnodes=2), "TrainConfig.rdzv_endpoint must be host:port (node 0's address) when nnodes=2, got ''"),
    (dict(nnodes=2, rdzv_endpoint="node0"), "TrainConfig.rdzv_endpoint must be host:port"),
    (dict(nnodes=2, node_rank=2, rdzv_endpoint="10.0.0.1:29400"),
     "TrainConfig.node_rank=2 is out of range for nnodes=2 (0 to 1)"),
    (dict(nnodes=0), "TrainConfig.nnodes must be a positive integer, got 0"),
    (dict(num_processes=2, nnodes=2, rdzv_endpoint="h:1", contexts_per_batch=3),
     "TrainConfig.num_processes=2 x nnodes=2 is more than contexts_per_batch=3"),
    (dict(num_processes=4, contexts_per_batch=3), "TrainConfig.num_processes=4 is more than contexts_per_batch=3"),
])
def test_bad_node_settings_are_refused_with_one_line(changes, message):
    with pytest.raises(ValueError) as info:
        TrainConfig(**changes)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_launcher_choices():
    assert resolve_launcher("auto", TrainConfig()) == "in_process"
    assert resolve_launcher("auto", TrainConfig(num_processes=2)) == "subprocess"
    assert resolve_launcher("subprocess", TrainConfig()) == "subprocess"
    with pytest.raises(ValueError, match=r"launcher='in_process' trains one process, not num_processes=2"):
        resolve_launcher("in_process", TrainConfig(num_processes=2))
    with pytest.raises(ValueError, match=r"launcher must be one of \('auto', 'in_process', 'subprocess', 'k8s'\)"):
        resolve_launcher("thread", TrainConfig())
    with pytest.raises(ValueError, match=r"node_rank=1: the asset runs node 0"):
        resolve_launcher("auto", TrainConfig(nnodes=2, node_rank=1, rdzv_endpoint="h:1"))


def test_the_other_nodes_command():
    model = GPTConfig(vocab_size=16, embedding_size=32, context_length=16, head_count=2, block_count=1)
    config = TrainConfig(num_processes=2, nnodes=3, rdzv_endpoint="node0:29400")
    command = shlex.split(other_nodes_command(model, config, Path("/data/d.parquet"), Path("/data/ck"), None))
    assert command[:8] == ["python", "-m", "torch.distributed.run", "--nnodes=3", "--node-rank=<RANK>",
                           "--rdzv-backend=static", "--rdzv-endpoint=node0:29400", "--nproc_per_node=2"]
    assert command[command.index("-m", 3) + 1] == "gpt_pipeline.training.distributed"  # no Pipes there
    assert GPTConfig.from_json(command[command.index("--model-config") + 1]) == model


@pytest.mark.skipif(importlib.util.find_spec("dagster_k8s") is not None, reason="dagster-k8s is installed")
def test_k8s_without_dagster_k8s_is_refused():
    with pytest.raises(ValueError, match=r"launcher='k8s' needs dagster-k8s, which is not installed: "
                                         r"pip install 'gpt-pipeline\[k8s\]'"):
        resolve_launcher("k8s", TrainConfig())


def test_the_asset_refuses_bad_settings_before_training(isolated_storage):
    data, _ = isolated_storage
    instance = dg.DagsterInstance.ephemeral()
    result = _materialize(_run_config(nnodes=2), instance)
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure[0].step_key == "raw_stories"  # the run's first step checks the whole run config: no work at all
    assert "TrainConfig.rdzv_endpoint must be host:port" in failure[0].step_failure_data.error.message
    assert not (data / "checkpoints").exists()  # nothing trained


# --- the Kubernetes pod -------------------------------------------------------------------------


def test_pod_spec_known_answer():
    settings = K8sLaunchConfig(image="registry.example.com/gpt:1-cuda", gpus=4, cpu="16", memory="64Gi",
                               node_selector={"nvidia.com/gpu.present": "true"}, volume_claim="gpt-data",
                               mount_path="/data", env_secret="gpt-pipeline-env")
    assert pod_spec(settings) == {
        "restartPolicy": "Never",
        "containers": [{
            "name": "training",
            "env": [{"name": "GPT_PIPELINE_DATA_DIR", "value": "/data"}],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "dshm", "mountPath": "/dev/shm"}],
            "resources": {"limits": {"nvidia.com/gpu": 4, "cpu": "16", "memory": "64Gi"},
                          "requests": {"cpu": "16", "memory": "64Gi"}},
            "envFrom": [{"secretRef": {"name": "gpt-pipeline-env"}}],
        }],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "gpt-data"}},
                    {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    cpu_only = pod_spec(K8sLaunchConfig(image="gpt:1", gpus=0))
    assert "resources" not in cpu_only["containers"][0] and "tolerations" not in cpu_only
    assert "envFrom" not in cpu_only["containers"][0] and "nodeSelector" not in cpu_only


def test_pod_command_known_answer():
    model = GPTConfig(vocab_size=16, embedding_size=32, context_length=16, head_count=2, block_count=1)
    one = pod_command(model, TrainConfig(device="cuda"), "/data/tokenized_dataset.parquet", "/data/checkpoints/x")
    assert one[:3] == ["python", "-m", "gpt_pipeline.defs.pipes_worker"]
    assert one[one.index("--dataset") + 1] == "/data/tokenized_dataset.parquet"
    assert one[one.index("--checkpoint-dir") + 1] == "/data/checkpoints/x"
    assert one[one.index("--error-dir") + 1] == "/data/checkpoints/x/errors"
    assert GPTConfig.from_json(one[one.index("--model-config") + 1]) == model
    four = pod_command(model, TrainConfig(device="cuda", num_processes=4), "/d.parquet", "/c")
    assert four[:5] == ["python", "-m", "gpt_pipeline.training.local_launch", "--nproc-per-node=4", "-m"]
    assert four[four.index("-m", 3) + 1] == "gpt_pipeline.defs.pipes_worker"
    nodes = pod_command(model, TrainConfig(device="cuda", num_processes=2, nnodes=3, rdzv_endpoint="train-0:29400"),
                        "/d.parquet", "/c")
    assert nodes[3:8] == ["--nnodes=3", "--node-rank=0", "--rdzv-backend=static", "--rdzv-endpoint=train-0:29400",
                          "--nproc_per_node=2"]


def test_pod_settings_are_checked():
    with pytest.raises(ValueError, match=r"^TrainedModelConfig.k8s.image is empty"):
        check_pod_settings(K8sLaunchConfig(), TrainConfig())
    with pytest.raises(ValueError, match=r"^TrainedModelConfig.k8s.gpus=2 is fewer than num_processes=4"):
        check_pod_settings(K8sLaunchConfig(image="i", gpus=2), TrainConfig(num_processes=4))
    check_pod_settings(K8sLaunchConfig(image="i", gpus=4), TrainConfig(num_processes=4))
