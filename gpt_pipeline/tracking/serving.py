"""Serving under abuse: bounded requests, our words for bad bodies, work that stops when nobody waits.

``mlflow models serve`` (MLflow 3.17's scoring server, ``mlflow.pyfunc.scoring_server``) is a
FastAPI app under uvicorn. What it allows, and what this module adds:

- ``/invocations`` reads the whole body, parses it and runs the model's ``predict`` in
  ``asyncio.to_thread`` (the loop's default pool: min(32, cores + 4) threads). It has no limit
  on the body and answers MLflow's own words, some with a stack trace, a bare 500 for a request
  without a content type. ``RequestGuard`` (an ASGI middleware) reads and checks the body first:
  size, content type, JSON, its fields, the prompts and the parameters; one-line 400s.
- ``predict`` cannot see the client: nothing awaits the connection while the thread runs, and a
  thread cannot be cancelled. ``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT`` (60 s) answers 504 and
  leaves the thread generating. So ``RequestGuard`` watches the connection beside the request
  and hands the thread a ``RequestState`` (a ``ContextVar``: ``asyncio.to_thread`` runs the thread
  in a copy of the request's context), which the model checks between tokens: client gone, time
  budget spent, or the server stopping raise ``RequestStopped``.
- On SIGTERM uvicorn stops accepting and waits, without a bound unless
  ``--timeout-graceful-shutdown`` is given (``mlflow models serve`` passes none), for the requests
  in flight; then the interpreter waits for the pool's threads. The guarded app chains the
  server's SIGTERM/SIGINT handlers so that every generation stops at its next token.

The model attaches all this when the scoring server's app module loads it (``load_context``,
``attach_to_scoring_server``): the app does not exist yet, so the module that the server's
import returns is a stand-in whose ``app`` is MLflow's app behind the guard. Elsewhere
(``mlflow.pyfunc.load_model`` in Python) only the limits apply. The limits come from the
environment when the model loads (``Limits``).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

_logger = logging.getLogger(__name__)
SCORING_APP_MODULE = "mlflow.pyfunc.scoring_server.app"  # what `mlflow models serve` runs under uvicorn
INPUT_FIELDS = ("inputs", "instances", "dataframe_split", "dataframe_records")  # MLflow's JSON input forms
PARAMS_FIELD = "params"
ENV_PREFIX = "GPT_PIPELINE_SERVE_"


@dataclass(frozen=True)
class Limits:
    """The bounds of one request; each is read from ``GPT_PIPELINE_SERVE_<NAME>`` (upper case)
    when the model loads, else its default."""

    max_tokens: int = 1024  # new tokens per prompt (gpt-rs samples 256 by default)
    max_prompts: int = 32  # prompts per request
    max_prompt_chars: int = 2000  # characters per prompt
    max_body_bytes: int = 1_000_000  # request body
    seconds: float = 30.0  # time budget per request, from its arrival to its last token

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Limits:
        """The defaults, overridden by the environment; ``ValueError`` naming a bad variable.

        Example:
            >>> limits = Limits.from_environment({"GPT_PIPELINE_SERVE_MAX_PROMPTS": "4"})
            >>> limits.max_tokens, limits.max_prompts, limits.max_prompt_chars
            (1024, 4, 2000)
        """
        values: dict[str, Any] = {}
        for field in fields(cls):
            name = ENV_PREFIX + field.name.upper()
            if (raw := environ.get(name)) is None:
                continue
            kind = float if field.name == "seconds" else int
            try:
                value = kind(raw)
            except ValueError:
                value = None
            if value is None or not 0 < value < float("inf"):
                raise ValueError(f"{name} must be a {'number' if kind is float else 'whole number'} > 0, "
                                 f"got {raw!r}")
            values[field.name] = value
        return cls(**values)


class RequestRefused(ValueError):
    """A request the server refuses before any work: HTTP ``status`` with ``message`` (one line)."""

    def __init__(self, message: str, status: int = 400, code: str = "INVALID_PARAMETER_VALUE"):
        super().__init__(message)
        self.status, self.code = status, code


class RequestStopped(RequestRefused):
    """Raised between tokens when nobody waits for the request any more (``RequestState.check``)."""


def _short(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters: a message never echoes a large input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _type(value: Any) -> str:
    return {str: "a string", dict: "an object", list: "a list", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def check_prompts(prompts: Any, limits: Limits, where: str = "inputs") -> list[str]:
    """``prompts`` as a list of strings within ``limits``, else ``RequestRefused`` naming the
    limit or the value.

    Example:
        >>> check_prompts(["Once"], Limits())
        ['Once']
        >>> check_prompts("Once", Limits())
        Traceback (most recent call last):
        ...
        gpt_pipeline.tracking.serving.RequestRefused: inputs must be a list of prompts (strings), got a string: 'Once'
    """
    if not isinstance(prompts, list):
        raise RequestRefused(f"{where} must be a list of prompts (strings), got {_type(prompts)}: {_short(prompts)}")
    if not prompts:
        raise RequestRefused(f"{where} holds no prompts: give at least one")
    if len(prompts) > limits.max_prompts:
        raise RequestRefused(f"{len(prompts)} prompts is over the limit of {limits.max_prompts} per request "
                             f"({ENV_PREFIX}MAX_PROMPTS)")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt:
            raise RequestRefused(f"every prompt must be a non-empty string, got {_short(prompt)} (prompt {index})")
        if len(prompt) > limits.max_prompt_chars:
            raise RequestRefused(f"prompt {index} has {len(prompt)} characters, over the limit of "
                                 f"{limits.max_prompt_chars} ({ENV_PREFIX}MAX_PROMPT_CHARS)")
    return prompts


def prompts_in_body(body: Any, limits: Limits) -> tuple[list[str], Any]:
    """The prompts and the ``params`` of a parsed JSON body in one of MLflow's forms (``inputs``
    or ``instances``: a list of strings; ``dataframe_split``; ``dataframe_records``), checked."""
    if not isinstance(body, dict):
        raise RequestRefused(f"the body must be a JSON object with inputs (a list of prompts) and optional "
                             f"params, got {_type(body)}")
    if unknown := sorted(set(body) - {*INPUT_FIELDS, PARAMS_FIELD}):
        raise RequestRefused(f"unknown field(s) {', '.join(_short(k) for k in unknown)}: a request holds "
                             f"inputs (or {', '.join(INPUT_FIELDS[1:])}) and params")
    given = [name for name in INPUT_FIELDS if name in body]
    if len(given) != 1:
        raise RequestRefused(f"a request holds exactly one of {', '.join(INPUT_FIELDS)}, got "
                             f"{', '.join(given) or 'none'}")
    form, value = given[0], body[given[0]]
    if form == "dataframe_split":
        if not isinstance(value, dict) or not isinstance(value.get("data"), list) or not isinstance(
                value.get("columns", ["prompt"]), list) or len(value.get("columns", ["prompt"])) != 1:
            raise RequestRefused("dataframe_split must be an object with one column and data, e.g. "
                                 '{"columns": ["prompt"], "data": [["Once"]]}')
        rows = value["data"]
        if not all(isinstance(row, list) and len(row) == 1 for row in rows):
            raise RequestRefused("every row of dataframe_split's data must hold one prompt, e.g. [\"Once\"]")
        value = [row[0] for row in rows]
    elif form == "dataframe_records":
        if not isinstance(value, list) or not all(isinstance(r, dict) and set(r) == {"prompt"} for r in value):
            raise RequestRefused('dataframe_records must be a list of {"prompt": ...} objects')
        value = [record["prompt"] for record in value]
    params = body.get(PARAMS_FIELD)
    if params is not None and not isinstance(params, dict):
        raise RequestRefused(f"params must be an object, got {_type(params)}: {_short(params)}")
    return check_prompts(value, limits, form), params


# Set when the server's SIGTERM or SIGINT arrives (attach_to_scoring_server): every request stops.
_SHUTDOWN = threading.Event()


class RequestState:
    """What a request's generation checks between tokens: its client, its time budget, the server."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.client_gone = threading.Event()

    def check(self) -> None:
        """Raise ``RequestStopped`` when nobody waits for this request any more."""
        if _SHUTDOWN.is_set():
            raise RequestStopped("the server is shutting down", 503, "TEMPORARILY_UNAVAILABLE")
        if self.client_gone.is_set():
            raise RequestStopped("the client closed the connection", 499, "CANCELLED")
        if time.monotonic() > self.deadline:
            raise RequestStopped(f"the request ran past its time budget of {self.seconds:g} s "
                                 f"({ENV_PREFIX}SECONDS)", 504, "DEADLINE_EXCEEDED")


_CURRENT: contextvars.ContextVar[RequestState | None] = contextvars.ContextVar("gpt_pipeline_request", default=None)


def current_request() -> RequestState | None:
    """The state of the request this thread serves (``None`` outside the guarded server)."""
    return _CURRENT.get()


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error_code": code, "message": message}).encode()


async def _answer(send, status: int, code: str, message: str) -> None:
    body = _error_body(code, message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


_FAILED = "the server could not answer this request; its log has the details"


def _one_line_error(status: int, body: bytes) -> bytes:
    """The body of an error answer as it may leave the server: a JSON object of ``error_code`` and
    a one-line ``message`` as it is; anything else (a stack trace, MLflow's 504 text) replaced."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if (isinstance(answer, dict) and set(answer) == {"error_code", "message"}
            and isinstance(answer["message"], str) and "\n" not in answer["message"] and status < 500):
        return body
    _logger.error("error answer replaced (status %d): %s", status, body[:4000].decode(errors="replace"))
    if status == 504:
        return _error_body("DEADLINE_EXCEEDED", "the request ran past the scoring server's time limit "
                                                "(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT)")
    return _error_body("INTERNAL_ERROR" if status >= 500 else "BAD_REQUEST", _FAILED)


class RequestGuard:
    """ASGI middleware for ``POST /invocations``: refuses a bad request with a one-line 400 before
    MLflow parses it (``check(body)`` gets the parsed JSON and raises ``RequestRefused``), runs
    the rest with a ``RequestState`` in its context, marks the client gone when its connection
    closes, and lets no error answer out but a one-line JSON one."""

    def __init__(self, app, check: Callable[[Any], None], limits: Limits, path: str = "/invocations"):
        self.app, self.check, self.limits, self.path = app, check, limits, path

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        try:
            body = await self._read(scope, receive)
            try:
                parsed = json.loads(body)
            except RecursionError:
                raise RequestRefused("the body nests JSON too deeply", code="BAD_REQUEST") from None
            except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
                raise RequestRefused(f"the body is not valid JSON: {str(error).splitlines()[0][:80]}",
                                     code="BAD_REQUEST") from None
            self.check(parsed)
        except RequestRefused as refused:
            return await _answer(send, refused.status, refused.code, str(refused))
        except Exception:  # a bug of ours: in the log, not in the answer
            _logger.exception("checking a request failed")
            return await _answer(send, 500, "INTERNAL_ERROR", _FAILED)
        await self._run(scope, receive, send, body)

    async def _read(self, scope, receive) -> bytes:
        headers = dict(scope.get("headers") or [])
        if scope.get("method") != "POST":
            raise RequestRefused(f"{self.path} takes POST, got {_short(scope.get('method'))}", 405, "BAD_REQUEST")
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        media, *options = [part.strip().lower() for part in content_type.split(";")]
        if media != "application/json" or any(o not in ("charset=utf-8", "") for o in options):
            raise RequestRefused("Content-Type must be application/json (UTF-8), got "
                                 f"{_short(content_type) if content_type else 'none'}", code="BAD_REQUEST")
        limit = self.limits.max_body_bytes
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > limit:
            raise RequestRefused(f"the body has {int(declared)} bytes, over the limit of {limit} "
                                 f"({ENV_PREFIX}MAX_BODY_BYTES)", code="BAD_REQUEST")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestRefused("the client closed the connection", 499, "CANCELLED")
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                raise RequestRefused(f"the body has over {limit} bytes, the limit ({ENV_PREFIX}MAX_BODY_BYTES)",
                                     413, "REQUEST_LIMIT_EXCEEDED")
        return b"".join(chunks)

    async def _run(self, scope, receive, send, body: bytes) -> None:
        state = RequestState(self.limits.seconds)
        answered = asyncio.Event()  # our answer is complete: a disconnect after it is no news
        replayed = False

        async def replay():  # the body we read, then (as uvicorn does) a disconnect once answered
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            await answered.wait()
            return {"type": "http.disconnect"}

        async def watch():  # uvicorn's receive() returns a disconnect when the connection closes
            while (await receive())["type"] != "http.disconnect":
                pass
            if not answered.is_set():
                state.client_gone.set()

        error: dict[str, Any] = {}

        async def guarded_send(message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                error.update(start=message, body=b"")
                return
            if error and message["type"] == "http.response.body":
                error["body"] += message.get("body", b"")
                if message.get("more_body"):
                    return
                content = _one_line_error(error["start"]["status"], error["body"])
                headers = [(k, v) for k, v in error["start"].get("headers", []) if k.lower() not in
                           (b"content-length", b"content-type")]
                answered.set()
                await send({**error["start"], "headers": headers + [(b"content-type", b"application/json"),
                                                                   (b"content-length", str(len(content)).encode())]})
                await send({"type": "http.response.body", "body": content})
                return
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered.set()
            await send(message)

        token = _CURRENT.set(state)
        watcher = asyncio.ensure_future(watch())
        try:
            await self.app(scope, replay, guarded_send)
        finally:
            answered.set()
            watcher.cancel()
            _CURRENT.reset(token)


def _stop_generations_on(signals=(signal.SIGTERM, signal.SIGINT)) -> None:
    """Chain the server's handler of ``signals`` (uvicorn's, a Python function) with setting
    ``_SHUTDOWN``, once; a default or ignored disposition is left alone (it needs no help to
    exit). In the main thread only (where the server's event loop runs)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for number in signals:
        previous = signal.getsignal(number)
        if not callable(previous) or getattr(previous, "stops_generations", False):
            continue

        def handler(signum, frame, previous=previous):
            _SHUTDOWN.set()
            previous(signum, frame)

        handler.stops_generations = True
        signal.signal(number, handler)


class _GuardedApp:
    """``RequestGuard`` around MLflow's app that, on its first call (the server's lifespan
    startup, or its first request, on the server's loop: uvicorn's signal handlers are in place
    by then), chains the server's SIGTERM/SIGINT handlers with stopping every generation."""

    def __init__(self, app, check: Callable[[Any], None], limits: Limits):
        self.guard = RequestGuard(app, check, limits)
        self.signals_chained = False

    async def __call__(self, scope, receive, send) -> None:
        if not self.signals_chained:
            self.signals_chained = True
            _stop_generations_on()
        await self.guard(scope, receive, send)


class _ScoringAppModule(types.ModuleType):
    """MLflow's scoring app module as the server imports it: every attribute its own, but ``app``
    is ``_GuardedApp`` around it."""

    def __init__(self, module: types.ModuleType, check: Callable[[Any], None], limits: Limits):
        super().__init__(module.__name__, module.__doc__)
        self._module, self._check, self._limits, self._app = module, check, limits, None

    def __getattr__(self, name: str):  # what the instance itself does not have
        if name != "app":
            return getattr(self._module, name)
        if self._app is None:
            self._app = _GuardedApp(self._module.app, self._check, self._limits)
            _logger.info("gpt-pipeline request guard on %s: %s", SCORING_APP_MODULE, self._limits)
        return self._app


def attach_to_scoring_server(check: Callable[[Any], None], limits: Limits) -> bool:
    """When MLflow's scoring server is loading the model (its app module, ``app =
    init(load_model(...))``, is being imported): put ``_ScoringAppModule`` in its place in
    ``sys.modules``, so that the import the server is running returns it (Python returns
    whatever ``sys.modules`` holds when a module's code ends) and the server runs our guarded
    app. False (nothing done) anywhere else."""
    module = sys.modules.get(SCORING_APP_MODULE)
    if module is None or isinstance(module, _ScoringAppModule) or hasattr(module, "app"):
        return False
    sys.modules[SCORING_APP_MODULE] = _ScoringAppModule(module, check, limits)
    return True
