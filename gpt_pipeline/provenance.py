"""Provenance: the content each stored asset was made from, and the refusal of inputs that do not
belong together.

Every stored asset records the content digests of the inputs it was made from, in the file itself:

    raw_stories         (a source: made from no stored asset)
    bpe_tokenizer       raw_stories                                  tokenizer JSON "provenance"
    tokenized_dataset   raw_stories, bpe_tokenizer                   Parquet footer key-value
    trained_model       tokenized_dataset, bpe_tokenizer[, initial_checkpoint]   safetensors metadata
    sample_generations  trained_model, bpe_tokenizer                 Parquet footer key-value

The record is JSON ``{"asset": ..., "digest": ..., "inputs": {name: digest}}`` under the key
``gpt_pipeline.provenance`` (``"provenance"`` in the tokenizer JSON). Each content digest is cheap
and the same for the same content (sha256, hex):

- stories: their text column, streamed (``data.story_files.TextDigest``, kept in the footer);
- tokenizer: its alphabet and merges (``tokenizer.fileformat.digest``): the JSON around them may change;
- tokenized dataset: its token arrays (``data.dataset_files``'s digest, kept in the footer);
- model: its weights, tensor by tensor in name order (kept in the safetensors metadata);
- generations: their rows.

``check_inputs`` compares what the inputs of one step recorded about each other with what is
stored now, and raises ``ProvenanceError`` (a ``ValueError``) with one line naming both digests,
both assets and what to rematerialize, before any work. A file written before provenance was
recorded records nothing to compare: it is accepted, with a warning (returned, for the caller to
log) that says which asset to rematerialize to record it.

Values carry their record in a ``provenance`` attribute (a JSON-able dict): the tokenizer and
checkpoint readers set it from the file and their writers store it (``BPETokenizer.to_json``,
``training.checkpoint``); Parquet files keep theirs in the footer. No Dagster here: the assets
turn a ``Provenance`` into metadata and a data version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from gpt_pipeline.data.dataset_files import DIGEST_KEY
from gpt_pipeline.data.splits import TEXT_COLUMN
from gpt_pipeline.data.story_files import TEXT_DIGEST_KEY, TextDigest
from gpt_pipeline.data.table_file import TableFile
from gpt_pipeline.tokenizer import fileformat

PROVENANCE_KEY = "gpt_pipeline.provenance"  # Parquet footer and safetensors metadata key
ATTRIBUTE = "provenance"  # the attribute of a value that carries its record (a dict)
SOURCES = frozenset({"raw_stories"})  # assets made from no stored asset
SHORT = 12  # hex digits of a digest shown in messages
_VERBS = {"raw_stories": "made from", "bpe_tokenizer": "made with", "tokenized_dataset": "trained on",
          "trained_model": "made by", "initial_checkpoint": "started from"}
_SPECIAL_VERBS = {("bpe_tokenizer", "raw_stories"): "trained on",
                  ("tokenized_dataset", "bpe_tokenizer"): "encoded by",
                  ("trained_model", "bpe_tokenizer"): "trained with"}


class ProvenanceError(ValueError):
    """Stored inputs that were not made from each other; the message is one line."""


@dataclass(frozen=True)
class Provenance:
    """What one stored asset is (``digest``) and what it was made from (``inputs``: name -> digest;
    ``None`` when its file records nothing, having been written before provenance was recorded)."""

    asset: str
    digest: str
    inputs: Mapping[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"asset": self.asset, "digest": self.digest, "inputs": dict(sorted((self.inputs or {}).items()))}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def metadata(self) -> dict[str, str]:
        """Flat text entries for an asset's metadata: ``content_digest`` and ``made_from.<input>``."""
        entries = {"content_digest": self.digest}
        entries.update({f"made_from.{name}": digest for name, digest in sorted((self.inputs or {}).items())})
        return entries


def short(digest: str | None) -> str:
    return (digest or "none")[:SHORT]


# --- digests ------------------------------------------------------------------------------------


def tokenizer_digest(tokenizer) -> str:
    """The digest of a tokenizer's alphabet and merges (not of the file around them)."""
    return fileformat.digest(tokenizer.alphabet, tokenizer.merges)


def weights_digest(weights) -> str:
    """sha256 over a model's weights (the model or its ``state_dict()``): name, dtype, shape and
    bytes of each tensor, in name order; the same for the same weights whatever file, device or
    run they come from (the provenance records and the MLflow registry's tag alike).

    Example:
        >>> import torch
        >>> a = {"w": torch.ones(2, 3), "b": torch.zeros(3)}
        >>> weights_digest(a) == weights_digest({"b": torch.zeros(3), "w": torch.ones(2, 3)})
        True
        >>> weights_digest(a) == weights_digest({**a, "b": torch.full((3,), 1e-9)})
        False
    """
    import torch

    state = weights.state_dict() if hasattr(weights, "state_dict") else weights
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def frame_digest(frame) -> str:
    """sha256 over a (small) polars DataFrame's column names and values."""
    text = json.dumps(frame.to_dict(as_series=False), sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: str | Path) -> str:
    """sha256 over a file's bytes (``hashlib.file_digest``: read in chunks)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def table_digest(table_file: TableFile) -> str:
    """The digest of a stored Parquet file: the one in its footer (the dataset's token arrays,
    the stories' text), else computed by streaming its text column, else its bytes."""
    footer = pq.read_metadata(table_file.path).metadata or {}
    for key in (DIGEST_KEY, TEXT_DIGEST_KEY.encode()):
        if key in footer:
            return footer[key].decode()
    if TEXT_COLUMN in table_file.schema.names:
        digest = TextDigest()
        for batch in table_file.iter_batches([TEXT_COLUMN]):
            digest.update(batch.column(0))
        return digest.hexdigest()
    return file_digest(table_file.path)


# --- records ------------------------------------------------------------------------------------


def made(asset: str, digest: str, inputs: Mapping[str, Provenance | str]) -> Provenance:
    """The record of a new asset made from ``inputs`` (their ``Provenance`` or digest)."""
    return Provenance(asset, digest, {n: p.digest if isinstance(p, Provenance) else p for n, p in inputs.items()})


def attach(value: Any, record: Provenance) -> Any:
    """Set ``value``'s ``provenance`` attribute (what its writer stores); returns ``value``."""
    object.__setattr__(value, ATTRIBUTE, record.to_dict())
    return value


def footer(record: Provenance) -> dict[str, str]:
    """Parquet key-value metadata holding ``record`` (its digest may be empty: a Parquet file
    written as a stream keeps its own digest in the footer beside it)."""
    return {PROVENANCE_KEY: record.to_json()}


def _inputs(asset: str, recorded: Any) -> Mapping[str, str] | None:
    if asset in SOURCES:
        return {}
    if isinstance(recorded, (str, bytes)):
        try:
            recorded = json.loads(recorded)
        except ValueError:
            return None
    inputs = recorded.get("inputs") if isinstance(recorded, Mapping) else None
    return dict(inputs) if isinstance(inputs, Mapping) else None


def of(value: Any, asset: str) -> Provenance:
    """The stored ``asset``'s record: a ``TableFile`` (footer), a tokenizer, a model or a frame."""
    if isinstance(value, TableFile):
        footer_entries = pq.read_metadata(value.path).metadata or {}
        return Provenance(asset, table_digest(value), _inputs(asset, footer_entries.get(PROVENANCE_KEY.encode())))
    recorded = getattr(value, ATTRIBUTE, None)
    if hasattr(value, "merges") and hasattr(value, "alphabet"):
        digest = tokenizer_digest(value)
    elif isinstance(recorded, Mapping) and recorded.get("digest"):
        digest = recorded["digest"]  # a model records its own weights' digest
    elif hasattr(value, "state_dict"):
        digest = weights_digest(value)
    else:
        digest = frame_digest(value)
    return Provenance(asset, digest, _inputs(asset, recorded))


def of_checkpoint(path: str | Path, asset: str = "initial_checkpoint") -> Provenance:
    """The record a checkpoint file keeps in its header (reading only that); a file that records
    none gets its bytes' digest and no inputs."""
    from gpt_pipeline.training.checkpoint import read_checkpoint_metadata

    recorded = read_checkpoint_metadata(path).get(PROVENANCE_KEY)
    try:
        data = json.loads(recorded) if recorded else {}
    except ValueError:
        data = {}
    digest = data.get("digest") if isinstance(data, dict) else None
    if not digest:
        return Provenance(asset, file_digest(path), None)
    return Provenance(asset, digest, _inputs(asset, data))


# --- checks -------------------------------------------------------------------------------------


def _verb(made_thing: str, source: str) -> str:
    return _SPECIAL_VERBS.get((made_thing, source)) or _VERBS.get(source, "made from")


def check_inputs(
    asset: str,
    inputs: Mapping[str, Provenance],
    labels: Mapping[str, str] | None = None,
    remedy: str | None = None,
) -> list[str]:
    """Refuse inputs of ``asset`` that were not made from each other; return warnings.

    For every input that recorded the digest of another input, the two must agree: else
    ``ProvenanceError`` with one line (``labels`` names inputs in it; ``remedy`` replaces the
    default "rematerialize <stale input>, then <asset>"). An input whose file records nothing
    (written before provenance was recorded) is accepted with a warning.

    Example:
        >>> tok = Provenance("bpe_tokenizer", "9c41" + "0" * 60, {"raw_stories": "aa" * 32})
        >>> data = Provenance("tokenized_dataset", "77" * 32, {"bpe_tokenizer": "3f2a" + "0" * 60})
        >>> check_inputs("trained_model", {"tokenized_dataset": data, "bpe_tokenizer": tok})
        Traceback (most recent call last):
        ...
        gpt_pipeline.provenance.ProvenanceError: trained_model refused: tokenized_dataset was encoded by bpe_tokenizer 3f2a00000000, but the stored bpe_tokenizer is 9c4100000000: rematerialize tokenized_dataset, then trained_model
    """
    labels = labels or {}
    name_of = lambda n: labels.get(n, n)  # noqa: E731
    warnings = []
    for name, record in inputs.items():
        others = {n: p for n, p in inputs.items() if n != name}
        if record.inputs is None:
            if others:
                warnings.append(
                    f"{name_of(name)} records no provenance (written before it was recorded): not checked "
                    f"against {', '.join(name_of(n) for n in sorted(others))}; rematerialize it to record it"
                )
            continue
        for other, other_record in others.items():
            recorded = record.inputs.get(other)
            if recorded is not None and recorded != other_record.digest:
                fix = remedy or f"rematerialize {name}, then {asset}"
                raise ProvenanceError(
                    f"{asset} refused: {name_of(name)} was {_verb(name, other)} {name_of(other)} {short(recorded)}, "
                    f"but the stored {name_of(other)} is {short(other_record.digest)}: {fix}"
                )
    return warnings
