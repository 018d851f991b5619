"""Settings of the two data steps: where the stories come from, and how they are split.

Each field is declared once (``gpt_pipeline.fields.settings``); the ``raw_stories`` and
``tokenized_dataset`` assets' run config and the CLI's options derive from these classes.
"""

from __future__ import annotations

from pydantic import Field

from gpt_pipeline.data.corpus import DEFAULT_NUM_STORIES
from gpt_pipeline.fields import settings


@settings(frozen=True)
class StoriesConfig:
    """The stories: a Parquet file of text, or the embedded corpus the project generates."""

    path: str | None = Field(None, description="Parquet file of stories, one per row. Empty: the embedded "
                             "corpus that the project generates itself (num_stories stories from seed).")
    text_column: str | None = Field(None, description="Column holding the text. Empty: the first column, "
                                    "as gpt-rs.")
    num_stories: int = Field(DEFAULT_NUM_STORIES, description="Embedded corpus only: number of stories to "
                             "generate.", ge=1)
    seed: int = Field(0, description="Embedded corpus only: generator seed.", ge=0)


@settings(frozen=True)
class DatasetConfig:
    """How the tokenized stories are split (gpt-rs: the first 90% in file order train)."""

    training_percentage: float = Field(0.9, description="Share of the stories, in file order, that form "
                                       "the training split (gpt-rs: the first 90%); the rest is the test "
                                       "split.", gt=0, lt=1)
