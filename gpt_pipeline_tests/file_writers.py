"""Writers of the files the tests read: gpt-rs's files (to import them back) and the embedded
corpus as a Parquet file. The package itself never writes these."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.torch import save_file

from gpt_pipeline.data.corpus import DEFAULT_NUM_STORIES, iter_story_batches
from gpt_pipeline.interop.gpt_rs import _head_name, _renames
from gpt_pipeline.interop.gpt_rs_files import train_config_to_ron, transformer_config_to_ron
from gpt_pipeline.model.gpt import GPT, GPTConfig
from gpt_pipeline.storage import atomic_write, atomic_write_text
from gpt_pipeline.training.checkpoint import _config_from_metadata, read_checkpoint_metadata
from gpt_pipeline.training.config import TrainConfig


def save_gpt_rs_checkpoint(path: str | os.PathLike, model: GPT) -> Path:
    """Write ``model`` as gpt-rs would (per-head names, no metadata), atomically."""
    config = model.config
    ours = {name: t.detach().to("cpu") for name, t in model.state_dict().items()}
    tensors = {theirs: ours[name].contiguous() for name, theirs in _renames(config).items()}
    C, hs = config.embedding_size, config.head_size
    for i in range(config.block_count):
        for kind in ("weight", "bias"):
            fused = ours[f"blocks.{i}.attention.qkv.{kind}"]  # [3C, C] or [3C]
            for p, part in enumerate(("query", "key", "value")):
                for h in range(config.head_count):
                    rows = fused[p * C + h * hs : p * C + (h + 1) * hs]  # [hs, C] or [hs]
                    tensors[_head_name(i, h, part, kind)] = rows.clone().contiguous()
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


def write_transformer_config(path: str | os.PathLike, config: GPTConfig) -> Path:
    return atomic_write_text(path, transformer_config_to_ron(config))


def write_train_config(path: str | os.PathLike, config: TrainConfig) -> Path:
    return atomic_write_text(path, train_config_to_ron(config))


def read_checkpoint_config(path: str | os.PathLike) -> GPTConfig:
    """The ``GPTConfig`` stored in a checkpoint, reading only its header."""
    return _config_from_metadata(Path(path), read_checkpoint_metadata(path))


def write_corpus_parquet(
    path: str | os.PathLike, num_stories: int = DEFAULT_NUM_STORIES, seed: int = 0
) -> Path:
    """Write the corpus atomically as a Parquet file with one ``text`` column; returns ``path``.

    Stories are generated and written in row groups of ``PARQUET_BATCH``, so that a large corpus
    never has to fit in memory as one list.
    """
    schema = pa.schema([("text", pa.string())])
    batches = iter_story_batches(num_stories, seed)  # validates num_stories before any file is made

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch in batches:
                writer.write_table(pa.table({"text": pa.array(batch, pa.string())}, schema=schema))
            if num_stories == 0:
                writer.write_table(schema.empty_table())

    return atomic_write(path, write)
