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
import signal
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import Any

from gpt_pipeline.tracking.serving_limits import ENV_PREFIX, Limits, RequestRefused, short

_logger = logging.getLogger(__name__)
SCORING_APP_MODULE = "mlflow.pyfunc.scoring_server.app"  # what `mlflow models serve` runs under uvicorn


class RequestStopped(RequestRefused):
    """Raised between tokens when nobody waits for the request any more (``RequestState.check``)."""


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
            and isinstance(answer["message"], str) and "\n" not in answer["message"]):
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
            raise RequestRefused(f"{self.path} takes POST, got {short(scope.get('method'))}", 405, "BAD_REQUEST")
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        media, *options = [part.strip().lower() for part in content_type.split(";")]
        if media != "application/json" or any(o not in ("charset=utf-8", "") for o in options):
            raise RequestRefused("Content-Type must be application/json (UTF-8), got "
                                 f"{short(content_type) if content_type else 'none'}", code="BAD_REQUEST")
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
