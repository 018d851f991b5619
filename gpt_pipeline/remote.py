"""Files in remote storage: any fsspec URL (``s3://``, ``gs://``, ``memory://``...) through
universal_pathlib's ``UPath``.

This module uploads finished local files and downloads stored ones; it does not know about
Dagster, MLflow or file formats (the IO manager writes and reads local files with the formats,
then hands them to this module). Training checkpoints and scratch folders always stay on local
disk (``gpt_pipeline.storage``); only stored assets may live remotely.

What is atomic, and what is not:

* One object is atomic on object stores. Each file goes up as ONE upload of a complete local
  file (a single PUT; on S3 a file over 2 x 50 MiB goes as a multipart upload, which is likewise
  invisible until it completes). S3 and GCS make an object visible only when its upload
  completes, so a reader sees the previous object or the new one, never half of one; an upload
  that fails or is killed leaves the previous object in place (a killed multipart upload leaves
  invisible parts behind: give the bucket an AbortIncompleteMultipartUpload lifecycle rule).
* A set of files is NOT atomic as a whole, and there is no rename. A stored value is a main
  object plus companions named ``<stem>.<name>``; companions go up first and the main object
  last (its new version means the set is complete), then stored companions the new set no
  longer has are deleted. Readers fetch the main object first, then the companions they list
  beside it. A reader that overlaps a write can still get companions of a newer version than
  its main object, or a leftover companion of the previous version. Run one writer per asset
  at a time and do not read an asset while it is being written.
* Stores other than object stores (``sftp://``, ``ftp://``, WebDAV...) may write in place: a
  killed upload can leave half a file there. ``memory://`` lives in this process only (tests).

Errors (missing bucket, bad credentials, an unreachable endpoint) raise :class:`StorageError`,
one line naming the URL. S3 retries are capped (3 attempts, 3 s to connect), so an unreachable
endpoint fails within seconds instead of minutes.

Example:
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.json").write_text("{}"); _ = (folder / "a.vocab.txt").write_text("x")
    >>> dest = location("memory://example/assets") / "a.json"
    >>> upload_set(folder / "a.json", dest)
    {'vocab.txt': 'memory://example/assets/a.vocab.txt'}
    >>> local = download_set(dest, pathlib.Path(tempfile.mkdtemp()))
    >>> local.name, sorted(p.name for p in local.parent.iterdir())
    ('a.json', ['a.json', 'a.vocab.txt'])
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fsspec.utils import get_protocol
from upath import UPath

STORAGE_URL_ENV = "GPT_PIPELINE_STORAGE_URL"
LOCAL_PROTOCOLS = ("file", "local")
S3_PROTOCOLS = ("s3", "s3a")
# Bounded retries for S3: connection refused fails in about 2 s, a silent endpoint in about 10 s.
S3_DEFAULT_CONFIG = {"connect_timeout": 3, "retries": {"total_max_attempts": 3, "mode": "standard"}}


class StorageError(OSError):
    """A remote storage operation failed; the message is one line naming the URL."""


def storage_url() -> str | None:
    """``$GPT_PIPELINE_STORAGE_URL`` when set (and not empty), else ``None``."""
    return os.environ.get(STORAGE_URL_ENV) or None


def is_remote(url: str) -> bool:
    """Whether ``url`` names remote storage (any fsspec protocol other than local files).

    Example:
        >>> is_remote("s3://bucket/prefix"), is_remote("/data"), is_remote("file:///data")
        (True, False, False)
    """
    return get_protocol(url) not in LOCAL_PROTOCOLS


def local_path(url: str) -> Path:
    """The local folder that a local path or ``file://`` URL names, absolute.

    Example:
        >>> str(local_path("file:///tmp/assets")), str(local_path("/tmp/assets"))
        ('/tmp/assets', '/tmp/assets')
    """
    path = url.removeprefix("file://") if url.startswith("file://") else url.removeprefix("local://")
    return Path(path).expanduser().resolve()


def location(url: str, storage_options: Mapping[str, Any] | None = None) -> UPath:
    """``UPath`` for remote ``url`` with its storage options.

    For S3, the endpoint comes from ``storage_options["endpoint_url"]``, else
    ``$AWS_ENDPOINT_URL_S3`` or ``$AWS_ENDPOINT_URL``; credentials from the options or botocore's
    usual chain (``$AWS_ACCESS_KEY_ID``/``$AWS_SECRET_ACCESS_KEY``, ``~/.aws``, instance roles);
    retries and connect timeout are capped unless ``config_kwargs`` says otherwise.

    Example:
        >>> str(location("memory://bucket/prefix") / "raw_stories.parquet")
        'memory://bucket/prefix/raw_stories.parquet'
    """
    if not is_remote(url):
        raise ValueError(f"storage URL {url!r} is a local path, not a remote location")
    options = copy.deepcopy(dict(storage_options or {}))
    if get_protocol(url) in S3_PROTOCOLS:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in options and "endpoint_url" not in options.get("client_kwargs", {}):
            options["endpoint_url"] = endpoint
        config = options.setdefault("config_kwargs", {})
        for key, value in S3_DEFAULT_CONFIG.items():
            config.setdefault(key, copy.deepcopy(value))
    try:
        return UPath(url, **options)
    except (ImportError, ValueError, TypeError) as exc:
        raise StorageError(f"cannot open storage URL {url!r}: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def _storage_errors(action: str, url: UPath | str) -> Iterator[None]:
    """Re-raise any failure of the store as one ``StorageError`` line naming ``url``."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:  # botocore, aiohttp and fsspec raise many unrelated types
        kind = type(exc).__name__
        raise StorageError(f"cannot {action} {str(url)!r}: {kind}: {_one_line(exc)}") from exc


def exists(url: UPath) -> bool:
    """Whether the object ``url`` exists (a missing bucket counts as missing)."""
    with _storage_errors("check", url):
        url.fs.invalidate_cache(url.parent.path)  # another process may have written since
        return url.exists()


def upload(source: Path, dest: UPath) -> None:
    """Upload the complete local file ``source`` to ``dest`` in one upload (see the module)."""
    with _storage_errors("upload to", dest):
        dest.fs.put_file(str(source), dest.path)


def download(source: UPath, dest: Path) -> Path:
    """Download the object ``source`` to the local file ``dest`` (its folder must be private)."""
    with _storage_errors("download", source):
        source.fs.get_file(source.path, str(dest))
    return dest


def companions(main: UPath) -> list[UPath]:
    """The stored companions of ``main``: objects beside it named ``<stem>.<name>``."""
    prefix = main.stem + "."
    with _storage_errors("list", main.parent):
        main.fs.invalidate_cache(main.parent.path)
        if not main.parent.exists():
            return []
        return sorted(
            (p for p in main.parent.iterdir() if p.name.startswith(prefix) and p.name != main.name and p.is_file()),
            key=lambda p: p.name,
        )


def upload_set(main: Path, dest: UPath) -> dict[str, str]:
    """Upload local ``main`` and its companions ``<stem>.*`` beside it to ``dest`` (and beside
    it): companions first, the main object last, then delete stored companions of ``dest`` that
    the new set does not have. Returns the uploaded companions' URLs by name."""
    prefix = main.stem + "."
    local = sorted(
        p for p in main.parent.glob(f"{main.stem}.*")
        if p != main and p.is_file() and not p.name.startswith(".")
    )
    uploaded = {}
    for path in local:
        target = dest.with_name(dest.stem + path.name[len(main.stem):])
        upload(path, target)
        uploaded[path.name[len(prefix):]] = str(target)
    upload(main, dest)
    for stale in companions(dest):
        if str(stale) not in uploaded.values():
            with _storage_errors("delete", stale):
                stale.unlink(missing_ok=True)
    return uploaded


def download_set(main: UPath, folder: Path) -> Path:
    """Download ``main`` and its stored companions into the local ``folder``; return the local
    main file (same names as stored, so that readers find the companions beside it)."""
    local = download(main, folder / main.name)  # first: its companions were uploaded before it
    for companion in companions(main):
        download(companion, folder / companion.name)
    return local
