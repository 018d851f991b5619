"""Servers started by the end-to-end tests (``dagster dev``, ``mlflow server``, ``mlflow models
serve``): started with a marker in their environment, stopped, waited on, asked over HTTP.

Every process a test starts carries ``MARKER`` in its environment (inherited by its children,
grandchildren included), so leaks are found by reading ``/proc``, whatever session or process
group a child moved to.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
MARKER = "GPT_PIPELINE_E2E_MARKER"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _marked_processes(token: str) -> dict[int, str]:
    """pid -> command line of every live process whose environment holds our marker."""
    needle = f"{MARKER}={token}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":  # a zombie has exited; only its parent's wait() is pending
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile, or not ours
            continue
    return found


def _wait_all_exited(token: str, timeout: float = 20.0) -> dict[int, str]:
    """Wait for every marked process to exit (the Dagster code server stops a second or two
    after ``dagster dev``); return the ones still running after ``timeout``."""
    give_up = time.monotonic() + timeout
    while (alive := _marked_processes(token)) and time.monotonic() < give_up:
        time.sleep(0.25)
    return alive


def _prepare_child() -> None:
    """In the server's process before exec: default SIGINT and SIGTERM handling (a test run
    started in the background inherits SIGINT ignored, and ``dagster dev`` then ignores SIGTERM
    too), and SIGTERM when the test process dies, even by SIGKILL, so that a killed test run
    cannot leave a server behind (Linux ``prctl(PR_SET_PDEATHSIG)``)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _start(command: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    """A server in a session of its own (its process group is ours to kill), output to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_prepare_child)


def _stop(process: subprocess.Popen, grace: float = 30.0) -> bool:
    """SIGTERM to the server's own process (both servers shut their children down on it), then
    SIGKILL to its whole process group if it has not exited after ``grace`` seconds.
    True when it stopped on SIGTERM (or had already exited)."""
    if process.poll() is not None:
        return True
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
        return True
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        return False


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def _wait_for(what: str, probe, deadline: float, process: subprocess.Popen, log: Path):
    """Call ``probe()`` until it returns something truthy; fail if the server dies or time runs out."""
    while True:
        if process.poll() is not None:
            raise AssertionError(f"{what}: server exited with {process.returncode}\n{_tail(log)}")
        try:
            result = probe()
        except (OSError, KeyError, ValueError):  # not listening yet, or not answering in full
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: timed out\n{_tail(log)}")
        time.sleep(0.5)


def _http_json(url: str, payload: dict | None = None, timeout: float = 10.0) -> dict:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    payload = {"query": query, **({"variables": variables} if variables is not None else {})}
    answer = _http_json(f"http://127.0.0.1:{port}/graphql", payload)
    if answer.get("errors"):
        raise AssertionError(f"GraphQL errors: {answer['errors']}")
    return answer["data"]
