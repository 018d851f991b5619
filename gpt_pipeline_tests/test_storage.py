"""Atomic writes and the data directory."""

from __future__ import annotations

import os
import pytest

from gpt_pipeline.storage import atomic_write, atomic_write_text, data_dir, project_root


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]


def test_failed_write_keeps_previous_file_and_removes_temp(tmp_path):
    target = tmp_path / "file.txt"
    atomic_write_text(target, "good")

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_data_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("GPT_PIPELINE_DATA_DIR", raising=False)
    assert data_dir() == project_root() / "data"
    monkeypatch.setenv("GPT_PIPELINE_DATA_DIR", str(tmp_path / "elsewhere"))
    assert data_dir() == tmp_path / "elsewhere"


def test_checkpoints_get_the_same_permissions_as_every_other_file(tmp_path):
    import os

    from gpt_pipeline.training.checkpoint import save_checkpoint
    from gpt_pipeline.model.gpt import GPT, GPTConfig

    umask = os.umask(0o022)
    os.umask(umask)
    path = save_checkpoint(tmp_path / "m.safetensors", GPT(GPTConfig(vocab_size=8, embedding_size=8, block_count=1)))
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # safetensors' own 0600 is replaced


def test_process_umask_reads_the_umask_without_changing_it():
    from gpt_pipeline.storage import process_umask

    old = os.umask(0o027)
    try:
        assert process_umask() == 0o027
        assert process_umask() == 0o027  # reading did not change it
    finally:
        os.umask(old)
