"""Story Parquet files: read in record batches, cleaned, and written batch by batch.

What this module does: read any Parquet file whose text is in one column (by default the first,
as gpt-rs), streamed in record batches with null and empty entries dropped (``iter_texts``,
counting what it kept and dropped in ``TextStats``), write such batches as a one-column ``text``
file, one row group per batch (``write_texts``), or read a small file whole into a DataFrame
(``read_texts``). Memory stays at one batch whatever the file's size.

The stories step is ``write_stories``: a ``StoriesConfig``'s stories (a Parquet file's, or the
embedded corpus) streamed into our story file, which the ``raw_stories`` asset stores and
``gpt-pipeline tokenize`` works from. ``text_batches`` reads that file back, a batch at a time.

What it does not do: tokenize (``gpt_pipeline.tokenizer``), split or build the tokenized dataset
(``gpt_pipeline.data.splits``), or decide where files live (``gpt_pipeline.storage``). Every bad input
raises ``DataError`` with a one-line message naming the problem and the value.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gpt_pipeline.data.config import StoriesConfig
from gpt_pipeline.data.corpus import iter_story_batches
from gpt_pipeline.data.splits import TEXT_COLUMN, DataError
from gpt_pipeline.data.table_file import TableFile
from gpt_pipeline.storage import atomic_write


def _is_text(dtype: pa.DataType) -> bool:
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or (
        pa.types.is_string_view(dtype)
    )


def _schema(path: Path) -> pa.Schema:
    if not path.exists():
        raise DataError(f"source file not found: {path}")
    if not path.is_file():
        raise DataError(f"source path is not a file: {path}")
    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as error:
        detail = " ".join(str(error).split())
        raise DataError(f"not a Parquet file: {path} ({detail})") from None


TEXT_DIGEST_KEY = "gpt_pipeline.text_digest"  # in the footer of a file written by write_texts


class TextDigest:
    """sha256 over a column of texts, fed batch by batch: the same for the same texts in the same
    order however they are cut into batches (lengths and bytes are hashed as two streams).

    Example:
        >>> a, b = TextDigest(), TextDigest()
        >>> a.update(pa.array(["ab", "c"])); b.update(pa.array(["ab"])); b.update(pa.array(["c"]))
        >>> a.hexdigest() == b.hexdigest(), a.hexdigest() == TextDigest().hexdigest()
        (True, False)
    """

    def __init__(self) -> None:
        self._lengths, self._bytes = hashlib.sha256(), hashlib.sha256()

    def update(self, batch: pa.Array | pa.ChunkedArray) -> None:
        batch = batch.cast(pa.large_string())
        if isinstance(batch, pa.ChunkedArray):
            batch = batch.combine_chunks()
        if not len(batch):
            return
        offsets = np.frombuffer(batch.buffers()[1], dtype="<i8")[batch.offset : batch.offset + len(batch) + 1]
        self._lengths.update(np.diff(offsets).astype("<i8").data)
        data = batch.buffers()[2]
        if data is not None:
            self._bytes.update(memoryview(data)[int(offsets[0]) : int(offsets[-1])])

    def hexdigest(self) -> str:
        return hashlib.sha256(f"{self._lengths.hexdigest()}:{self._bytes.hexdigest()}".encode()).hexdigest()


READ_BATCH_ROWS = 16_384  # rows per record batch when a story file is streamed


@dataclass
class TextStats:
    """What a pass over stories found, counted batch by batch as they stream past.

    Example:
        >>> stats = TextStats()
        >>> stats.keep(pa.array(["Hi.", None, "", "Bye."])).to_pylist()
        ['Hi.', 'Bye.']
        >>> stats.rows_read, stats.null_dropped, stats.empty_dropped, stats.characters, stats.first
        (4, 1, 1, 7, 'Hi.')
    """

    rows_read: int = 0
    null_dropped: int = 0
    empty_dropped: int = 0
    rows_kept: int = 0
    characters: int = 0
    first: str | None = None  # the first story kept
    source_column: str = TEXT_COLUMN

    def keep(self, batch: pa.Array | pa.ChunkedArray) -> pa.Array:
        """``batch`` as a large_string array without its null and empty entries, counted."""
        batch = batch.cast(pa.large_string())
        if isinstance(batch, pa.ChunkedArray):
            batch = batch.combine_chunks()
        nulls = batch.null_count
        kept = batch.filter(pc.greater(pc.binary_length(batch), 0))  # nulls are dropped, too
        self.rows_read += len(batch)
        self.null_dropped += nulls
        self.empty_dropped += len(batch) - nulls - len(kept)
        self.rows_kept += len(kept)
        if len(kept):
            self.characters += pc.sum(pc.utf8_length(kept)).as_py()
            if self.first is None:
                self.first = kept[0].as_py()
        return kept

    def summary(self) -> dict:
        """``rows_read``, ``null_dropped``, ``empty_dropped``, ``rows_kept``, ``source_column``."""
        return {
            "rows_read": self.rows_read,
            "null_dropped": self.null_dropped,
            "empty_dropped": self.empty_dropped,
            "rows_kept": self.rows_kept,
            "source_column": self.source_column,
        }


def _text_column(path: Path, text_column: str | None) -> str:
    """The column of ``path`` that holds the stories, checked to be text in a file with rows."""
    schema = _schema(path)
    if text_column is None:
        if len(schema) == 0:
            raise DataError(f"Parquet file has no columns: {path}")
        column = schema.names[0]
    elif text_column not in schema.names:
        raise DataError(
            f"text column {text_column!r} not found in {path}; columns: {schema.names}"
        )
    else:
        column = text_column
    dtype = schema.field(column).type
    if not _is_text(dtype):
        which = "named" if text_column is not None else "first"
        raise DataError(f"{which} column {column!r} of {path} is not text but {dtype}")
    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError) as error:
        detail = " ".join(str(error).split())
        raise DataError(f"cannot read Parquet file {TableFile(path).display_name}: {detail}") from None
    if rows == 0:
        raise DataError(f"Parquet file has no rows: {path}")
    return column


def iter_texts(
    path: str | os.PathLike,
    text_column: str | None = None,
    stats: TextStats | None = None,
    batch_rows: int | None = None,
) -> Iterator[pa.Array]:
    """The stories of a Parquet file in batches (large_string arrays), null and empty dropped.

    The file and its column are checked when this is called; ``stats`` (if given) counts the
    rows as they stream past, ``batch_rows`` at a time (default ``READ_BATCH_ROWS``). The text
    is in ``text_column``, or by default in the file's first column (as gpt-rs). A file that
    holds only null or empty text raises at the end.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "s.parquet"
        >>> pq.write_table(pa.table({"story": ["a", None, "b", "c"]}), path)
        >>> [b.to_pylist() for b in iter_texts(path, batch_rows=2)]
        [['a'], ['b', 'c']]
    """
    path = Path(path)
    stats = TextStats() if stats is None else stats
    stats.source_column = _text_column(path, text_column)
    return _parquet_batches(path, stats, batch_rows or READ_BATCH_ROWS)


def _parquet_batches(path: Path, stats: TextStats, batch_rows: int) -> Iterator[pa.Array]:
    column = stats.source_column
    try:
        # pre_buffer=False: pre-buffering keeps every row group read so far (the whole file).
        with pq.ParquetFile(path, pre_buffer=False) as handle:
            for batch in handle.iter_batches(batch_size=batch_rows, columns=[column]):
                kept = stats.keep(batch.column(0))
                if len(kept):
                    yield kept
    except (pa.ArrowException, OSError) as error:
        detail = " ".join(str(error).split())
        raise DataError(f"cannot read Parquet file {TableFile(path).display_name}: {detail}") from None
    if stats.rows_kept == 0:
        raise DataError(f"column {column!r} of {path} holds only null or empty text")


def write_texts(path: str | os.PathLike, batches: Iterable[pa.Array]) -> Path:
    """Write text batches atomically as a Parquet file with one large_string ``text`` column,
    one row group per batch, holding one batch in memory at a time; returns ``path``. The
    footer keeps the text's digest (``TextDigest``) under ``TEXT_DIGEST_KEY``.

    Example:
        >>> import tempfile
        >>> path = write_texts(Path(tempfile.mkdtemp()) / "t.parquet", [pa.array(["a", "b"]), pa.array(["c"])])
        >>> pq.ParquetFile(path).num_row_groups, pq.read_table(path)["text"].to_pylist()
        (2, ['a', 'b', 'c'])
    """
    schema = pa.schema([(TEXT_COLUMN, pa.large_string())])

    def write(tmp: Path) -> None:
        digest = TextDigest()
        with pq.ParquetWriter(tmp, schema) as writer:
            empty = True
            for batch in batches:
                if len(batch):
                    writer.write_table(pa.table([batch.cast(pa.large_string())], schema=schema))
                    digest.update(batch)
                    empty = False
            if empty:
                writer.write_table(schema.empty_table())
            writer.add_key_value_metadata({TEXT_DIGEST_KEY: digest.hexdigest()})

    return atomic_write(path, write)


def read_texts(
    path: str | os.PathLike, text_column: str | None = None
) -> tuple[pl.DataFrame, dict]:
    """Read the stories of a Parquet file: one ``text`` column, null and empty entries dropped.

    The text is in ``text_column``, or by default in the file's first column (as gpt-rs). Returns
    the DataFrame and ``{"rows_read", "null_dropped", "empty_dropped", "rows_kept",
    "source_column"}``. The whole file is read into memory: large corpora stream with
    ``iter_texts`` instead.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "s.parquet"
        >>> pq.write_table(pa.table({"story": ["Hi.", None, "", "Bye."], "n": [1, 2, 3, 4]}), path)
        >>> frame, stats = read_texts(path)
        >>> frame["text"].to_list(), stats["null_dropped"], stats["empty_dropped"]
        (['Hi.', 'Bye.'], 1, 1)
    """
    stats = TextStats()
    chunks = list(iter_texts(path, text_column, stats))
    column = pa.chunked_array(chunks, pa.large_string())
    texts = pl.DataFrame({TEXT_COLUMN: pl.Series(TEXT_COLUMN, column)})
    return texts.with_columns(pl.col(TEXT_COLUMN).cast(pl.String)), stats.summary()


def write_stories(destination: str | os.PathLike, config: StoriesConfig) -> dict:
    """The stories step: ``config``'s stories streamed into the Parquet file ``destination``
    (one large_string ``text`` column, one row group per batch), never all in memory.

    The stories are ``config.path``'s text column (null and empty entries dropped), or without
    a path the embedded corpus (``num_stories`` stories from ``seed``). The source is checked
    before ``destination`` is touched. Returns the facts: ``source``, ``TextStats.summary()``'s
    counts, ``characters`` and ``first`` (the first story, for a preview).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "stories.parquet"
        >>> facts = write_stories(path, StoriesConfig(num_stories=3, seed=1))
        >>> facts["source"], facts["rows_kept"], pq.read_table(path).num_rows
        ('embedded corpus (seed 1)', 3, 3)
    """
    stats = TextStats()
    if config.path:
        source, batches = str(config.path), iter_texts(config.path, config.text_column, stats)
    else:
        num_stories, seed = config.num_stories, config.seed
        if isinstance(num_stories, bool) or not isinstance(num_stories, int) or num_stories < 1:
            raise ValueError(f"num_stories must be at least 1, got {num_stories}")
        source = f"embedded corpus (seed {seed})"
        batches = (stats.keep(pa.array(b, pa.large_string())) for b in iter_story_batches(num_stories, seed))
    write_texts(destination, batches)
    return {"source": source, **stats.summary(), "characters": stats.characters, "first": stats.first or ""}


STORY_BATCH_ROWS = 16_384  # stories per batch when a story file is read back


def text_batches(stories: TableFile | str | os.PathLike, batch_rows: int | None = None) -> Iterator[pl.Series]:
    """The ``text`` column of a story file (``write_stories``'s) in polars String batches of
    ``batch_rows`` stories (default ``STORY_BATCH_ROWS``).

    Example:
        >>> import tempfile
        >>> path = write_texts(Path(tempfile.mkdtemp()) / "t.parquet", [pa.array(["a", "b", "c"])])
        >>> [b.to_list() for b in text_batches(path, batch_rows=2)]
        [['a', 'b'], ['c']]
    """
    table_file = stories if isinstance(stories, TableFile) else TableFile(stories)
    for batch in table_file.iter_batches([TEXT_COLUMN], batch_size=batch_rows or STORY_BATCH_ROWS):
        yield pl.Series(TEXT_COLUMN, batch.column(0)).cast(pl.String)
