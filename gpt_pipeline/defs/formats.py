"""How each Python type is stored as files: suffix, writer and reader.

A writer gets a local destination path and writes it atomically (companion files, named
``<stem>.<name>`` beside it, first; the main file last, so that its presence means the set is
complete) and returns the companions by name. A reader gets the local path of the main file.
Where the files live, local or remote, is the IO manager's business (``io_manager.py``).

    polars DataFrame / Arrow table  ->  .parquet
    TableFile (a finished Parquet)  ->  .parquet (+ its companions), moved into place
    BPETokenizer                    ->  .json (+ .vocab.txt listing, + .hf.json for Hugging Face):
                                        a tokenizer bundle (``gpt_pipeline.tokenizer.bundle``)
    GPT                             ->  .safetensors (config in the safetensors metadata)
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from gpt_pipeline.provenance import PROVENANCE_KEY
from gpt_pipeline.data.table_file import TableFile
from gpt_pipeline.model.gpt import GPT
from gpt_pipeline.storage import SCRATCH, atomic_write
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline.tokenizer.bundle import TOKENIZER, read_bundle, write_bundle
from gpt_pipeline.training.checkpoint import load_checkpoint, save_checkpoint


def _write_tokenizer(path: Path, tokenizer: BPETokenizer) -> dict[str, Path]:
    """The tokenizer bundle at ``path``: its companions (listing, Hugging Face file when the
    vocabulary fits that format) first, ``path`` itself last."""
    written = write_bundle(tokenizer, path)
    return {role: file for role, file in written.items() if role != TOKENIZER}


def _write_parquet_frame(path: Path, frame: pl.DataFrame) -> dict[str, Path]:
    record = getattr(frame, "provenance", None)  # set by gpt_pipeline.provenance.attach
    footer = {PROVENANCE_KEY: json.dumps(record, sort_keys=True)} if record else None
    atomic_write(path, lambda tmp: frame.write_parquet(tmp, metadata=footer))
    return {}


def _write_parquet_table(path: Path, table: pa.Table) -> dict[str, Path]:
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return {}


def _publish_table_file(path: Path, value: TableFile) -> dict[str, Path]:
    """Move a finished Parquet file and its companions into place (companions first)."""
    moved = value.publish(path)
    if value.path.parent.parent.name == SCRATCH:  # the stage's own scratch folder, now empty
        shutil.rmtree(value.path.parent, ignore_errors=True)
    return dict(moved.companions)


def _write_model(path: Path, model: GPT) -> dict[str, Path]:
    save_checkpoint(path, model)  # atomic itself
    return {}


@dataclass(frozen=True)
class StoredFormat:
    """How one Python type is stored: file suffix, writer (returns companion files by name), reader."""

    type_: type
    suffix: str
    write: Callable[[Path, Any], dict[str, Path]]
    read: Callable[[Path], Any]


FORMATS: tuple[StoredFormat, ...] = (
    StoredFormat(TableFile, ".parquet", _publish_table_file, TableFile.stored_at),
    StoredFormat(pl.DataFrame, ".parquet", _write_parquet_frame, pl.read_parquet),
    StoredFormat(pa.Table, ".parquet", _write_parquet_table, pq.read_table),
    StoredFormat(BPETokenizer, ".json", _write_tokenizer, read_bundle),
    StoredFormat(GPT, ".safetensors", _write_model, lambda path: load_checkpoint(path)[0]),
)


def format_for_value(value: Any) -> StoredFormat:
    for fmt in FORMATS:
        if isinstance(value, fmt.type_):
            return fmt
    raise TypeError(f"no stored format for a value of type {type(value).__name__}")


def format_for_type(type_: Any) -> StoredFormat | None:
    for fmt in FORMATS:
        if isinstance(type_, type) and issubclass(type_, fmt.type_):
            return fmt
    return None
