"""What one request to the served model may hold (``Limits``) and the checks of a request body
before any work: MLflow's JSON input forms, the prompts, their count and length. Every refusal
is a ``RequestRefused``: an HTTP status and one line naming the problem and the value (cut short:
never a large input echoed). Used by ``serving.RequestGuard`` and the pyfunc model's ``predict``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

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


def short(value: Any, limit: int = 40) -> str:
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
        gpt_pipeline.tracking.serving_limits.RequestRefused: inputs must be a list of prompts (strings), got a string: 'Once'
    """
    if not isinstance(prompts, list):
        raise RequestRefused(f"{where} must be a list of prompts (strings), got {_type(prompts)}: {short(prompts)}")
    if not prompts:
        raise RequestRefused(f"{where} holds no prompts: give at least one")
    if len(prompts) > limits.max_prompts:
        raise RequestRefused(f"{len(prompts)} prompts is over the limit of {limits.max_prompts} per request "
                             f"({ENV_PREFIX}MAX_PROMPTS)")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt:
            raise RequestRefused(f"every prompt must be a non-empty string, got {short(prompt)} (prompt {index})")
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
        raise RequestRefused(f"unknown field(s) {', '.join(short(k) for k in unknown)}: a request holds "
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
        raise RequestRefused(f"params must be an object, got {_type(params)}: {short(params)}")
    return check_prompts(value, limits, form), params
