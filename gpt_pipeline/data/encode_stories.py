"""The tokenized-dataset step: every story of a story file encoded into the dataset file.

``write_dataset`` is what the ``tokenized_dataset`` asset and ``gpt-pipeline tokenize`` both call:
stories are read ``batch_rows`` at a time (``story_files.text_batches``), encoded
(``BPETokenizer.encode_flat``) and written by ``dataset_files.DatasetWriter`` (the Parquet file and
its memory-mappable token arrays), so nothing holds the whole corpus.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path  # noqa: F401 - used by the example

import pyarrow.parquet as pq  # noqa: F401 - used by the example

from gpt_pipeline.data.config import DatasetConfig
from gpt_pipeline.data.dataset_files import DatasetWriter
from gpt_pipeline.data.story_files import text_batches
from gpt_pipeline.data.table_file import TableFile


ENCODE_BATCH_ROWS = 16_384  # stories encoded and written (one Parquet row group) at a time


def write_dataset(
    tokenizer,
    stories: TableFile | str | os.PathLike,
    config: DatasetConfig,
    path: str | os.PathLike,
    batch_rows: int = ENCODE_BATCH_ROWS,
    metadata: dict[str, str] | None = None,
) -> tuple[TableFile, dict]:
    """The tokenized-dataset step: every story of a story file (``write_stories``'s) encoded with
    ``tokenizer`` (a ``BPETokenizer``), ``batch_rows`` at a time, into the Parquet file ``path``
    and its memory-mappable companion; the first ``config.training_percentage`` stories train.

    Returns the ``TableFile`` and facts: stories and tokens per split, ``encoding_seconds``,
    shortest / mean / longest story and the content ``digest``. A character the tokenizer never
    saw raises ``ValueError`` naming the story (counted from 0 over the whole file). ``metadata``
    goes into the Parquet footer (the dataset's provenance).

    Example:
        >>> import tempfile, pyarrow as pa
        >>> from gpt_pipeline.data.story_files import write_texts
        >>> from gpt_pipeline.tokenizer import BPETokenizer
        >>> folder = Path(tempfile.mkdtemp())
        >>> stories = write_texts(folder / "s.parquet", [pa.array(["ab", "ba", "abab"])])
        >>> table_file, facts = write_dataset(BPETokenizer.train(["ab"], 3), stories,
        ...                                   DatasetConfig(training_percentage=0.5), folder / "d.parquet")
        >>> pq.read_table(table_file.path).to_pydict(), facts["train_tokens"]
        ({'tokens': [[2], [1, 0], [2, 2]], 'split': ['train', 'test', 'test']}, 1)
    """
    table_file = stories if isinstance(stories, TableFile) else TableFile(stories)
    seconds, row = 0.0, 0
    with DatasetWriter(path, table_file.num_rows, tokenizer.vocab_size, config.training_percentage,
                       metadata) as writer:
        for batch in text_batches(table_file, batch_rows):
            started = time.perf_counter()
            try:
                ids, offsets = tokenizer.encode_flat(batch)
            except ValueError as error:  # "text i: ..." counts from this batch's first story
                raise ValueError(re.sub(r"^text (\d+):", lambda m: f"story {row + int(m[1])}:", str(error))) from None
            seconds += time.perf_counter() - started
            writer.write(ids, offsets, batch.str.len_chars().to_numpy())
            row += len(batch)
    written, facts = writer.result
    return written, {**facts, "encoding_seconds": seconds}
