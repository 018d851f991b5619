"""What ``gpt-pipeline materialize`` (so ``make run``) prints while the job runs: one line per
materialized asset with its headline figure, the training's progress lines and any warning.

``reader_logger`` replaces Dagster's console logger for that command only (the code location
keeps Dagster's): every event and debug line still goes to the Dagster event log of the run, which
the UI shows; the terminal gets what a person reads. Headlines are built from the
materialization's metadata, the figures written by ``training.metrics.figure_text``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import dagster as dg

from gpt_pipeline.training.metrics import figure_text

PROGRESS_STEPS = ("trained_model",)  # steps whose info lines (progress) are printed


def _value(metadata: dict, key: str):
    entry = metadata.get(key)
    return None if entry is None else getattr(entry, "value", entry)


def _count(metadata: dict, key: str) -> str:
    value = _value(metadata, key)
    return "-" if value is None else f"{value:,}"


def _trained(m: dict) -> str:
    speed = _value(m, "tokens_per_second")
    resumed = _value(m, "resumed_from_step")
    return (f"test loss {figure_text('test_loss', _value(m, 'test_loss'))} (unigram "
            f"{figure_text('unigram_test_loss', _value(m, 'unigram_test_loss'))}), test bits per character "
            f"{figure_text('test_bits_per_character', _value(m, 'test_bits_per_character'))}, "
            f"{_count(m, 'steps')} steps in {figure_text('training_seconds', _value(m, 'training_seconds'))} s"
            + (f", {figure_text('tokens_per_second', speed)} tokens/s" if speed is not None else "")
            + (f" (resumed from step {resumed})" if resumed is not None else ""))


def _evaluated(m: dict) -> str:
    """model_evaluation's and champion_evaluation's figures (stored only when the check passed)."""
    return ", ".join(f"{label} {figure_text(key, _value(m, key))}" for label, key in (
        ("ROUGE-L", "eval_rouge_l"), ("repeated 4-grams", "eval_repeated_4gram_rate"),
        ("unseen words", "eval_unseen_word_rate"))) + " (continuations_do_not_collapse passed)"


HEADLINES: dict[str, Callable[[dict], str]] = {
    "raw_stories": lambda m: f"{_count(m, 'stories')} stories, {_count(m, 'characters')} characters ({_value(m, 'source')})",
    "bpe_tokenizer": lambda m: (f"{_count(m, 'vocab_size')} tokens ({_count(m, 'alphabet_size')} characters + "
                                f"{_count(m, 'merges')} merges), {figure_text('chars_per_token', _value(m, 'chars_per_token_test'))} "
                                "characters per token"),
    "tokenized_dataset": lambda m: f"{_count(m, 'train_tokens')} train and {_count(m, 'test_tokens')} test tokens",
    "trained_model": _trained,
    "sample_generations": lambda m: f"{_count(m, 'generations')} generations",
    "champion_model": lambda m: (f"variant {_value(m, 'champion')} (test bits per character "
                                 f"{figure_text('test_bits_per_character', _value(m, 'test_bits_per_character'))}), "
                                 f"registered version {_value(m, 'registered_model_version')} is models:/gpt-pipeline@champion"),
    "champion_generations": lambda m: f"{_count(m, 'generations')} generations",
    "model_evaluation": _evaluated,
    "champion_evaluation": _evaluated,
}


def headline(materialization: dg.AssetMaterialization) -> str:
    """``asset[partition]: figure, figure`` for one materialization.

    Example:
        >>> print(headline(dg.AssetMaterialization("raw_stories", metadata={"stories": 5000,
        ...     "characters": 1234567, "source": "embedded corpus"})))
        raw_stories: 5,000 stories, 1,234,567 characters (embedded corpus)
    """
    asset = materialization.asset_key.to_user_string()
    name = f"{asset}[{materialization.partition}]" if materialization.partition else asset
    describe = HEADLINES.get(asset)
    return f"{name}: {describe(dict(materialization.metadata)) if describe else 'materialized'}"


def _step_and_text(message: str) -> tuple[str | None, str]:
    """A user log line as Dagster hands it to a logger, ``job - run id - step key - text`` (no step
    key outside a step), split into the step key and the text.

    Example:
        >>> _step_and_text("train_gpt_job - 1f2e - trained_model - step 150/600 - loss 3.2")
        ('trained_model', 'step 150/600 - loss 3.2')
    """
    parts = message.split(" - ", 3)
    return (parts[2], parts[3]) if len(parts) == 4 else (None, parts[-1])


class _ReaderHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "dagster_event", None)
        if event is not None:  # Dagster's own events: only the materializations, as headlines
            if not event.is_step_materialization:
                return
            line = headline(event.event_specific_data.materialization)
        else:
            step, text = _step_and_text(record.getMessage())
            if record.levelno >= logging.WARNING:
                line = f"{record.levelname.lower()} ({step or 'run'}): {text}"
            elif step in PROGRESS_STEPS:
                line = f"  {text}"
            else:
                return
        print(line, file=sys.stdout, flush=True)


@dg.logger(
    config_schema={"log_level": dg.Field(str, default_value="INFO", description="INFO, or WARNING for warnings only")},
    description="For a person at a terminal: headlines, training progress and warnings; the rest is "
    "in the run's Dagster event log.",
)
def reader_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    level = init_context.logger_config["log_level"]
    # DEBUG: Dagster's events (materializations) come at that level; the handler picks. Not registered globally.
    logger = logging.Logger("gpt_pipeline.reader", level=logging.DEBUG)
    handler = _ReaderHandler()
    if level.upper() != "INFO":  # warnings only: no headlines either
        handler.addFilter(lambda record: record.levelno >= logging.WARNING)
    logger.addHandler(handler)
    return logger
