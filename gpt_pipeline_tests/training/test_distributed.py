"""Data-parallel training through the real torchrun (2 CPU processes, gloo).

- Known answer: two processes, each on its half of the same global batch, give the losses and
  weights of one process on the whole batch, up to float summation order. Measured on this
  machine (20 and 30 steps, lr 3e-3, batches of 6, 7 and 8 contexts, clamp/norm/no clipping):
  losses agree to 6e-8, weights to 4e-5 (AdamW divides each update by the gradient's running
  RMS, which magnifies the summation-order differences of tiny gradients). Tolerances: 1e-5 on
  losses, 1e-4 on weights; a run with another seed is farther away than that.
  Dropout is 0 here: each process draws the masks of its own rows from its own generator, so
  the masks differ from those of a single process drawing them for the whole batch.
- A run with unequal shares (7 contexts: 3 + 4) resumes a single-process checkpoint.
- Two nodes: two torchrun launchers on 127.0.0.1 (one process each, static rendezvous at node
  0's store) match one process within the same tolerances.
- A failing worker fails with one line naming torchrun's exit status and the worker's error
  (bad data: not retried).
- The trained_model asset with num_processes=2 materializes through Dagster and logs one
  MLflow run; SIGTERM or SIGKILL to the materializing process leaves no torchrun or worker.
"""

from __future__ import annotations

import copy
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import dagster as dg
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors import safe_open

from gpt_pipeline.training.checkpoint import load_checkpoint, read_checkpoint_metadata, training_state_of
from gpt_pipeline.data.splits import build_dataset_table
from gpt_pipeline.data.dataset_files import load_splits
from gpt_pipeline.defs.assets import ASSETS
from gpt_pipeline.defs.io_manager import AssetFileIOManager
from gpt_pipeline.defs.resources import MLflowResource
from gpt_pipeline.defs.launchers import train_in_workers
from gpt_pipeline.training.torchrun import DistributedTrainingError, launch, resolve_backend, torchrun_command
from gpt_pipeline.model.gpt import GPTConfig
from gpt_pipeline.data.table_file import TableFile
from gpt_pipeline.training.loop import TrainConfig, TrainResult, train
from gpt_pipeline_tests.reliability_support import (
    kill_running,
    child_env,
    fresh_mlflow_store,
    run_statuses,
    wait_for,
    write_run_config,
)
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG, with_default_variant

LOSS_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 1e-4
NO_DROPOUT = dict(embedding_dropout=0.0, attention_dropout=0.0, feed_forward_dropout=0.0, residual_dropout=0.0)
MODEL = GPTConfig(vocab_size=16, embedding_size=32, context_length=16, head_count=2, block_count=2,
                  feed_forward_multiplier=2, **NO_DROPOUT)
FAST = dict(learning_rate=3e-3, training_iterations=20, evaluation_interval=10, evaluation_iterations=2,
            contexts_per_batch=8, device="cpu", seed=5)
UPSTREAM = ["raw_stories", "bpe_tokenizer", "tokenized_dataset"]


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A stored dataset of stories that count upwards modulo 16: 120 train, 30 test."""
    rng = np.random.default_rng(0)
    stories = [[(int(s) + j) % 16 for j in range(n)]
               for s, n in zip(rng.integers(0, 16, 150), rng.integers(20, 40, 150))]
    path = tmp_path / "dataset.parquet"
    pq.write_table(build_dataset_table(stories, 16, 0.8), path)
    return path


def _losses(result) -> list[tuple[int, float, float]]:
    return [(e.step, e.train_loss, e.test_loss) for e in result.evaluations]


def _loss_gap(a, b) -> float:
    assert [e.step for e in a.evaluations] == [e.step for e in b.evaluations]
    return max(max(abs(x.train_loss - y.train_loss), abs(x.test_loss - y.test_loss))
               for x, y in zip(a.evaluations, b.evaluations))


def _weight_gap(a, b) -> float:
    left, right = a.model.state_dict(), b.model.state_dict()
    assert left.keys() == right.keys()
    return max(float((left[k].cpu() - right[k].cpu()).abs().max()) for k in left)


# --- configs ------------------------------------------------------------------------------------


def test_backend_and_command():
    with pytest.raises(ValueError, match="distributed_backend='nccl' needs CUDA; the device is 'cpu'"):
        resolve_backend("nccl", torch.device("cpu"))
    assert resolve_backend("auto", torch.device("cuda")) == "nccl"
    assert resolve_backend("gloo", torch.device("cuda")) == "gloo"
    command = torchrun_command(MODEL, TrainConfig(num_processes=3), "d.parquet", "ck", "ev.jsonl")
    assert command[:4] == [sys.executable, "-m", "gpt_pipeline.training.local_launch", "--nproc-per-node=3"]
    assert command[command.index("-m", 2) + 1] == "gpt_pipeline.training.distributed"


def test_train_refuses_several_processes_in_one(dataset):
    train_data, test_data = load_splits(TableFile.stored_at(dataset))
    with pytest.raises(ValueError, match="num_processes=2 trains in torchrun workers"):
        train(MODEL, TrainConfig(**FAST, num_processes=2), train_data, test_data)


# --- known answers ------------------------------------------------------------------------------


def test_two_gloo_processes_match_one_process_on_the_same_global_batch(tmp_path, dataset):
    train_data, test_data = load_splits(TableFile.stored_at(dataset))
    single = train(MODEL, TrainConfig(**FAST), train_data, test_data)
    seen, listening = [], set()

    def report(evaluation):  # while the workers run: every TCP port they listen on
        seen.append(evaluation)
        ours = {child.pid for child in psutil.Process().children(recursive=True)}
        listening.update((c.laddr.ip, c.laddr.port) for c in psutil.net_connections("tcp")
                         if c.status == psutil.CONN_LISTEN and c.pid in ours)

    ddp = launch(MODEL, TrainConfig(**FAST, num_processes=2, distributed_backend="gloo"), dataset,
                 tmp_path / "checkpoints", report)

    assert listening and {ip for ip, _ in listening} <= {"127.0.0.1", "::1"}, listening  # never *:port
    assert [e.step for e in seen] == [0, 10, 20] and ddp.steps == 20 and ddp.resumed_from is None
    assert _loss_gap(single, ddp) < LOSS_TOLERANCE, (_losses(single), _losses(ddp))
    assert _weight_gap(single, ddp) < WEIGHT_TOLERANCE
    assert ddp.evaluations[-1].train_loss < ddp.evaluations[0].train_loss - 1.0  # it learnt
    other_seed = train(MODEL, TrainConfig(**{**FAST, "seed": 6}), train_data, test_data)
    assert _weight_gap(other_seed, ddp) > 100 * WEIGHT_TOLERANCE  # the tolerance tells runs apart

    # rank 0 wrote the checkpoints, rank 1's dropout generator included
    final = tmp_path / "checkpoints" / "final.safetensors"
    assert sorted(p.name for p in final.parent.iterdir()) == ["0.safetensors", "10.safetensors", "final.safetensors"]
    state = training_state_of(final, read_checkpoint_metadata(final))
    assert state["step"] == 20 and state["dropout_processes"] == 2
    with safe_open(final, "pt") as handle:
        assert {"rng.dropout", "rng.dropout.rank1", "rng.batch"} <= set(handle.keys())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_on_loopback_match_one_process_on_the_same_global_batch(tmp_path, dataset):
    """Two torchrun launchers on 127.0.0.1 acting as two nodes (one gloo process each) that meet
    at node 0's rendezvous store: the same tolerances as two processes on one node."""
    train_data, test_data = load_splits(TableFile.stored_at(dataset))
    single = train(MODEL, TrainConfig(**FAST), train_data, test_data)
    endpoint = f"127.0.0.1:{_free_port()}"
    results, seen = {}, []

    def node(rank: int) -> None:
        config = TrainConfig(**FAST, nnodes=2, node_rank=rank, rdzv_endpoint=endpoint, distributed_backend="gloo")
        try:
            results[rank] = launch(MODEL, config, dataset, tmp_path / "checkpoints", seen.append if rank == 0 else None)
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            results[rank] = error

    threads = [threading.Thread(target=node, args=(rank,)) for rank in (1, 0)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert results.get(1, "missing") is None, results  # node 1 holds no rank 0: no result of its own
    two_nodes = results[0]
    assert isinstance(two_nodes, TrainResult), results
    assert [e.step for e in seen] == [0, 10, 20] and two_nodes.steps == 20
    assert _loss_gap(single, two_nodes) < LOSS_TOLERANCE, (_losses(single), _losses(two_nodes))
    assert _weight_gap(single, two_nodes) < WEIGHT_TOLERANCE
    final = tmp_path / "checkpoints" / "final.safetensors"
    assert training_state_of(final, read_checkpoint_metadata(final))["dropout_processes"] == 2


class Interrupt(Exception):
    pass


def test_unequal_shares_resume_a_single_process_checkpoint(tmp_path, dataset):
    train_data, test_data = load_splits(TableFile.stored_at(dataset))
    config = TrainConfig(**{**FAST, "contexts_per_batch": 7})  # 3 + 4 contexts per process
    expected = train(MODEL, config, train_data, test_data)

    def stop_at_10(evaluation):
        if evaluation.step == 10:
            raise Interrupt

    folder = tmp_path / "checkpoints"
    with pytest.raises(Interrupt):
        train(MODEL, config, train_data, test_data, folder, stop_at_10)
    seen = []
    resumed = launch(MODEL, TrainConfig(**{**config.to_dict(), "num_processes": 2}), dataset, folder, seen.append)
    assert resumed.resumed_from == 10 and [e.step for e in seen] == [20]
    assert _loss_gap(expected, resumed) < LOSS_TOLERANCE, (_losses(expected), _losses(resumed))
    assert _weight_gap(expected, resumed) < WEIGHT_TOLERANCE


def test_a_failing_worker_fails_the_step_with_one_line(tmp_path):
    not_a_dataset = tmp_path / "stories.parquet"
    pq.write_table(pa.table({"text": ["Once upon a time"] * 10}), not_a_dataset)
    raised = []

    @dg.asset
    def training(context):  # the workers need a real step's context (Pipes)
        try:
            train_in_workers(context, MODEL, TrainConfig(**FAST, num_processes=2), TableFile(not_a_dataset),
                             tmp_path / "checkpoints", None, None)
        except dg.Failure as error:
            raised.append(error)
            raise

    assert not dg.materialize([training], instance=dg.DagsterInstance.ephemeral(), raise_on_error=False).success
    message = raised[0].description
    assert "\n" not in message
    assert message.startswith("distributed training failed: torchrun exited with status 1; rank ")
    assert message.endswith("DataError: dataset has no 'tokens' column; columns: ['text']")
    assert isinstance(raised[0].__cause__, DistributedTrainingError)
    assert "DataError" in raised[0].__cause__.log_tail  # the workers' tracebacks, for the log
    assert not raised[0].allow_retries  # bad data: a retry cannot help


# --- the asset ----------------------------------------------------------------------------------


def _ddp_run_config(**changes) -> dict:
    run_config = copy.deepcopy(TINY_RUN_CONFIG)
    run_config["ops"]["trained_model"]["config"].update(num_processes=2, **changes)
    del run_config["ops"]["sample_generations"], run_config["ops"]["model_evaluation"]
    return run_config


def test_trained_model_with_two_processes_materializes_and_logs_one_run(isolated_storage):
    data, mlruns = isolated_storage
    result = dg.materialize(
        ASSETS,
        selection=[*UPSTREAM, "trained_model"],
        resources={"io_manager": AssetFileIOManager(), "mlflow": MLflowResource()},
        run_config=_ddp_run_config(),
        instance=with_default_variant(dg.DagsterInstance.ephemeral()),
        partition_key="default",
    )
    assert result.success
    metadata = result.asset_materializations_for_node("trained_model")[0].metadata
    assert metadata["steps"].value == 40
    assert [r.data["step"] for r in metadata["loss_history"].value.records] == [0, 20, 40]
    model, _ = load_checkpoint(data / "trained_model" / "default.safetensors")
    assert model.num_parameters() == metadata["parameters"].value

    client = MlflowClient(f"sqlite:///{mlruns / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("gpt-pipeline")
    runs = [r for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get("dagster.asset_key") == "trained_model"]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["num_processes"] == "2"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "test_loss")] == [0, 20, 40]
    assert metadata["mlflow_run_id"].value == runs[0].info.run_id


def _step_checkpoints(data: Path) -> list[int]:
    return [int(p.stem) for p in (data / "checkpoints" / "trained_model" / "default").glob("*/*.safetensors") if p.stem.isdigit()]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_stopping_the_materialization_leaves_no_worker_behind(tmp_path, sig):
    data, home = tmp_path / "data", tmp_path / "dagster_home"
    home.mkdir()
    uri = fresh_mlflow_store(tmp_path / "mlruns")
    config = write_run_config(tmp_path / "run.yaml", _ddp_run_config(training_iterations=5000))
    env = child_env(GPT_PIPELINE_DATA_DIR=str(data), MLFLOW_TRACKING_URI=uri, DAGSTER_HOME=str(home))
    log = tmp_path / "materialize.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "gpt_pipeline", "materialize", "--config", str(config)],
                                   stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    try:
        wait_for(lambda: process.poll() is not None or max(_step_checkpoints(data), default=-1) >= 20,
                 timeout=300, interval=0.05, what="checkpoint 20")
        assert process.poll() is None, f"the run ended early: {log.read_text()[-3000:]}"
        descendants = psutil.Process(process.pid).children(recursive=True)
        workers = [p for p in descendants if "gpt_pipeline.defs.pipes_worker" in " ".join(p.cmdline())]
        assert len(workers) == 3, [p.cmdline()[:6] for p in descendants]  # torchrun + 2 workers
        process.send_signal(sig)
        process.wait(timeout=60)
    finally:
        kill_running(process)
    _, alive = psutil.wait_procs(descendants, timeout=30)
    left = [" ".join(p.cmdline()[:8]) for p in alive]
    for leftover in alive:  # do not leave them training on the test machine
        leftover.kill()
    assert left == [], f"left running: {left}"
    if sig == signal.SIGTERM:  # the process ended its MLflow run as it went
        assert "RUNNING" not in run_statuses(uri).values(), log.read_text()[-3000:]


def test_cli_train_with_two_processes_matches_one(tmp_path, capsys):
    from gpt_pipeline.cli import main
    from gpt_pipeline_tests.test_cli import TINY_TRAIN

    dataset = tmp_path / "dataset"
    assert main(["tokenize", "--num-stories", "60", "--vocab-size", "120", "--output-dir", str(dataset)]) == 0
    no_dropout = [f"--{name.replace('_', '-')}={value}" for name, value in NO_DROPOUT.items()]
    runs = {}
    for processes in (1, 2):
        out = tmp_path / f"run{processes}"
        argv = ["train", "--dataset-dir", str(dataset), "--output-dir", str(out), *TINY_TRAIN, *no_dropout,
                "--num-processes", str(processes)]
        assert main(argv) == 0, capsys.readouterr().err
        runs[processes] = load_checkpoint(out / "final.safetensors")[0].state_dict()
        assert "step 6/6" in capsys.readouterr().out  # (rank 0's) progress reached the terminal
    gap = max(float((runs[1][k] - runs[2][k]).abs().max()) for k in runs[1])
    assert gap < WEIGHT_TOLERANCE
