"""The run's sample prompts checked against the tokenizer before a training starts.

``sample_generations`` refuses prompts with characters the tokenizer never saw (``unknown:
error``), but only after ``trained_model`` has trained, minutes or hours in. Where both are in
one run (``make run``, a launched job), ``trained_model`` knows the tokenizer and the run config
that ``sample_generations`` will resolve (``resolve_config``: run config, the sweep's base, the
variant's overrides), so it refuses such prompts before any training, with the same message.
"""

from __future__ import annotations

import dagster as dg

from gpt_pipeline.defs.configs import SampleGenerationsConfig
from gpt_pipeline.defs.variants import given_config, resolve_config
from gpt_pipeline.model.generations import GenerationConfig

SAMPLES = dg.AssetKey("sample_generations")


def refuse_unseen_prompts(context: dg.AssetExecutionContext, tokenizer) -> None:
    """``ValueError`` when this run's ``sample_generations`` will continue a prompt that
    ``tokenizer`` cannot encode; nothing when that asset is not in the run."""
    selection = context.run.asset_selection
    if selection and SAMPLES not in selection:  # empty or None: the whole job
        return
    given = SampleGenerationsConfig(**given_config(context, "sample_generations"))  # as Dagster resolves it
    config = resolve_config(context, "sample_generations", given).core(GenerationConfig)
    for prompt in config.prompts:
        try:
            tokenizer.encode(prompt, unknown=config.unknown)
        except ValueError as error:
            raise ValueError(f"sample_generations prompt {prompt!r}: {error}; refused before training") from None
