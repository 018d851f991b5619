"""gpt-rs's ``.ron`` files as our objects, and back; and the import of a whole gpt-rs run.

What it reads (and writes, in the shape gpt-rs's serde gives them):

- the dataset file (``datasets/dataset_<vocab>_<name>.ron``): a struct holding ``char_to_id``
  (map char -> id), ``id_to_char`` (map id -> char), ``mergings`` (list of
  ``(from: (a, b), to: id)``) and ``encoded_data`` (one list of ids per story) -> a
  ``BPETokenizer`` and the token lists;
- ``transformer_config.ron`` -> ``GPTConfig`` (same field names);
- ``train_config.ron`` -> ``TrainConfig`` (gpt-rs's five fields; ours keep their defaults).

``import_gpt_rs_run`` turns the three files and a gpt-rs checkpoint into what our CLI and assets
use: ``bpe_tokenizer.json`` (a tokenizer bundle), ``dataset.parquet``, ``model.safetensors`` (our checkpoint, config
inside) and ``run_config.yaml``. gpt-rs gives the alphabet ids in ascending code point order, as
we do, so every id keeps its meaning and the weights need no permutation; a file whose ids are
in another order is refused. The checkpoint tensors themselves are mapped by
``gpt_pipeline.interop.gpt_rs``; RON itself is parsed by ``gpt_pipeline.interop.ron``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from gpt_pipeline.data.config import DatasetConfig
from gpt_pipeline.interop import ron, ron_write
from gpt_pipeline.interop.ron import Char, RonStruct
from gpt_pipeline.model.gpt import GPTConfig
from gpt_pipeline.storage import atomic_write_text
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline.tokenizer.bundle import FILE_NAME, write_bundle
from gpt_pipeline.training.loop import TrainConfig

DATASET_FIELDS = ("char_to_id", "id_to_char", "mergings", "encoded_data")
TRAIN_CONFIG_FIELDS = ("learning_rate", "training_iterations", "evaluation_interval",
                       "evaluation_iterations", "contexts_per_batch")  # gpt-rs's train_config.ron


@dataclass
class GptRsDataset:
    """A gpt-rs dataset file: its tokenizer and its encoded stories (ids, one list per story)."""

    tokenizer: BPETokenizer
    encoded_data: list[list[int]]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fields(value: object, path: Path, what: str) -> dict:
    if not isinstance(value, dict):
        kind = type(value).__name__
        raise ValueError(f"{path}: a {what} must be a RON struct (field: value, ...), got {kind}")
    return value


# --- the dataset file --------------------------------------------------------------------------


def _alphabet(char_to_id: object, id_to_char: object, path: Path) -> list[str]:
    """The alphabet (ids 0..n-1) after checking that both maps agree and are in code point order.

    Example:
        >>> _alphabet({"b": 1, "a": 0}, {0: "a", 1: "b"}, Path("d.ron"))
        ['a', 'b']
    """
    for name, mapping in (("char_to_id", char_to_id), ("id_to_char", id_to_char)):
        if not isinstance(mapping, dict) or not mapping:
            raise ValueError(f"{path}: {name} must be a non-empty map, got {mapping!r:.60}")
    for char, token in char_to_id.items():
        if not (isinstance(char, str) and len(char) == 1 and _is_int(token)):
            raise ValueError(f"{path}: char_to_id must map chars to ids, found {char!r}: {token!r}")
    inverse = {token: char for char, token in char_to_id.items()}
    if inverse != id_to_char:
        diff = sorted(set(inverse.items()) ^ set(id_to_char.items()), key=repr)[:3]
        raise ValueError(f"{path}: char_to_id and id_to_char disagree, e.g. on {diff}")
    if sorted(inverse) != list(range(len(inverse))):
        raise ValueError(f"{path}: character ids must be 0..{len(inverse) - 1}, got {sorted(inverse)[:8]}...")
    alphabet = [inverse[i] for i in range(len(inverse))]
    for i in range(1, len(alphabet)):
        if alphabet[i] <= alphabet[i - 1]:
            raise ValueError(
                f"{path}: character ids are not in ascending code point order ({alphabet[i - 1]!r} = "
                f"{i - 1}, {alphabet[i]!r} = {i}); gpt_pipeline's tokenizer needs that order"
            )
    return alphabet


def _merges(mergings: object, alphabet_size: int, path: Path) -> list[tuple[int, int]]:
    """The merges in the order they were learnt (by the id they make), checked to be n, n+1, ...

    Accepts gpt-rs's ``[(from: (a, b), to: id)]`` and, to be lenient, ``[((a, b), id)]`` or
    ``{(a, b): id}``.

    Example:
        >>> _merges([{"from": (0, 2), "to": 3}, {"from": (0, 1), "to": 2}], 2, Path("d.ron"))
        [(0, 1), (0, 2)]
    """
    if isinstance(mergings, dict) and not isinstance(mergings, RonStruct):
        entries = list(mergings.items())
    elif isinstance(mergings, list):
        entries = []
        for k, entry in enumerate(mergings):
            if isinstance(entry, dict) and set(entry) == {"from", "to"}:
                entries.append((entry["from"], entry["to"]))
            elif isinstance(entry, tuple) and len(entry) == 2:
                entries.append(entry)
            else:
                raise ValueError(f"{path}: mergings[{k}] must be (from: (a, b), to: id), got {entry!r:.80}")
    else:
        kind = type(mergings).__name__
        raise ValueError(f"{path}: mergings must be a list of (from: (a, b), to: id), got {kind}")
    merges: dict[int, tuple[int, int]] = {}
    for pair, token in entries:
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(map(_is_int, pair)) and _is_int(token)):
            raise ValueError(
                f"{path}: a merging must be (from: (a, b), to: id) with integer ids, got {pair!r} -> {token!r}"
            )
        if token in merges:
            raise ValueError(f"{path}: two mergings make token {token}")
        merges[token] = pair
    expected = list(range(alphabet_size, alphabet_size + len(merges)))
    if sorted(merges) != expected:
        raise ValueError(
            f"{path}: merged token ids must be {alphabet_size}..{alphabet_size + len(merges) - 1} "
            f"(after the {alphabet_size} characters), got {sorted(merges)[:5]}..."
        )
    return [merges[token] for token in expected]


def dataset_from_ron(value: object, path: str | os.PathLike = "<dataset>") -> GptRsDataset:
    """The tokenizer and encoded stories of a parsed gpt-rs dataset file.

    Example:
        >>> d = dataset_from_ron(ron.loads("(char_to_id: {'a': 0, 'b': 1}, id_to_char: {0: 'a', "
        ...     "1: 'b'}, mergings: [(from: (0, 1), to: 2)], encoded_data: [[2, 0], [1]])"))
        >>> d.tokenizer.decode([2, 0]), d.encoded_data
        ('aba', [[2, 0], [1]])
    """
    path = Path(path)
    fields = _fields(value, path, "dataset file")
    missing = [name for name in DATASET_FIELDS if name not in fields]
    if missing:
        raise ValueError(f"{path}: not a gpt-rs dataset file, it lacks {missing} (has {sorted(fields)[:6]})")
    alphabet = _alphabet(fields["char_to_id"], fields["id_to_char"], path)
    merges = _merges(fields["mergings"], len(alphabet), path)
    try:
        tokenizer = BPETokenizer(alphabet, merges)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    encoded = fields["encoded_data"]
    if not isinstance(encoded, list):
        raise ValueError(f"{path}: encoded_data must be a list of lists of token ids")
    vocab = tokenizer.vocab_size
    for k, ids in enumerate(encoded):
        if not isinstance(ids, list) or not all(type(i) is int for i in ids):
            raise ValueError(f"{path}: encoded_data[{k}] is not a list of integer token ids: {ids!r:.60}")
        if ids and (min(ids) < 0 or max(ids) >= vocab):
            bad = min(ids) if min(ids) < 0 else max(ids)
            raise ValueError(f"{path}: encoded_data[{k}] holds {bad}, not a token id below {vocab}")
    return GptRsDataset(tokenizer, encoded)


def read_dataset(path: str | os.PathLike) -> GptRsDataset:
    """Read gpt-rs's dataset ``.ron`` file (``RonError``/``ValueError`` name the problem)."""
    return dataset_from_ron(ron.load(_existing(path)), path)


def dataset_to_ron(tokenizer: BPETokenizer, encoded_data: list[list[int]]) -> str:
    """gpt-rs's dataset file for ``tokenizer`` and ``encoded_data``.

    Example:
        >>> print(dataset_to_ron(BPETokenizer(["a", "b"], [(0, 1)]), [[2]]), end="")
        (
            char_to_id: {'a': 0, 'b': 1},
            id_to_char: {0: 'a', 1: 'b'},
            mergings: [
                (from: (0, 1), to: 2),
            ],
            encoded_data: [
                [2],
            ],
        )
    """
    alphabet = tokenizer.alphabet
    n = len(alphabet)
    value = RonStruct({
        "char_to_id": {Char(c): i for i, c in enumerate(alphabet)},
        "id_to_char": {i: Char(c) for i, c in enumerate(alphabet)},
        "mergings": [RonStruct({"from": pair, "to": n + k}) for k, pair in enumerate(tokenizer.merges)],
        "encoded_data": [[int(i) for i in ids] for ids in encoded_data],
    })
    return ron_write.dumps(value) + "\n"


def write_dataset(path: str | os.PathLike, tokenizer: BPETokenizer, encoded_data: list[list[int]]) -> Path:
    """Write ``dataset_to_ron`` to ``path`` atomically."""
    return atomic_write_text(path, dataset_to_ron(tokenizer, encoded_data))


# --- configs -----------------------------------------------------------------------------------


def _float_fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.type in ("float", float)}


def transformer_config_from_ron(value: object, path: str | os.PathLike = "<transformer config>") -> GPTConfig:
    """``GPTConfig`` from a parsed ``transformer_config.ron`` (every field required).

    Example:
        >>> transformer_config_from_ron(ron.loads("(vocab_size: 50, embedding_size: 8, "
        ...     "context_length: 4, head_count: 2, block_count: 1, feed_forward_multiplier: 2, "
        ...     "embedding_dropout: 0, attention_dropout: 0.1, feed_forward_dropout: 0.0, "
        ...     "residual_dropout: 0.0)")).embedding_dropout
        0.0
    """
    path = Path(path)
    fields = dict(_fields(value, path, "transformer config"))
    for name in _float_fields(GPTConfig) & set(fields):  # RON may write a whole number as 0
        if _is_int(fields[name]):
            fields[name] = float(fields[name])
    try:
        return GPTConfig.from_dict(fields)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None


def train_config_from_ron(value: object, path: str | os.PathLike = "<train config>") -> TrainConfig:
    """``TrainConfig`` from a parsed ``train_config.ron``: gpt-rs's fields, ours at their defaults.

    Example:
        >>> train_config_from_ron(ron.loads("(learning_rate: 2e-4, training_iterations: 10, "
        ...     "evaluation_interval: 5, evaluation_iterations: 1, contexts_per_batch: 4)")).learning_rate
        0.0002
    """
    path = Path(path)
    fields = dict(_fields(value, path, "train config"))
    unknown = sorted(set(fields) - set(TRAIN_CONFIG_FIELDS))
    if unknown:
        known = list(TRAIN_CONFIG_FIELDS)
        raise ValueError(f"{path}: unknown train config fields {unknown}; gpt-rs's are {known}")
    if _is_int(fields.get("learning_rate")):
        fields["learning_rate"] = float(fields["learning_rate"])
    try:
        return TrainConfig.from_dict(fields)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None


def read_transformer_config(path: str | os.PathLike) -> GPTConfig:
    return transformer_config_from_ron(ron.load(_existing(path)), path)


def read_train_config(path: str | os.PathLike) -> TrainConfig:
    return train_config_from_ron(ron.load(_existing(path)), path)


def transformer_config_to_ron(config: GPTConfig) -> str:
    """``transformer_config.ron`` text for ``config`` (floats always with a point or exponent)."""
    values = config.to_dict()
    floats = _float_fields(GPTConfig)
    return ron_write.dumps(RonStruct({k: float(v) if k in floats else v for k, v in values.items()})) + "\n"


def train_config_to_ron(config: TrainConfig) -> str:
    """``train_config.ron`` text: gpt-rs's five fields of ``config`` (ours have no place there)."""
    values = {name: getattr(config, name) for name in TRAIN_CONFIG_FIELDS}
    values["learning_rate"] = float(values["learning_rate"])
    return ron_write.dumps(RonStruct(values)) + "\n"


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"gpt-rs file {str(path)!r} does not exist")
    return path


# --- importing a gpt-rs run --------------------------------------------------------------------

TOKENIZER_FILE = FILE_NAME  # the tokenizer bundle `gpt-pipeline generate --dataset-dir` reads
DATASET_FILE = "dataset.parquet"
MODEL_FILE = "model.safetensors"  # our checkpoint (config in its metadata)
RUN_CONFIG_FILE = "run_config.yaml"


@dataclass
class ImportedRun:
    """What ``import_gpt_rs_run`` wrote, and a few facts about it."""

    output: Path
    tokenizer: Path
    dataset: Path
    model: Path
    run_config: Path
    vocab_size: int
    stories: int
    tokens: int
    parameters: int


def run_config(config: GPTConfig, train_config: TrainConfig | None, training_percentage: float) -> dict:
    """The gpt-rs run's settings as a Dagster run config of ``train_gpt_job`` (``ops: {asset:
    {config: ...}}``): a run with it trains a model of the same shape on our side.

    Example:
        >>> rc = run_config(GPTConfig(vocab_size=300, block_count=2), None, 0.9)
        >>> rc["ops"]["bpe_tokenizer"], rc["ops"]["trained_model"]["config"]["block_count"]
        ({'config': {'vocab_size': 300}}, 2)
    """
    model_fields = {k: v for k, v in config.to_dict().items() if k != "vocab_size"}
    train_fields = train_config.to_dict() if train_config is not None else {}
    return {"ops": {
        "bpe_tokenizer": {"config": {"vocab_size": config.vocab_size}},
        "tokenized_dataset": {"config": {"training_percentage": training_percentage}},
        "trained_model": {"config": {**model_fields, **train_fields}},
    }}


def import_gpt_rs_run(
    dataset_file: str | os.PathLike,
    transformer_config_file: str | os.PathLike,
    transformer_safetensors: str | os.PathLike,
    output: str | os.PathLike,
    train_config_file: str | os.PathLike | None = None,
    training_percentage: float = DatasetConfig().training_percentage,
) -> ImportedRun:
    """Turn gpt-rs's files into ours in ``output``: the tokenizer bundle ``bpe_tokenizer.json``
    (+ its vocabulary listing and Hugging Face copy, ``gpt_pipeline.tokenizer.bundle``),
    ``dataset.parquet`` (the encoded stories, first ``training_percentage`` train),
    ``model.safetensors`` and ``run_config.yaml``.

    Everything is read and checked before the first file is written; each file is written
    atomically. ``output`` then works as ``gpt-pipeline generate --dataset-dir output
    --transformer-safetensors output/model.safetensors``.
    """
    import pyarrow.parquet as pq
    import yaml

    from gpt_pipeline.training.checkpoint import save_checkpoint
    from gpt_pipeline.data.splits import build_dataset_table
    from gpt_pipeline.interop.gpt_rs import load_checkpoint
    from gpt_pipeline.storage import atomic_write

    dataset = read_dataset(dataset_file)
    config = read_transformer_config(transformer_config_file)
    train_config = read_train_config(train_config_file) if train_config_file is not None else None
    vocab = dataset.tokenizer.vocab_size
    if config.vocab_size != vocab:
        raise ValueError(
            f"{transformer_config_file}: vocab_size is {config.vocab_size} but the dataset file's "
            f"tokenizer has {vocab} tokens"
        )
    if not Path(transformer_safetensors).is_file():
        raise FileNotFoundError(f"gpt-rs checkpoint {str(transformer_safetensors)!r} does not exist")
    model = load_checkpoint(transformer_safetensors, config)
    table = build_dataset_table(dataset.encoded_data, vocab, training_percentage)
    settings = run_config(config, train_config, training_percentage)

    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {str(out)!r} exists and is not a directory")
    write_bundle(dataset.tokenizer, out)  # bpe_tokenizer.json + .vocab.txt (+ .hf.json)
    atomic_write(out / DATASET_FILE, lambda tmp: pq.write_table(table, tmp))
    save_checkpoint(out / MODEL_FILE, model, metadata={
        "source": "gpt-rs", "gpt_rs_checkpoint": os.fspath(transformer_safetensors),
    })
    header = (f"# Settings of the gpt-rs run imported from {os.fspath(transformer_config_file)}"
              f"{' and ' + os.fspath(train_config_file) if train_config_file else ''},\n"
              "# as a Dagster run config of train_gpt_job (retrains a model of the same shape).\n")
    atomic_write_text(out / RUN_CONFIG_FILE, header + yaml.safe_dump(settings, sort_keys=False))
    return ImportedRun(
        output=out, tokenizer=out / TOKENIZER_FILE, dataset=out / DATASET_FILE, model=out / MODEL_FILE,
        run_config=out / RUN_CONFIG_FILE, vocab_size=vocab, stories=len(dataset.encoded_data),
        tokens=sum(map(len, dataset.encoded_data)), parameters=model.num_parameters(),
    )
