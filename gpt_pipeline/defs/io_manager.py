"""The one IO manager: every asset is a file under the data directory, named after its key.

``AssetFileIOManager`` owns all path logic of the pipeline's stored assets:
``<data dir>/<asset key>.<suffix>`` where the data directory is ``$GPT_PIPELINE_DATA_DIR`` or
``<project root>/data`` (see ``gpt_pipeline.storage.data_dir``), and the suffix follows the
value's type:

    polars DataFrame / Arrow table  ->  .parquet
    BPETokenizer                    ->  .json (+ .vocab.txt listing, + .hf.json for Hugging Face)
    GPT                             ->  .safetensors (config in the safetensors metadata)

Every write is atomic (temporary file in the same directory, fsync, ``os.replace``): a reader,
or a process killed mid-write, never sees half a file, and the previous file stays until the new
one is complete. Each stored output gets ``path`` and ``size_bytes`` metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from gpt_pipeline.checkpoint import load_checkpoint, save_checkpoint
from gpt_pipeline.defs.checks import user_errors
from gpt_pipeline.model import GPT
from gpt_pipeline.storage import atomic_write, atomic_write_text, data_dir
from gpt_pipeline.tokenizer import BPETokenizer


def _write_tokenizer(path: Path, tokenizer: BPETokenizer) -> dict[str, Path]:
    """Companions first, the main file last: its presence means the set is complete.

    The Hugging Face file is skipped (and any stale one removed) when the vocabulary cannot be
    expressed in it (two tokens with the same text, which gpt-rs's rules allow)."""
    extras = {"vocabulary_listing": path.with_suffix(".vocab.txt")}
    atomic_write_text(extras["vocabulary_listing"], tokenizer.vocab_listing())
    hf_path = path.with_suffix(".hf.json")
    try:
        atomic_write_text(hf_path, tokenizer.to_hf_json())
        extras["hugging_face_tokenizer"] = hf_path
    except ValueError:
        hf_path.unlink(missing_ok=True)
    atomic_write_text(path, tokenizer.to_json())
    return extras


def _write_parquet_frame(path: Path, frame: pl.DataFrame) -> dict[str, Path]:
    atomic_write(path, frame.write_parquet)
    return {}


def _write_parquet_table(path: Path, table: pa.Table) -> dict[str, Path]:
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return {}


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
    StoredFormat(pl.DataFrame, ".parquet", _write_parquet_frame, pl.read_parquet),
    StoredFormat(pa.Table, ".parquet", _write_parquet_table, pq.read_table),
    StoredFormat(BPETokenizer, ".json", _write_tokenizer, BPETokenizer.load),
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


class AssetFileIOManager(dg.ConfigurableIOManager):
    """Stores each asset as ``<data dir>/<asset key>.<suffix>``, atomically, with path metadata."""

    def base_dir(self) -> Path:
        return data_dir()

    def path_for(self, asset_key: dg.AssetKey, suffix: str) -> Path:
        return self.base_dir().joinpath(*asset_key.path).with_suffix(suffix)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        fmt = format_for_value(obj)
        path = self.path_for(context.asset_key, fmt.suffix)
        extras = fmt.write(path, obj)
        metadata: dict[str, Any] = {
            "path": dg.MetadataValue.path(str(path)),
            "size_bytes": dg.MetadataValue.int(path.stat().st_size),
        }
        metadata.update({name: dg.MetadataValue.path(str(p)) for name, p in extras.items()})
        context.add_output_metadata(metadata)

    def load_input(self, context: dg.InputContext) -> Any:
        fmt = format_for_type(context.dagster_type.typing_type)
        candidates = [fmt] if fmt else list(FORMATS)
        for candidate in candidates:
            path = self.path_for(context.asset_key, candidate.suffix)
            if path.exists():
                with user_errors():  # a truncated or foreign file fails the step with its own message
                    return candidate.read(path)
        key = "/".join(context.asset_key.path)
        raise FileNotFoundError(
            f"asset {key!r} has no stored file under {self.base_dir()}: materialize it first"
        )
