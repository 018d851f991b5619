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

from pathlib import Path
from typing import Any

import dagster as dg

from gpt_pipeline.defs.checks import user_errors
from gpt_pipeline.defs.formats import FORMATS, format_for_type, format_for_value
from gpt_pipeline.storage import data_dir


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
