"""A Parquet file on local disk passed between pipeline stages instead of its contents.

At scale (a gigabyte of stories) no stage holds a whole table in memory: a stage writes its
Parquet file row group by row group into a scratch folder and hands on a ``TableFile``; the
next stage reads it back in record batches. ``TableFile`` only names the file and its companion
files (``<stem>.<name>`` beside it, such as a memory-mappable token array) and moves them into
place together (``publish``); it does not decide where files live (``gpt_pipeline.storage``) and
knows nothing of Dagster.

Example:
    >>> import tempfile, pyarrow as pa, pyarrow.parquet as pq
    >>> path = Path(tempfile.mkdtemp()) / "t.parquet"
    >>> pq.write_table(pa.table({"text": ["a", "b", "c"]}), path, row_group_size=2)
    >>> tf = TableFile(path)
    >>> tf.num_rows, [b.num_rows for b in tf.iter_batches(batch_size=2)]
    (3, [2, 1])
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gpt_pipeline.data.splits import DataError
from gpt_pipeline.storage import data_dir, publish


@dataclass(frozen=True)
class TableFile:
    """A local Parquet file (``path``) and its companions (name -> path), read lazily."""

    path: Path
    companions: Mapping[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def stored_at(cls, path: str | Path) -> TableFile:
        """The file at ``path`` with every companion ``<stem>.<name>`` found beside it.

        Reads the Parquet footer only, so that a file that is not Parquet fails here."""
        path = Path(path)
        pq.read_metadata(path)
        prefix = path.stem + "."
        companions = {
            p.name[len(prefix):]: p
            for p in sorted(path.parent.glob(f"{path.stem}.*"))
            if p != path and not p.name.startswith(".") and p.is_file()
        }
        return cls(path, companions)

    def publish(self, path: str | Path) -> TableFile:
        """Move the file to ``path`` and each companion to ``<stem>.<name>`` beside it, atomically
        each, companions first: the main file's presence means the set is complete.

        Example:
            >>> import tempfile, pyarrow as pa, pyarrow.parquet as pq
            >>> d = Path(tempfile.mkdtemp())
            >>> pq.write_table(pa.table({"x": [1]}), d / "a.parquet")
            >>> _ = (d / "a.extra.bin").write_bytes(b"1")
            >>> moved = TableFile.stored_at(d / "a.parquet").publish(d / "out" / "b.parquet")
            >>> moved.path.name, {name: p.name for name, p in moved.companions.items()}
            ('b.parquet', {'extra.bin': 'b.extra.bin'})
        """
        path = Path(path)
        moved = {name: publish(source, path.with_name(f"{path.stem}.{name}")) for name, source in self.companions.items()}
        publish(self.path, path)
        return TableFile(path, moved)

    @property
    def display_name(self) -> str:
        """The file as errors name it: its path inside the data directory (``storage.data_dir``),
        else its file name; never a local absolute path."""
        try:
            return str(self.path.resolve().relative_to(data_dir()))
        except ValueError:
            return self.path.name

    def _unreadable(self, error: Exception) -> DataError:
        return DataError(f"cannot read Parquet file {self.display_name}: {' '.join(str(error).split())}")

    @property
    def num_rows(self) -> int:
        try:
            return pq.ParquetFile(self.path).metadata.num_rows
        except (pa.ArrowException, OSError) as error:
            raise self._unreadable(error) from None

    @property
    def schema(self) -> pa.Schema:
        return pq.read_schema(self.path)

    def iter_batches(
        self, columns: Sequence[str] | None = None, batch_size: int = 65536
    ) -> Iterator[pa.RecordBatch]:
        """Record batches of at most ``batch_size`` rows, in file order."""
        # pre_buffer=False: with pre-buffering, pyarrow keeps every row group read so far
        # (hundreds of MB over a 1 GB file); without it memory stays at one batch.
        try:
            with pq.ParquetFile(self.path, pre_buffer=False) as handle:
                yield from handle.iter_batches(batch_size=batch_size, columns=columns)
        except (pa.ArrowException, OSError) as error:  # corrupt pages: a DataError naming the file
            raise self._unreadable(error) from None

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The whole table (or some columns) in memory: for small files and tests."""
        try:
            return pq.read_table(self.path, columns=columns)
        except (pa.ArrowException, OSError) as error:
            raise self._unreadable(error) from None
