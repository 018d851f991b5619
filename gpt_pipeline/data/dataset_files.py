"""The tokenized dataset on disk, written as a stream and read back memory-mapped.

``DatasetWriter`` takes the encoded stories a batch at a time and writes, never holding the
whole dataset:

- the Parquet file: ``tokens`` list<uint16> (list<uint32> above 65,536 tokens) and ``split``
  ("train"/"test", gpt-rs's split: the first ``split_point(n, training_percentage)`` stories
  train), one row group per batch;
- beside it one companion, ``<stem>.token_arrays.safetensors``: for each split the flat token
  array ``<split>_tokens`` (U16/U32) and its story offsets ``<split>_offsets`` (I64, one more
  than stories), laid out ``train_offsets, test_offsets, train_tokens, test_tokens``. The
  offsets' sizes are known from the start and the tokens arrive in order (train stories come
  first), so the file is written in one pass into a header of fixed size.

``open_token_arrays`` maps that file read-only (``np.memmap``): training then reads only the
windows it samples, and its memory does not grow with the corpus. The file's metadata and the
Parquet file's key-value metadata carry the same content digest; a companion whose digest is
not the Parquet file's (left from an earlier write cut short, or beside a Parquet file written by
someone else) is not used, and the caller reads the Parquet file instead
(``load_splits`` below). One companion file, so no mix of two writes can pass.

The tokenized-dataset step is ``write_dataset``: a story file encoded a batch at a time into
those two files, for the ``tokenized_dataset`` asset and ``gpt-pipeline tokenize`` alike.

Not here: the encoding itself (``gpt_pipeline.tokenizer``), where files live (``gpt_pipeline.storage``).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gpt_pipeline.data.splits import SPLIT_COLUMN, TEST, TOKENS_COLUMN, TRAIN, DataError, dataset_splits, split_point
from gpt_pipeline.data.table_file import TableFile
from gpt_pipeline.data.tokens import TokenArray, token_dtype
from gpt_pipeline.storage import io_faults

ARRAYS = "token_arrays.safetensors"  # the companion's name: <stem>.token_arrays.safetensors
DIGEST_KEY = b"gpt_pipeline.token_arrays_digest"  # in the Parquet file's key-value metadata
CHARACTERS_KEY = b"gpt_pipeline.split_characters"  # likewise: JSON {"train": n, "test": m}
FORMAT = "gpt_pipeline.token_arrays/1"
HEADER_BYTES = 1024  # 8-byte length + JSON header padded with spaces: data starts 8-aligned
SPLITS = (TRAIN, TEST)
_DTYPES = {"U16": np.dtype("<u2"), "U32": np.dtype("<u4"), "I64": np.dtype("<i8")}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}
_ORDER = ("train_offsets", "test_offsets", "train_tokens", "test_tokens")


def _pwrite(fd: int, data: memoryview | bytes, position: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, position)
        view, position = view[written:], position + written


class DatasetWriter:
    """Writes the tokenized dataset batch by batch: the Parquet file at ``path`` and companion.

    ``num_stories`` must be known up front (the split column and the offsets' place depend on
    it): with a Parquet source, its footer's row count. ``metadata`` goes into the Parquet
    footer beside the digest (the dataset's provenance). Use as a context manager; then
    ``result`` is the ``TableFile`` and the dataset's figures (as ``data.splits.dataset_stats`` gives
    them, plus ``digest``).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "d.parquet"
        >>> with DatasetWriter(path, num_stories=3, vocab_size=8, training_percentage=0.7) as w:
        ...     w.write(np.array([1, 2, 3], np.uint16), np.array([0, 2, 3]))
        ...     w.write(np.array([4, 5], np.uint16), np.array([0, 2]))
        >>> table_file, stats = w.result
        >>> pq.read_table(path).to_pydict()
        {'tokens': [[1, 2], [3], [4, 5]], 'split': ['train', 'train', 'test']}
        >>> train, test = open_token_arrays(table_file)
        >>> train.tokens.tolist(), train.offsets.tolist(), test.tokens.tolist(), stats["max_story_tokens"]
        ([1, 2, 3], [0, 2, 3], [4, 5], 2)
    """

    def __init__(self, path: str | os.PathLike, num_stories: int, vocab_size: int, training_percentage: float,
                 metadata: dict[str, str] | None = None):
        if vocab_size < 1:
            raise DataError(f"vocab_size must be >= 1, got {vocab_size}")
        self.path = Path(path)
        self.num_stories, self.vocab_size = num_stories, vocab_size
        self.stories = {TRAIN: split_point(num_stories, training_percentage)}
        self.stories[TEST] = num_stories - self.stories[TRAIN]
        self.dtype = token_dtype(vocab_size)
        self.schema = pa.schema(
            [(TOKENS_COLUMN, pa.list_(pa.from_numpy_dtype(self.dtype))), (SPLIT_COLUMN, pa.string())]
        )
        self.arrays_path = self.path.with_name(f"{self.path.stem}.{ARRAYS}")
        self.metadata = dict(metadata or {})  # more footer key-value metadata (provenance)
        self.rows = 0
        self.tokens = {TRAIN: 0, TEST: 0}  # tokens written per split
        self.characters: dict[str, int] | None = {TRAIN: 0, TEST: 0}  # None once a batch came without
        self._digests = {name: hashlib.sha256() for name in _ORDER}
        self._next_offset = {TRAIN: HEADER_BYTES, TEST: HEADER_BYTES + 8 * (self.stories[TRAIN] + 1)}
        self._tokens_start = HEADER_BYTES + 8 * (num_stories + 2)
        self._min, self._max = None, 0
        self.result: tuple[TableFile, dict] | None = None
        with io_faults(self.arrays_path):  # a full disk, say: one line naming the file
            self._fd = os.open(self.arrays_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            with io_faults(self.path):
                self._parquet = pq.ParquetWriter(self.path, self.schema)
                for split in SPLITS:
                    self._append_offsets(split, np.zeros(1, np.int64))
        except BaseException:
            os.close(self._fd)
            raise

    def _append_offsets(self, split: str, offsets: np.ndarray) -> None:
        data = np.ascontiguousarray(offsets, dtype="<i8")
        _pwrite(self._fd, data.data, self._next_offset[split])
        self._digests[f"{split}_offsets"].update(data.data)
        self._next_offset[split] += data.nbytes

    def write(self, ids: np.ndarray, offsets: np.ndarray, characters: np.ndarray | None = None) -> None:
        """One batch of stories: ids back to back, ``offsets`` (one more than stories, from 0)
        and each story's characters (``characters``, [stories]; when every batch has them, the
        splits' totals go into the Parquet file's metadata: ``split_characters``)."""
        with io_faults(self.path):
            self._write(ids, offsets, characters)

    def _write(self, ids: np.ndarray, offsets: np.ndarray, characters: np.ndarray | None) -> None:
        ids, offsets = np.asarray(ids), np.asarray(offsets, dtype=np.int64)  # [tokens], [stories + 1]
        count = len(offsets) - 1
        if count < 1:
            return
        if offsets[0] != 0 or offsets[-1] != len(ids) or (np.diff(offsets) < 0).any():
            raise DataError(f"offsets of a batch must rise from 0 to its {len(ids)} tokens")
        if self.rows + count > self.num_stories:
            raise DataError(f"more than the announced {self.num_stories} stories were written")
        if len(ids) and (int(ids.max()) >= self.vocab_size or int(ids.min()) < 0):
            bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
            raise DataError(f"token id {bad} is outside the vocabulary [0, {self.vocab_size})")
        if len(ids) > np.iinfo(np.int32).max:
            raise DataError(f"a batch of {len(ids)} tokens is too large: write fewer stories per batch")
        values = np.ascontiguousarray(ids, dtype=self.dtype.newbyteorder("<"))  # [batch tokens]
        train_rows = min(count, max(0, self.stories[TRAIN] - self.rows))
        split = pa.array([TRAIN] * train_rows + [TEST] * (count - train_rows), pa.string())
        tokens = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))
        self._parquet.write_table(pa.table([tokens, split], schema=self.schema), row_group_size=count)
        _pwrite(self._fd, values.data, self._tokens_start + self.dtype.itemsize * sum(self.tokens.values()))
        for name, rows in ((TRAIN, slice(0, train_rows)), (TEST, slice(train_rows, count))):
            part = offsets[rows.start : rows.stop + 1]  # this split's stories in this batch, [k + 1]
            if len(part) < 2:
                continue
            self._digests[f"{name}_tokens"].update(values[part[0] : part[-1]].data)
            self._append_offsets(name, part[1:] - part[0] + self.tokens[name])
            self.tokens[name] += int(part[-1] - part[0])
        if characters is None or len(characters) != count:
            self.characters = None
        elif self.characters is not None:
            self.characters[TRAIN] += int(np.sum(characters[:train_rows], dtype=np.int64))
            self.characters[TEST] += int(np.sum(characters[train_rows:], dtype=np.int64))
        lengths = np.diff(offsets)
        self._min = int(lengths.min()) if self._min is None else min(self._min, int(lengths.min()))
        self._max = max(self._max, int(lengths.max()))
        self.rows += count

    def close(self) -> tuple[TableFile, dict]:
        with io_faults(self.path):
            return self._close()

    def _close(self) -> tuple[TableFile, dict]:
        if self.rows != self.num_stories:
            raise DataError(f"{self.rows} stories were written, not the announced {self.num_stories}")
        parts = {name: self._digests[name].hexdigest() for name in _ORDER}
        digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
        _pwrite(self._fd, self._header(digest), 0)
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        self._parquet.add_key_value_metadata({**self.metadata, DIGEST_KEY: digest.encode()})
        if self.characters is not None:
            self._parquet.add_key_value_metadata({CHARACTERS_KEY: json.dumps(self.characters).encode()})
        self._parquet.close()
        with open(self.path, "rb+") as handle:
            os.fsync(handle.fileno())
        self.result = (TableFile(self.path, {ARRAYS: self.arrays_path}), {**self._stats(), "digest": digest})
        return self.result

    def _header(self, digest: str) -> bytes:
        sizes = {f"{s}_offsets": (self.stories[s] + 1, np.dtype("<i8")) for s in SPLITS}
        sizes.update({f"{s}_tokens": (self.tokens[s], self.dtype.newbyteorder("<")) for s in SPLITS})
        header: dict = {"__metadata__": {"format": FORMAT, "digest": digest}}
        begin = 0
        for name in _ORDER:  # the order of the data in the file
            length, dtype = sizes[name]
            end = begin + length * dtype.itemsize
            header[name] = {"dtype": _CODES[dtype], "shape": [length], "data_offsets": [begin, end]}
            begin = end
        text = json.dumps(header, separators=(",", ":")).encode()
        if len(text) > HEADER_BYTES - 8:
            raise RuntimeError(f"token array header of {len(text)} bytes does not fit")
        text += b" " * (HEADER_BYTES - 8 - len(text))  # safetensors allows trailing spaces
        return struct.pack("<Q", len(text)) + text

    def _stats(self) -> dict:
        tokens = sum(self.tokens.values())
        return {
            "stories": self.rows,
            "tokens": tokens,
            "train_stories": self.stories[TRAIN],
            "train_tokens": self.tokens[TRAIN],
            "test_stories": self.stories[TEST],
            "test_tokens": self.tokens[TEST],
            "min_story_tokens": self._min or 0,
            "mean_story_tokens": tokens / self.rows if self.rows else 0.0,
            "max_story_tokens": self._max,
            **({f"{s}_characters": n for s, n in self.characters.items()} if self.characters else {}),
        }

    def abort(self) -> None:
        """Close every file after a failure; the caller removes the (scratch) folder."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            self._parquet.close()
        except (OSError, pa.ArrowException):
            pass

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None:
            self.abort()
            return
        try:
            self.close()
        except BaseException:
            self.abort()
            raise


def open_token_arrays(table_file: TableFile) -> tuple[TokenArray, TokenArray] | None:
    """The train and test splits memory-mapped read-only from ``table_file``'s companion, or
    ``None`` when it has none that belongs to its Parquet file (then read the Parquet file).

    Raises ``DataError`` when the companion does belong to it but is damaged: reading a
    gigabyte Parquet file into memory instead would hide that.
    """
    path = table_file.companions.get(ARRAYS)
    if path is None or not Path(path).is_file():
        return None
    stored = (pq.read_metadata(table_file.path).metadata or {}).get(DIGEST_KEY)
    header, data_start = _read_header(Path(path))
    metadata = header.get("__metadata__") or {}
    if stored is None or metadata.get("digest") != stored.decode():
        return None  # the companion of another Parquet file (or of none): not ours to use
    if metadata.get("format") != FORMAT:
        raise DataError(f"{path}: unknown token array format {metadata.get('format')!r}")
    size = Path(path).stat().st_size
    arrays = {name: _map(path, header.get(name), name, data_start, size) for name in _ORDER}
    splits = []
    for split in SPLITS:
        tokens, offsets = arrays[f"{split}_tokens"], arrays[f"{split}_offsets"]
        if tokens.dtype not in (np.uint16, np.uint32) or offsets.dtype != np.int64:
            raise DataError(f"{path}: {split} arrays are {tokens.dtype} and {offsets.dtype}")
        if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(tokens):
            raise DataError(f"{path}: {split}_offsets do not run from 0 to {len(tokens)}")
        splits.append(TokenArray(tokens=tokens, offsets=offsets))
    return splits[0], splits[1]


def split_characters(table_file) -> dict[str, int] | None:
    """``{"train": n, "test": m}``: the characters of each split as ``DatasetWriter`` recorded
    them in the Parquet file's metadata; None for files written without them (older files, or
    files not written by ``DatasetWriter``).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "d.parquet"
        >>> with DatasetWriter(path, num_stories=3, vocab_size=8, training_percentage=0.7) as w:
        ...     w.write(np.array([1, 2, 3, 4, 5], np.uint16), np.array([0, 2, 3, 5]), np.array([5, 1, 4]))
        >>> split_characters(w.result[0]), w.result[1]["test_characters"]
        ({'train': 6, 'test': 4}, 4)
    """
    raw = (pq.read_metadata(table_file.path).metadata or {}).get(CHARACTERS_KEY)
    if raw is None:
        return None
    counts = json.loads(raw)
    if not isinstance(counts, dict) or any(not isinstance(counts.get(s), int) or counts[s] < 0 for s in SPLITS):
        raise DataError(f"{table_file.path}: bad split_characters metadata {raw.decode()!r}")
    return {s: counts[s] for s in SPLITS}


def content_digest(table_file) -> str | None:
    """The content digest ``DatasetWriter`` stored in the Parquet file's metadata (the dataset's
    ``content_digest``), or None for a file written otherwise."""
    raw = (pq.read_metadata(table_file.path).metadata or {}).get(DIGEST_KEY)
    return raw.decode() if raw else None


def _read_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as handle:
        head = handle.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < length <= 100_000_000:
            raise DataError(f"{path}: not a safetensors file (header length {length})")
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            raise DataError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise DataError(f"{path}: not a safetensors file (its header is not a JSON object)")
    return header, 8 + length


def _map(path, entry, name: str, data_start: int, size: int) -> np.ndarray:
    """One 1-D tensor of the file, memory-mapped read-only (checked against the file's size)."""
    try:
        dtype = _DTYPES[entry["dtype"]]
        (length,) = entry["shape"]
        begin, end = entry["data_offsets"]
        valid = end - begin == length * dtype.itemsize and 0 <= begin and data_start + end <= size
    except (KeyError, TypeError, ValueError):
        valid = False
    if not valid:
        raise DataError(f"{path}: tensor {name!r} is missing or does not fit the file: {entry}")
    if length == 0:  # an empty mapping is not allowed
        empty = np.zeros(0, dtype)
        empty.flags.writeable = False
        return empty
    return np.memmap(path, dtype=dtype, mode="r", offset=data_start + begin, shape=(length,))


def load_splits(table_file) -> tuple[TokenArray, TokenArray]:
    """The train and test ``TokenArray``s of a stored tokenized dataset (a ``TableFile``).

    Memory-mapped read-only from its companion arrays when it has them (as the pipeline's
    ``tokenized_dataset`` does; see ``gpt_pipeline.data.dataset_files``): nothing is read until
    used. Otherwise (older files, files written by users or by interop code) read from the
    Parquet file into memory.

    Example:
        >>> import tempfile, pyarrow.parquet as pq
        >>> from pathlib import Path
        >>> from gpt_pipeline.data.table_file import TableFile
        >>> from gpt_pipeline.data.splits import build_dataset_table
        >>> path = Path(tempfile.mkdtemp()) / "d.parquet"
        >>> pq.write_table(build_dataset_table([[1, 2], [3], [4, 5]], 8, 0.7), path)
        >>> train, test = load_splits(TableFile(path))
        >>> train.tokens.tolist(), test.tokens.tolist()
        ([1, 2, 3], [4, 5])
    """
    mapped = open_token_arrays(table_file)
    if mapped is not None:
        return mapped
    return dataset_splits(table_file.read())
