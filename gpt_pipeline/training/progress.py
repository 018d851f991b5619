"""Training progress in words: one line per evaluation, for logs and the terminal.

``train`` reports each ``Evaluation`` to its caller (``on_evaluation``); the ``trained_model``
asset logs this line to Dagster and ``gpt-pipeline train`` prints it.
"""

from __future__ import annotations


def progress_line(evaluation, total_steps: int) -> str:
    """One line of training progress for an ``Evaluation`` of a run of ``total_steps`` steps.

    Example:
        >>> from gpt_pipeline.training.loop import Evaluation
        >>> progress_line(Evaluation(250, 3.21, 3.3, 5000.0, 60.0, 180.0), 1000)
        'step 250/1000: train loss 3.2100, test loss 3.3000, 5,000 tokens/s, elapsed 60 s, remaining 180 s'
    """
    speed = f"{evaluation.tokens_per_second:,.0f} tokens/s" if evaluation.tokens_per_second else "- tokens/s"
    remaining = evaluation.remaining_seconds
    return (
        f"step {evaluation.step}/{total_steps}: train loss {evaluation.train_loss:.4f}, "
        f"test loss {evaluation.test_loss:.4f}, {speed}, elapsed {evaluation.elapsed_seconds:.0f} s, "
        f"remaining {'-' if remaining is None else f'{remaining:.0f}'} s"
    )
