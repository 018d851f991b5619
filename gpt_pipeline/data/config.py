"""Settings of the two data steps: where the stories come from, and how they are split.

Each field is declared once (``gpt_pipeline.fields.param``); the ``raw_stories`` and
``tokenized_dataset`` assets' run config and the CLI's options derive from these classes.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpt_pipeline.data.corpus import DEFAULT_NUM_STORIES
from gpt_pipeline.fields import check, param


@dataclass(frozen=True)
class StoriesConfig:
    """The stories: a Parquet file of text, or the embedded corpus the project generates."""

    path: str | None = param(None, "Parquet file of stories, one per row. Empty: the embedded corpus "
                             "that the project generates itself (num_stories stories from seed).")
    text_column: str | None = param(None, "Column holding the text. Empty: the first column, as gpt-rs.")
    num_stories: int = param(DEFAULT_NUM_STORIES, "Embedded corpus only: number of stories to generate.",
                             ge=1)
    seed: int = param(0, "Embedded corpus only: generator seed.", ge=0)

    def validate(self) -> StoriesConfig:
        return check(self)


@dataclass(frozen=True)
class DatasetConfig:
    """How the tokenized stories are split (gpt-rs: the first 90% in file order train)."""

    training_percentage: float = param(0.9, "Share of the stories, in file order, that form the "
                                       "training split (gpt-rs: the first 90%); the rest is the test "
                                       "split.", gt=0, lt=1)

    def validate(self) -> DatasetConfig:
        return check(self)
