"""Provenance: digests of content, recorded in the files themselves, checked against each other;
storage faults in one line; the CLI's tokenize / train / generate refuse files that do not
belong together, and a file-size limit in the middle of ``tokenize`` keeps the earlier dataset."""

from __future__ import annotations

import errno
import json
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors import SafetensorError

from gpt_pipeline import provenance
from gpt_pipeline.data.dataset_files import DatasetWriter
from gpt_pipeline.data.story_files import TEXT_DIGEST_KEY, TextDigest, write_texts
from gpt_pipeline.data.table_file import TableFile
from gpt_pipeline.model.gpt import GPT, GPTConfig
from gpt_pipeline.provenance import Provenance, ProvenanceError, check_inputs
from gpt_pipeline.storage import StorageFault, atomic_write_bytes, io_fault
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline.training.checkpoint import load_checkpoint, read_checkpoint_metadata, save_checkpoint
from gpt_pipeline_tests.reliability_support import child_env, mounted_tmpfs, temp_files, tree_digest

STORIES = ["Once upon a time a cat sat.", "The dog ran home.", "A bird sang \"hi\".\nThe end."]


def test_stories_digest_is_kept_in_the_footer_and_the_same_however_the_text_is_batched(tmp_path):
    one = write_texts(tmp_path / "one.parquet", [pa.array(STORIES)])
    three = write_texts(tmp_path / "three.parquet", [pa.array([s]) for s in STORIES])
    plain = tmp_path / "plain.parquet"  # no digest in its footer: streamed from its text column
    pq.write_table(pa.table({"text": STORIES}), plain)
    digests = [provenance.table_digest(TableFile(p)) for p in (one, three, plain)]
    assert len(set(digests)) == 1
    assert pq.read_metadata(one).metadata[TEXT_DIGEST_KEY.encode()].decode() == digests[0]
    other = TextDigest()
    other.update(pa.array(STORIES[:2] + ["A bird sang."]))
    assert other.hexdigest() != digests[0]
    assert provenance.of(TableFile(one), "raw_stories") == Provenance("raw_stories", digests[0], {})


def test_tokenizer_records_what_it_was_trained_on_and_its_digest_ignores_the_record(tmp_path):
    tokenizer = BPETokenizer.train(STORIES, 40)
    digest = provenance.tokenizer_digest(tokenizer)
    legacy = tmp_path / "legacy.json"
    legacy.write_text(tokenizer.to_json())  # no record: as written before provenance existed
    assert "provenance" not in legacy.read_text()
    assert provenance.of(BPETokenizer.load(legacy), "bpe_tokenizer") == Provenance("bpe_tokenizer", digest, None)

    record = provenance.made("bpe_tokenizer", digest, {"raw_stories": "ab" * 32})
    provenance.attach(tokenizer, record)
    path = tmp_path / "tok.json"
    path.write_text(tokenizer.to_json())
    loaded = BPETokenizer.load(path)
    assert loaded == tokenizer and loaded.provenance == record.to_dict()
    assert provenance.of(loaded, "bpe_tokenizer") == record
    assert json.loads(path.read_text())["provenance"]["inputs"] == {"raw_stories": "ab" * 32}
    assert BPETokenizer.from_json(loaded.to_json()).to_json() == path.read_text()  # deterministic


def test_model_records_its_weights_digest_and_inputs_in_the_safetensors_metadata(tmp_path):
    config = GPTConfig(vocab_size=20, embedding_size=8, context_length=4, head_count=2, block_count=1)
    model = GPT(config)
    model.reset_parameters(torch.Generator().manual_seed(1))
    digest = provenance.weights_digest(model)
    record = provenance.made("trained_model", digest, {"bpe_tokenizer": "cd" * 32, "tokenized_dataset": "ef" * 32})
    save_checkpoint(tmp_path / "m.safetensors", provenance.attach(model, record))
    loaded, _ = load_checkpoint(tmp_path / "m.safetensors")
    assert provenance.weights_digest(loaded) == digest
    assert provenance.of(loaded, "trained_model") == record
    assert provenance.of_checkpoint(tmp_path / "m.safetensors").digest == digest
    assert json.loads(read_checkpoint_metadata(tmp_path / "m.safetensors")["gpt_pipeline.provenance"]) == record.to_dict()
    other = GPT(config)
    other.reset_parameters(torch.Generator().manual_seed(2))
    assert provenance.weights_digest(other) != digest


def test_dataset_footer_records_its_inputs_beside_its_token_digest(tmp_path):
    record = provenance.made("tokenized_dataset", "", {"bpe_tokenizer": "12" * 32, "raw_stories": "34" * 32})
    path = tmp_path / "d.parquet"
    with DatasetWriter(path, 2, vocab_size=8, training_percentage=0.5, metadata=provenance.footer(record)) as writer:
        writer.write(np.array([1, 2, 3], np.uint16), np.array([0, 2, 3]))
    table_file, stats = writer.result
    assert provenance.of(table_file, "tokenized_dataset") == Provenance("tokenized_dataset", stats["digest"], record.inputs)


def test_inputs_that_do_not_belong_together_are_refused_in_one_line():
    stories = Provenance("raw_stories", "aa" * 32, {})
    tokenizer = Provenance("bpe_tokenizer", "9c41" * 16, {"raw_stories": "aa" * 32})
    dataset = Provenance("tokenized_dataset", "77" * 32, {"bpe_tokenizer": "3f2a" * 16, "raw_stories": "bb" * 32})
    assert check_inputs("tokenized_dataset", {"raw_stories": stories, "bpe_tokenizer": tokenizer}) == []
    with pytest.raises(ProvenanceError) as refused:
        check_inputs("trained_model", {"tokenized_dataset": dataset, "bpe_tokenizer": tokenizer})
    assert str(refused.value) == (
        "trained_model refused: tokenized_dataset was encoded by bpe_tokenizer 3f2a3f2a3f2a, but the stored "
        "bpe_tokenizer is 9c419c419c41: rematerialize tokenized_dataset, then trained_model"
    )
    newer = Provenance("raw_stories", "cc" * 32, {})
    with pytest.raises(ProvenanceError, match="bpe_tokenizer was trained on raw_stories aaaaaaaaaaaa, but the stored raw_stories is cccccccccccc: rematerialize bpe_tokenizer, then tokenized_dataset"):
        check_inputs("tokenized_dataset", {"raw_stories": newer, "bpe_tokenizer": tokenizer})
    legacy = Provenance("tokenized_dataset", "77" * 32, None)  # written before provenance was recorded
    (warning,) = check_inputs("trained_model", {"tokenized_dataset": legacy, "bpe_tokenizer": tokenizer})
    assert warning.startswith("tokenized_dataset records no provenance") and "bpe_tokenizer" in warning


def test_storage_faults_read_as_one_line_with_the_free_space(tmp_path):
    target = tmp_path / "data" / "x.json"
    full = io_fault(OSError(errno.ENOSPC, "No space left on device"), target, needed=3 * 1024 * 1024)
    assert isinstance(full, StorageFault) and full.errno == errno.ENOSPC
    assert str(full).startswith(f"cannot write {target}: no space left on device (3.0 MiB needed, ")
    assert str(full).endswith(f" free on {tmp_path})")  # the nearest folder that exists
    arrow = io_fault(OSError("[errno 28] No space left on device"), target)  # pyarrow's wording
    assert "no space left on device" in str(arrow)
    rust = io_fault(SafetensorError('Error while serializing: IoError(Os { code: 27, kind: FileTooLarge })'), target)
    assert "file too large" in str(rust)
    assert io_fault(FileNotFoundError(errno.ENOENT, "gone", str(tmp_path / "input")), target) is None
    assert io_fault(ValueError("a message quoting [errno 28]"), target) is None
    vanished = io_fault(FileNotFoundError(errno.ENOENT, "gone"), target)
    assert str(vanished) == f"cannot write {target}: its folder vanished ({tmp_path} is all that is left of {target.parent})"
    assert "\n" not in str(full) + str(vanished)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (skipped where tmpfs cannot be mounted: not root)."""
    with mounted_tmpfs(tmp_path / "disk", "1m") as disk:
        yield disk


def test_atomic_write_on_a_full_or_read_only_disk_keeps_the_previous_file(tiny_disk):
    path = tiny_disk / "asset.bin"
    atomic_write_bytes(path, b"previous")
    with pytest.raises(StorageFault) as full:
        atomic_write_bytes(path, b"x" * (2 << 20))
    assert str(full.value).startswith(f"cannot write {path}: no space left on device (2.0 MiB needed, ")
    assert path.read_bytes() == b"previous" and temp_files(tiny_disk) == []
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    with pytest.raises(StorageFault, match=f"^cannot write {path}: read-only file system$"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"previous"


# --- the CLI ------------------------------------------------------------------------------------


def _cli(args: list[str], cwd: Path, file_size_limit: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:  # writes past the limit fail with EFBIG instead of killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run(
        [sys.executable, "-m", "gpt_pipeline.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600,
        env=child_env(PYTHONDONTWRITEBYTECODE="1"), preexec_fn=limit if file_size_limit else None,
    )


TRAIN = ["--embedding-size", "16", "--context-length", "8", "--head-count", "2", "--block-count", "1",
         "--training-iterations", "4", "--evaluation-interval", "2", "--evaluation-iterations", "1",
         "--contexts-per-batch", "4", "--device", "cpu"]


def test_cli_file_size_limit_in_tokenize_then_train_and_generate_refuse_what_does_not_belong(tmp_path):
    data = tmp_path / "dataset"
    assert _cli(["tokenize", "--num-stories", "100", "--vocab-size", "300", "--output-dir", str(data)], tmp_path).returncode == 0
    before = tree_digest(data)
    old_tokenizer = provenance.tokenizer_digest(BPETokenizer.load(data / "bpe_tokenizer.json"))

    # A bigger corpus with a 64 KiB file size limit: the tokenizer files fit, the dataset does not.
    # `tokenize` publishes nothing until every file is complete, so the folder stays as it was.
    bigger = _cli(["tokenize", "--num-stories", "3000", "--vocab-size", "300", "--output-dir", str(data)],
                  tmp_path, file_size_limit=64 * 1024)
    assert bigger.returncode == 2, bigger.stderr[-3000:]
    last = bigger.stderr.strip().splitlines()[-1]
    # (it streams the stories into a work folder inside the output first: that write hits the limit)
    assert re.fullmatch(rf"gpt-pipeline: error: cannot write {re.escape(str(data))}/\.gpt-pipeline-tokenize\.\w+/"
                        rf"(stories|dataset)\.parquet: file too large \(the file size limit is reached\) "
                        rf"\([\d.]+ \w+ free on {re.escape(str(data))}\S*\)", last), last
    assert tree_digest(data) == before and temp_files(data) == []

    # The partial failure, as a failed asset run leaves it: a new tokenizer beside the old
    # dataset (the bundle of a bigger corpus copied over the folder's own).
    other = tmp_path / "other"
    assert _cli(["tokenize", "--num-stories", "3000", "--vocab-size", "300", "--output-dir", str(other)], tmp_path).returncode == 0
    for name in ("bpe_tokenizer.json", "bpe_tokenizer.vocab.txt", "bpe_tokenizer.hf.json"):
        if (other / name).exists():
            (data / name).write_bytes((other / name).read_bytes())
    new_tokenizer = provenance.tokenizer_digest(BPETokenizer.load(data / "bpe_tokenizer.json"))
    assert new_tokenizer != old_tokenizer

    refused = _cli(["train", "--dataset-dir", str(data), "--output-dir", str(tmp_path / "run"), *TRAIN], tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"gpt-pipeline: error: train refused: {data / 'dataset.parquet'} was encoded by {data / 'bpe_tokenizer.json'} "
        f"{old_tokenizer[:12]}, but the stored {data / 'bpe_tokenizer.json'} is {new_tokenizer[:12]}: "
        f"run `gpt-pipeline tokenize --output-dir {data}` again"
    )
    assert not (tmp_path / "run").exists()

    # Tokenized again, it trains; the model records its tokenizer, and generate checks it.
    assert _cli(["tokenize", "--num-stories", "100", "--vocab-size", "300", "--output-dir", str(data)], tmp_path).returncode == 0
    trained = _cli(["train", "--dataset-dir", str(data), "--output-dir", str(tmp_path / "run"), *TRAIN], tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    final = tmp_path / "run" / "final.safetensors"
    record = provenance.of_checkpoint(final, "trained_model")
    assert record.inputs["bpe_tokenizer"] == provenance.tokenizer_digest(BPETokenizer.load(data / "bpe_tokenizer.json"))
    model, _ = load_checkpoint(final)
    assert record.digest == provenance.weights_digest(model)
    generate = ["generate", "--transformer-safetensors", str(final), "--input", "Once", "--token-count", "4"]
    assert _cli([*generate, "--dataset-dir", str(data)], tmp_path).returncode == 0
    wrong = _cli([*generate, "--dataset-dir", str(other)], tmp_path)
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines()[-1].startswith(  # the tokenizer named by the folder given
        f"gpt-pipeline: error: generate refused: {final} was trained with {other} "
        f"{record.inputs['bpe_tokenizer'][:12]}, but the stored {other} is "
    )
