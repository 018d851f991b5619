"""The one IO manager: every asset is a file under a base location, named after its key.

``AssetFileIOManager`` owns all path logic of the pipeline's stored assets:
``<base>/<asset key>.<suffix>``, and ``<base>/<asset key>/<partition>.<suffix>`` for a partition
(a sweep's variant: ``data/trained_model/lr_low.safetensors``), where the base is, in order: the ``base_url`` config field,
``$GPT_PIPELINE_STORAGE_URL``, or the data directory (``$GPT_PIPELINE_DATA_DIR`` or
``<project root>/data``, see ``gpt_pipeline.storage.data_dir``). The suffix follows the value's
type (``gpt_pipeline.defs.formats``):

    polars DataFrame / Arrow table  ->  .parquet
    TableFile (a finished Parquet)  ->  .parquet (+ its companions)
    BPETokenizer                    ->  .json (+ .vocab.txt listing, + .hf.json for Hugging Face):
                                        a tokenizer bundle (``gpt_pipeline.tokenizer.bundle``)
    GPT                             ->  .safetensors (config in the safetensors metadata)

Local base (a path or ``file://`` URL): every write is atomic (temporary file in the same
directory, fsync, ``os.replace``): a reader, or a process killed mid-write, never sees half a
file, and the previous file stays until the new one is complete.

Remote base (any fsspec URL: ``s3://bucket/prefix``, ``gs://...``, ``memory://...``; S3 options
such as ``endpoint_url`` in ``storage_options`` or the usual ``AWS_*`` variables): the format
writes the value into a local staging folder, then each file is uploaded whole, companions first
and the main object last. Each object is atomic on S3/GCS, the set of files is not, and there is
no rename: see ``gpt_pipeline.remote`` for exactly what a reader can see. Loading downloads the
main object and its companions into a local scratch folder and reads them there (memory-mapped
companions need local files). Training checkpoints and scratch folders stay in the local data
directory either way.

Remote errors (missing bucket, credentials, unreachable endpoint) fail the step with one line
naming the URL. Each stored output gets ``path`` (local path or URL) and ``size_bytes`` metadata, and one path
entry per companion.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Union

import dagster as dg
from pydantic import Field
from upath import UPath

from gpt_pipeline import remote
from gpt_pipeline.defs.checks import user_errors
from gpt_pipeline.defs.variants import is_safe_name
from gpt_pipeline.defs.formats import FORMATS, StoredFormat, format_for_type, format_for_value
from gpt_pipeline.storage import StorageFault, data_dir, io_faults, scratch_dir
from gpt_pipeline.data.table_file import TableFile


@contextlib.contextmanager
def storage_failures(context: dg.OutputContext | dg.InputContext | None = None) -> Iterator[None]:
    """Re-raise a remote storage error as a ``dagster.Failure`` with its one-line message (naming
    the URL), which Dagster reports as is instead of wrapping it; retry policies still apply.
    A local storage fault (full disk, permission denied, read-only folder) names the asset too."""
    try:
        yield
    except remote.StorageError as exc:
        raise dg.Failure(description=str(exc)) from exc
    except StorageFault as exc:
        asset = context.asset_key.to_user_string() if context is not None and context.has_asset_key else "asset"
        raise dg.Failure(description=f"{asset}: {exc}", allow_retries=False) from exc


class AssetFileIOManager(dg.ConfigurableIOManager):
    """Stores each asset as ``<base>/<asset key>.<suffix>``, locally or at an fsspec URL."""

    base_url: Optional[str] = Field(
        default=None,
        description="Where assets are stored: a local folder or an fsspec URL (s3://bucket/prefix, "
        "gs://..., memory://...). Default: $GPT_PIPELINE_STORAGE_URL, else the data directory.",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options for a remote base, e.g. {endpoint_url: http://127.0.0.1:9000} "
        "for S3-compatible stores. S3 credentials also come from the usual AWS_* variables.",
    )

    def _url(self) -> Optional[str]:
        return self.base_url or remote.storage_url()

    def base_dir(self) -> Union[Path, UPath]:
        """The base location: a local ``Path``, or a ``UPath`` for a remote URL."""
        url = self._url()
        if url is None:
            return data_dir()
        if remote.is_remote(url):
            return remote.location(url, self.storage_options)
        return remote.local_path(url)

    def path_for(self, asset_key: dg.AssetKey, suffix: str, partition: str | None = None) -> Union[Path, UPath]:
        """``<base>/<key>.<suffix>``, or ``<base>/<key>/<partition>.<suffix>`` for a partition
        (partition keys of this project are safe file names: ``defs.sweeps``)."""
        if partition is not None:
            if not is_safe_name(partition):  # never a path outside the base, whoever launched the run
                raise dg.Failure(description=f"partition key {partition[:64]!r} is not a variant name: refused",
                                 allow_retries=False)
            return self.base_dir().joinpath(*asset_key.path, partition + suffix)
        return self.base_dir().joinpath(*asset_key.path).with_suffix(suffix)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        fmt = format_for_value(obj)
        partition = context.asset_partition_key if context.has_asset_partitions else None
        with storage_failures(context):
            path = self.path_for(context.asset_key, fmt.suffix, partition)
            if isinstance(path, Path):
                extras = {name: str(p) for name, p in fmt.write(path, obj).items()}
                size = path.stat().st_size
            else:
                extras, size = self._upload(fmt, path, obj)
        metadata: dict[str, Any] = {
            "path": dg.MetadataValue.path(str(path)),
            "size_bytes": dg.MetadataValue.int(size),
        }
        metadata.update({name: dg.MetadataValue.path(p) for name, p in extras.items()})
        context.add_output_metadata(metadata)

    def _upload(self, fmt: StoredFormat, dest: UPath, obj: Any) -> tuple[dict[str, str], int]:
        """Write ``obj`` into a local staging folder, then upload it (companions first)."""
        staging = scratch_dir()
        try:
            local = staging / dest.name
            written = fmt.write(local, obj)
            size = local.stat().st_size
            uploaded = remote.upload_set(local, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        by_file = {Path(url).name: url for url in uploaded.values()}
        return {name: by_file[p.name] for name, p in written.items()}, size

    def load_input(self, context: dg.InputContext) -> Any:
        partition = context.asset_partition_key if context.has_asset_partitions else None
        return self.load_stored(context.asset_key, context.dagster_type.typing_type, partition, context)

    def load_stored(self, asset_key: dg.AssetKey, typing_type: Any = None, partition: str | None = None,
                    context: dg.InputContext | None = None) -> Any:
        """The stored value of ``asset_key`` (its ``partition``), read as ``typing_type`` (any
        stored format when None): what ``load_input`` returns, for an asset that picks which
        partition to read itself (``champion_model``)."""
        fmt = format_for_type(typing_type)
        candidates = [fmt] if fmt else list(FORMATS)
        for candidate in candidates:
            with storage_failures(context):
                path = self.path_for(asset_key, candidate.suffix, partition)
                if isinstance(path, Path):
                    if path.exists():
                        # A truncated or foreign file fails the step with its own message; a
                        # storage fault (permission denied, say) names this asset and the path.
                        with io_faults(path, action="read"), user_errors():
                            return candidate.read(path)
                elif remote.exists(path):
                    return self._download(candidate, path)
        key = "/".join(asset_key.path) + (f"[{partition}]" if partition is not None else "")
        base = self.base_dir()
        if isinstance(base, Path) and not base.is_dir():  # a Failure: the step's error is this line
            raise dg.Failure(description=f"cannot load {key!r}: the data directory {base} does not exist "
                             "(vanished?)", allow_retries=False)
        raise FileNotFoundError(
            f"asset {key!r} has no stored file under {self.base_dir()}: materialize it first"
        )

    def _download(self, fmt: StoredFormat, source: UPath) -> Any:
        """Download ``source`` and its companions into a scratch folder and read them there.

        A ``TableFile`` keeps referring to the downloaded files, so its folder stays until the
        process ends (``scratch_dir`` then sweeps it); other values are read whole and their
        folder is removed at once."""
        cache = scratch_dir()
        try:
            local = remote.download_set(source, cache)
            with user_errors():
                value = fmt.read(local)
        except BaseException:
            shutil.rmtree(cache, ignore_errors=True)
            raise
        if not isinstance(value, TableFile):
            shutil.rmtree(cache, ignore_errors=True)
        return value
