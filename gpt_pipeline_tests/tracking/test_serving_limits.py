"""The limits of a served request and the checks of its body (``tracking.serving_limits``),
without a server (``test_serving`` sends the same bodies to ``mlflow models serve``)."""

from __future__ import annotations

import pytest

from gpt_pipeline.tracking.serving_limits import Limits, RequestRefused, check_prompts, prompts_in_body


def test_limits_come_from_the_environment_and_a_bad_value_is_named():
    assert Limits.from_environment({}) == Limits(1024, 32, 2000, 1_000_000, 30.0)
    limits = Limits.from_environment({"GPT_PIPELINE_SERVE_MAX_TOKENS": "64", "GPT_PIPELINE_SERVE_SECONDS": "2.5"})
    assert (limits.max_tokens, limits.seconds) == (64, 2.5)
    for name, raw in [("MAX_TOKENS", "0"), ("MAX_PROMPTS", "ten"), ("MAX_BODY_BYTES", "1.5"), ("SECONDS", "inf")]:
        with pytest.raises(ValueError) as error:
            Limits.from_environment({f"GPT_PIPELINE_SERVE_{name}": raw})
        assert str(error.value).startswith(f"GPT_PIPELINE_SERVE_{name} must be a ") and repr(raw) in str(error.value)


def test_every_input_form_gives_the_same_prompts():
    limits = Limits()
    prompts = ["Once", "The dog"]
    forms = [{"inputs": prompts}, {"instances": prompts},
             {"dataframe_split": {"columns": ["prompt"], "data": [[p] for p in prompts]}},
             {"dataframe_records": [{"prompt": p} for p in prompts]}]
    for body in forms:
        assert prompts_in_body({**body, "params": {"seed": 1}}, limits) == (prompts, {"seed": 1})


def test_a_refusal_never_echoes_a_large_value():
    with pytest.raises(RequestRefused) as error:
        check_prompts({"x": "y" * 10_000}, Limits())
    assert len(str(error.value)) < 120 and error.value.status == 400
    with pytest.raises(RequestRefused, match=r"^prompt 0 has 2001 characters, over the limit of 2000 "):
        check_prompts(["a" * 2001], Limits())
