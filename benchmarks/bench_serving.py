"""Serving latency at the quickstart model size (configs/quickstart.yaml: 1,024 tokens, embedding
96, context 64, 4 heads, 3 blocks): one REST request of 8 prompts x 128 tokens to ``make serve``,
and the Hugging Face pipeline for one prompt.

The model's weights are random (the speed does not depend on them); it is logged and registered
as ``gpt-pipeline`` in a scratch SQLite store under DIR, served by ``make serve`` on a free port,
and exported with ``interop.hf.export``. Prints the server's start time, each request's time
(the first one warms the server up) and the pipeline's best and median over a few calls.

    .venv/bin/python benchmarks/bench_serving.py DIR [--requests 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

from gpt_pipeline.data.corpus import generate_stories
from gpt_pipeline.interop.hf import export, generate_sliding
from gpt_pipeline.model.sampling import generate_text
from gpt_pipeline.model.gpt import GPT, GPTConfig
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline.tokenizer.bundle import write_bundle
from gpt_pipeline.tracking.pyfunc import log_pyfunc_model
from gpt_pipeline.tracking.registry import register_training, set_champion
from gpt_pipeline.tracking.tracker import Tracker
from gpt_pipeline.training.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Once", "The little dog", "One day", "Tom and Sue", "She saw a", "The sun", "A cat", "Mom said"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timed(call, times: int) -> tuple[float, float]:
    spent = []
    for _ in range(times):
        start = time.perf_counter()
        call()
        spent.append(time.perf_counter() - start)
    return min(spent), statistics.median(spent)


def serve_requests(directory: Path, tracking_uri: str, requests: int) -> None:
    """``make serve`` on the registry's champion; ``requests`` POSTs of 8 prompts x 128 tokens."""
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    venv = Path(sys.executable).parent.parent  # this interpreter's environment, for `make serve`
    log = open(directory / "serve.log", "wb")
    server = subprocess.Popen(["make", "-s", "serve", f"VENV={venv}", f"SERVE_PORT={port}"], cwd=ROOT,
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    started = time.monotonic()
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit(f"make serve exited: see {directory / 'serve.log'}")
                time.sleep(0.5)
        print(f"make serve answers /ping after {time.monotonic() - started:.1f} s")
        body = json.dumps({"inputs": PROMPTS, "params": {"token_count": 128, "seed": 1}}).encode()
        spent = []
        for _ in range(requests):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                             headers={"Content-Type": "application/json"})
            start = time.perf_counter()
            with urllib.request.urlopen(request, timeout=600) as response:
                assert len(json.loads(response.read())["predictions"]) == len(PROMPTS)
            spent.append(time.perf_counter() - start)
        warm = spent[1:] or spent
        print(f"8 prompts x 128 tokens per request: {[round(s, 2) for s in spent]} s; warm median "
              f"{statistics.median(warm):.2f} s, best {min(warm):.2f} s")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="scratch directory (store, model, export)")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the pipeline")
    args = parser.parse_args()
    directory = args.directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)

    tokenizer = BPETokenizer.train(generate_stories(2000), 1024)
    write_bundle(tokenizer, directory)  # directory / "bpe_tokenizer.json", with its companions
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=1024, embedding_size=96, context_length=64, head_count=4,
                          block_count=3)).eval()
    save_checkpoint(directory / "model.safetensors", model)
    tracking_uri = f"sqlite:///{directory}/mlflow.db"
    with Tracker(tracking_uri).run("bench_serving") as run:
        uri = log_pyfunc_model(run, directory / "model.safetensors", directory / "bpe_tokenizer.json")
        set_champion(run.client, register_training(run, 5.0, uri).version)  # what champion_model does
    serve_requests(directory, tracking_uri, args.requests)

    import transformers

    pipe = transformers.pipeline("text-generation", model=str(export(model, tokenizer, directory / "hf")))
    pipe("Once", max_new_tokens=5)  # warm-up
    print(f"torch threads {torch.get_num_threads()}")
    for name, call, tokens in [
        ("HF pipeline, 1 prompt x 60 new tokens", lambda: pipe("Once", max_new_tokens=60), 60),
        ("HF generate_sliding, 1 prompt x 128", lambda: generate_sliding(pipe, "Once", 128, seed=1), 128),
        ("our generate_text, 1 prompt x 60", lambda: generate_text(model, tokenizer, "Once", 60, seed=1), 60),
        ("our generate_text, 1 prompt x 128", lambda: generate_text(model, tokenizer, "Once", 128, seed=1), 128),
    ]:
        best, median = _timed(call, 5)
        print(f"{name}: best {best:.3f} s, median {median:.3f} s ({tokens / best:.0f} tokens/s)")


if __name__ == "__main__":
    main()
