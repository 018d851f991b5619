"""``TableFile``: a corrupt Parquet file is a one-line ``DataError`` that names the file by its
place in the data directory, never by a local absolute path."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpt_pipeline.data.splits import DataError
from gpt_pipeline.data.story_files import text_batches
from gpt_pipeline.data.table_file import TableFile


def _corrupt(path):
    pq.write_table(pa.table({"text": [f"Once upon a time {i} " * 40 for i in range(2000)]}), path,
                   compression="snappy")
    data = bytearray(path.read_bytes())
    for i in range(200, 4000, 7):  # inside the first data page, the footer intact
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def test_a_corrupt_file_is_named_inside_the_data_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT_PIPELINE_DATA_DIR", str(tmp_path))
    (tmp_path / "raw_stories").mkdir()
    path = tmp_path / "raw_stories" / "default.parquet"
    _corrupt(path)
    for read in (lambda: list(text_batches(path)), lambda: TableFile(path).read()):
        with pytest.raises(DataError) as error:
            read()
        message = str(error.value)
        assert message.startswith("cannot read Parquet file raw_stories/default.parquet: ") and "\n" not in message
        assert str(tmp_path) not in message


def test_outside_the_data_directory_only_its_name(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT_PIPELINE_DATA_DIR", str(tmp_path / "data"))
    _corrupt(tmp_path / "s.parquet")
    with pytest.raises(DataError, match=r"^cannot read Parquet file s\.parquet: "):
        list(TableFile(tmp_path / "s.parquet").iter_batches())


def test_a_corrupt_source_of_the_stories_is_named(tmp_path, monkeypatch):
    from gpt_pipeline.data.config import StoriesConfig
    from gpt_pipeline.data.story_files import write_stories

    monkeypatch.setenv("GPT_PIPELINE_DATA_DIR", str(tmp_path / "data"))
    _corrupt(tmp_path / "stories.parquet")
    with pytest.raises(DataError) as error:
        write_stories(tmp_path / "out.parquet", StoriesConfig(path=str(tmp_path / "stories.parquet")))
    assert str(error.value) == "cannot read Parquet file stories.parquet: Corrupt snappy compressed data."
    assert not (tmp_path / "out.parquet").exists()
