"""What a training run tells people: ``Progress.line()`` between evaluations (``train``'s
``on_progress``), ``progress_line`` at each evaluation (``on_evaluation``).

The CLI prints both; the ``trained_model`` asset writes them to the Dagster log.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Progress:
    """Where a run stands between evaluations, for people watching it (``train``'s ``on_progress``):
    every ``progress_seconds`` of training, and once when it resumes from a checkpoint."""

    step: int  # optimizer steps done
    total_steps: int
    loss: float | None  # training loss of the latest step; None when no step ran yet
    tokens_per_second: float | None  # training throughput of this session; None before any step
    elapsed_seconds: float  # wall time of the run so far, earlier (resumed) sessions included
    remaining_seconds: float | None  # estimate for the steps left; None before any step
    resumed_from: int | None = None  # set on the report that the run resumed (at that step)
    checkpoint_dir: str | None = None

    def line(self) -> str:
        """One line for the terminal and the Dagster log.

        Example:
            >>> Progress(120, 300, 2.5, 5000.0, 65.2, 97.0).line()
            'step 120/300: loss 2.5000, 5,000 tokens/s, elapsed 65 s, remaining 97 s'
            >>> Progress(40, 300, None, None, 30.0, None, resumed_from=40, checkpoint_dir="ckpt").line()
            'resumed from step 40/300 (checkpoint in ckpt; 30 s of training before)'
        """
        if self.resumed_from is not None:
            return (f"resumed from step {self.resumed_from}/{self.total_steps} (checkpoint in "
                    f"{self.checkpoint_dir}; {self.elapsed_seconds:.0f} s of training before)")
        speed = f"{self.tokens_per_second:,.0f} tokens/s" if self.tokens_per_second else "- tokens/s"
        loss = "-" if self.loss is None else f"{self.loss:.4f}"
        remaining = "-" if self.remaining_seconds is None else f"{self.remaining_seconds:.0f}"
        return (f"step {self.step}/{self.total_steps}: loss {loss}, {speed}, "
                f"elapsed {self.elapsed_seconds:.0f} s, remaining {remaining} s")


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
