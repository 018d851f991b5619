"""The tokenizer bundle: the files one trained tokenizer is stored as, wherever it is stored.

A bundle is three files named after one stem, side by side:

    <stem>.json       our tokenizer (gpt-pipeline-bpe JSON, ``fileformat``): the file that is read
    <stem>.vocab.txt  the vocabulary listing, for people
    <stem>.hf.json    the same tokenizer as a Hugging Face tokenizer.json (``huggingface``), for
                      ``tokenizers.Tokenizer.from_file``; absent when two tokens share a text

In a folder the stem is ``bpe_tokenizer`` (the asset's name): the CLI's dataset folder, the MLflow
artifact ``tokenizer/``, a pyfunc model's artifacts (which carry the main file only). The IO
manager stores the asset ``bpe_tokenizer`` as the same three files in its data directory
(companions are ``<stem>.<name>`` there, as every companion file). ``interop.hf``'s Hugging Face
model directory is not a bundle: its ``tokenizer.json`` is the name ``transformers`` looks for.

``write_bundle`` is the one writer: each file atomically, the companions first and ours last, so
that its presence means the bundle is complete; a Hugging Face file left by an earlier tokenizer
is removed when the new one cannot be expressed in it. ``read_bundle`` is the one reader: it
needs only ours. Folders written before bundles existed (``gpt-pipeline tokenize`` and
``import-gpt-rs`` stored ours as ``tokenizer.json``) still load; a Hugging Face file where ours is
expected fails with one line saying so. This module knows nothing of Dagster or MLflow.

Example:
    >>> import tempfile
    >>> from gpt_pipeline.tokenizer import BPETokenizer
    >>> folder = Path(tempfile.mkdtemp())
    >>> written = write_bundle(BPETokenizer.train(["the cat"], 8), folder)
    >>> [path.name for path in written.values()]
    ['bpe_tokenizer.vocab.txt', 'bpe_tokenizer.hf.json', 'bpe_tokenizer.json']
    >>> read_bundle(folder).vocab_size
    8
"""

from __future__ import annotations

import os
from pathlib import Path

from gpt_pipeline.storage import atomic_write_text
from gpt_pipeline.tokenizer.bpe import BPETokenizer

STEM = "bpe_tokenizer"  # the bundle's name in a folder
SUFFIX = ".json"  # our file: <stem>.json
FILE_NAME = STEM + SUFFIX  # our file in a folder: bpe_tokenizer.json
COMPANIONS = {"vocabulary_listing": "vocab.txt", "hugging_face_tokenizer": "hf.json"}  # role: <stem>.<name>
TOKENIZER = "tokenizer"  # the role of our file
LEGACY_FILE = "tokenizer.json"  # ours, in folders that `tokenize` and `import-gpt-rs` wrote before bundles


def bundle_path(location: str | os.PathLike) -> Path:
    """Our file of the bundle at ``location``: a folder's ``bpe_tokenizer.json``, or ``location``
    itself when it names a ``.json`` file (the IO manager's ``<asset key>.json``).

    Example:
        >>> str(bundle_path("out")), str(bundle_path("data/bpe_tokenizer.json"))
        ('out/bpe_tokenizer.json', 'data/bpe_tokenizer.json')
        >>> bundle_path("data/bpe_tokenizer.hf.json")
        Traceback (most recent call last):
        ...
        ValueError: data/bpe_tokenizer.hf.json is the Hugging Face copy in a tokenizer bundle: give its data/bpe_tokenizer.json (our format) or its folder
    """
    path = Path(location)
    hf_suffix = "." + COMPANIONS["hugging_face_tokenizer"]
    if path.name.endswith(hf_suffix) and not path.is_dir():
        ours = path.with_name(path.name[: -len(hf_suffix)] + SUFFIX)
        raise ValueError(f"{path} is the Hugging Face copy in a tokenizer bundle: give its {ours} "
                         "(our format) or its folder")
    if path.suffix == SUFFIX and not path.is_dir():
        return path
    return path / FILE_NAME


def bundle_files(location: str | os.PathLike) -> dict[str, Path]:
    """Every file of the bundle at ``location`` by role: ``tokenizer`` (ours),
    ``vocabulary_listing`` and ``hugging_face_tokenizer``.

    Example:
        >>> {role: path.name for role, path in bundle_files("data/tok.json").items()}
        {'tokenizer': 'tok.json', 'vocabulary_listing': 'tok.vocab.txt', 'hugging_face_tokenizer': 'tok.hf.json'}
    """
    main = bundle_path(location)
    stem = main.name[: -len(SUFFIX)]
    return {TOKENIZER: main, **{role: main.with_name(f"{stem}.{name}") for role, name in COMPANIONS.items()}}


def write_bundle(tokenizer: BPETokenizer, location: str | os.PathLike) -> dict[str, Path]:
    """Write the bundle of ``tokenizer`` at ``location`` (a folder, created if needed, or the path
    of our ``.json`` file); return the files written by role, in the order written (ours last).

    Each file is written atomically; equal tokenizers give byte-identical files. The Hugging Face
    file is skipped, and a stale one removed, when the vocabulary cannot be expressed in it (two
    tokens with the same text, which gpt-rs's rules allow).
    """
    files = bundle_files(location)
    written = {"vocabulary_listing": atomic_write_text(files["vocabulary_listing"], tokenizer.vocab_listing())}
    try:
        hugging_face = tokenizer.to_hf_json()
    except ValueError:
        files["hugging_face_tokenizer"].unlink(missing_ok=True)
    else:
        written["hugging_face_tokenizer"] = atomic_write_text(files["hugging_face_tokenizer"], hugging_face)
    written[TOKENIZER] = atomic_write_text(files[TOKENIZER], tokenizer.to_json())
    return written


def find_bundle(location: str | os.PathLike) -> Path | None:
    """The file ``read_bundle`` reads at ``location``: our ``bundle_path``, or in a folder without
    one an earlier version's ``tokenizer.json``; ``None`` when there is neither."""
    main = bundle_path(location)
    if main.is_file():
        return main
    legacy = Path(location) / LEGACY_FILE
    return legacy if Path(location).is_dir() and legacy.is_file() else None


def read_bundle(location: str | os.PathLike) -> BPETokenizer:
    """The tokenizer of the bundle at ``location`` (a folder, or the path of our ``.json`` file).

    A missing bundle raises ``FileNotFoundError``, a file that is not ours (a Hugging Face
    ``tokenizer.json`` included) ``ValueError``: one line naming the file.
    """
    path = find_bundle(location)
    if path is None:
        raise FileNotFoundError(f"no tokenizer at {os.fspath(location)!r}: expected {str(bundle_path(location))!r}")
    return BPETokenizer.load(path)
