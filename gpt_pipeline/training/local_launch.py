"""Several training workers on one machine that meet on 127.0.0.1 only.

``torchrun --standalone`` listens on every interface while it runs, without authentication: its
rendezvous and its workers' store are TCPStore servers, and a TCPStore server binds the
wildcard address whatever host it is given (``*:33003``, ``*:39159`` in ``ss -ltn``). This
launcher does the one-machine part of torchrun's job instead: it binds a socket on 127.0.0.1
(a free port), starts ``--nproc-per-node`` workers with torchrun's environment (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR=127.0.0.1``, ``MASTER_PORT``) and hands rank 0 that
socket (``master_listen_fd``), so the one store (``store``) listens on 127.0.0.1; gloo's and
NCCL's own sockets use the loopback interface (``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME``,
unless set). When a worker fails, the others are stopped and the launcher exits with its status;
SIGTERM or SIGINT stop them all. Several machines still go through torchrun's static rendezvous
(``torchrun.torchrun_command``): there node 0 listens on ``rdzv_endpoint`` for the others.

    python -m gpt_pipeline.training.local_launch --nproc-per-node 2 -m <worker module> <arguments>
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta

LAUNCHED_ENV = "GPT_PIPELINE_LOCAL_LAUNCH"  # set in the workers this launcher starts
STORE_FD_ENV = "GPT_PIPELINE_STORE_FD"  # rank 0's inherited listening socket
STORE_TIMEOUT = timedelta(minutes=5)  # workers that do not meet by then fail


_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent ends (Linux; elsewhere nothing).

    Safe between fork and exec (``preexec_fn``): one system call through a function looked up
    at import."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def command(nproc_per_node: int, module: str, arguments: list[str]) -> list[str]:
    """The launcher's command line for ``nproc_per_node`` workers of ``python -m module arguments``."""
    return [sys.executable, "-m", __name__, f"--nproc-per-node={nproc_per_node}", "-m", module, *arguments]


def _loopback() -> str:
    """The loopback interface's name (``lo`` on Linux, ``lo0`` on macOS)."""
    names = {name for _, name in socket.if_nameindex()}
    return next((name for name in ("lo", "lo0") if name in names), "lo")


def store(rank: int, world_size: int):
    """The process group's store for a worker this launcher started (rank 0 serves it on the
    inherited 127.0.0.1 socket), or ``None`` under torchrun (its ``env://`` store)."""
    if os.environ.get(LAUNCHED_ENV) != "1":
        return None
    import torch.distributed as dist

    fd = os.environ.get(STORE_FD_ENV) if rank == 0 else None
    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, rank == 0,
                         STORE_TIMEOUT, master_listen_fd=int(fd) if fd else None)


def _stop(workers: list[subprocess.Popen], grace: float = 10.0) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    give_up = time.monotonic() + grace
    for worker in workers:
        try:
            worker.wait(timeout=max(0.1, give_up - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m gpt_pipeline.training.local_launch")
    parser.add_argument("--nproc-per-node", type=int, required=True)
    parser.add_argument("-m", dest="module", required=True)
    split = argv.index("-m") + 2 if "-m" in argv else len(argv)  # what follows the module is the worker's
    args = parser.parse_args(argv[:split])
    args.arguments = argv[split:]
    if args.nproc_per_node < 1:
        raise SystemExit(f"--nproc-per-node must be at least 1, got {args.nproc_per_node}")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    loopback = _loopback()
    env = {**os.environ, LAUNCHED_ENV: "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(listener.getsockname()[1]), "WORLD_SIZE": str(args.nproc_per_node),
           "LOCAL_WORLD_SIZE": str(args.nproc_per_node), "GROUP_RANK": "0",
           "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", loopback),
           "NCCL_SOCKET_IFNAME": os.environ.get("NCCL_SOCKET_IFNAME", loopback)}
    stopping = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: stopping.append(signum))
    workers = []
    try:
        for rank in range(args.nproc_per_node):
            extra = {"RANK": str(rank), "LOCAL_RANK": str(rank)}
            if rank == 0:
                extra[STORE_FD_ENV] = str(listener.fileno())
            workers.append(subprocess.Popen([sys.executable, "-m", args.module, *args.arguments],
                                            env={**env, **extra}, pass_fds=(listener.fileno(),) if rank == 0 else (),
                                            stdin=subprocess.DEVNULL, preexec_fn=die_with_parent))
        listener.close()  # rank 0 holds it now
        while not stopping:
            codes = [worker.poll() for worker in workers]
            failed = [code for code in codes if code not in (None, 0)]
            if failed:
                _stop(workers)
                return failed[0] if failed[0] > 0 else 128 - failed[0]  # a signal: 128 + its number
            if all(code == 0 for code in codes):
                return 0
            time.sleep(0.1)
        _stop(workers)
        return 128 + stopping[0]
    finally:
        _stop(workers)


if __name__ == "__main__":
    sys.exit(main())
