"""Streaming of the first two stages: raw_stories written batch by batch (``write_stories``), the
tokenizer's piece counts from batches of text (the step itself: ``tokenizer/test_from_stories.py``). Every
streamed result is compared with the one-shot result it replaces."""

from __future__ import annotations

import random

import dagster as dg
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpt_pipeline.data import corpus

from gpt_pipeline.data import story_files
from gpt_pipeline.data.corpus import generate_stories, iter_story_batches
from gpt_pipeline.data.config import StoriesConfig
from gpt_pipeline.data.splits import DataError
from gpt_pipeline.data.story_files import TextStats, iter_texts, read_texts, text_batches, write_stories, write_texts
from gpt_pipeline.defs.assets import ASSETS
from gpt_pipeline.defs.io_manager import AssetFileIOManager
from gpt_pipeline.defs.resources import MLflowResource
from gpt_pipeline.quality import spread_sample, tokenizer_round_trip
from gpt_pipeline.data.table_file import TableFile
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline.tokenizer import pieces
from gpt_pipeline.tokenizer.pieces import PieceCounter, count_pieces

RESOURCES = {"io_manager": AssetFileIOManager(), "mlflow": MLflowResource()}


def materialize(selection: list[str], run_config: dict) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ASSETS, selection=selection, resources=RESOURCES, run_config={"ops": run_config},
        instance=dg.DagsterInstance.ephemeral(),
    )


def metadata(result, asset: str) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.path == [asset]]
    return {k: v.value for k, v in event.materialization.metadata.items()}


@pytest.fixture(scope="module")
def stories() -> list[str]:
    return generate_stories(300, seed=11)


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """One MLflow store for this module's materializations (a new one costs seconds)."""
    path = tmp_path_factory.mktemp("mlruns") / "mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{path}")
        yield path


@pytest.fixture
def data_dir(mlflow_store, tmp_path, monkeypatch):
    monkeypatch.setenv("GPT_PIPELINE_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


# --- raw_stories ---------------------------------------------------------------------------------


def test_story_batches_are_the_generator_stories() -> None:
    batches = list(iter_story_batches(25, seed=4, batch_size=10))
    assert [len(b) for b in batches] == [10, 10, 5]
    assert sum(batches, []) == generate_stories(25, seed=4)
    with pytest.raises(ValueError, match="num_stories"):
        iter_story_batches(-1)
    with pytest.raises(ValueError, match="batch_size"):
        iter_story_batches(3, batch_size=0)


def test_raw_stories_streams_the_generator_in_row_groups(data_dir, monkeypatch) -> None:
    monkeypatch.setattr(corpus, "PARQUET_BATCH", 40)  # 100 stories: row groups of 40, 40, 20
    result = materialize(["raw_stories"], {"raw_stories": {"config": {"num_stories": 100, "seed": 5}}})
    stored = pq.ParquetFile(data_dir / "raw_stories.parquet")
    assert stored.schema_arrow.names == ["text"] and stored.schema_arrow.field("text").type == pa.large_string()
    assert [stored.metadata.row_group(i).num_rows for i in range(stored.num_row_groups)] == [40, 40, 20]
    expected = generate_stories(100, seed=5)
    assert stored.read()["text"].to_pylist() == expected
    facts = metadata(result, "raw_stories")
    assert (facts["stories"], facts["rows_read"], facts["null_dropped"], facts["empty_dropped"]) == (100, 100, 0, 0)
    assert facts["characters"] == sum(map(len, expected))
    assert facts["preview"].startswith("> " + expected[0].split("\n")[0])
    assert [p for p in (data_dir / ".scratch").rglob("*") if p.is_file()] == []  # moved, not copied


def test_raw_stories_streams_a_user_file_in_batches(data_dir, tmp_path, monkeypatch) -> None:
    rng = random.Random(3)
    texts = [rng.choice([None, "", f"story {i} é\n\"hi\""]) if i % 3 == 0 else f"tale {i}" for i in range(200)]
    source = tmp_path / "user.parquet"
    pq.write_table(pa.table({"id": list(range(200)), "body": pa.array(texts, pa.string())}), source,
                   row_group_size=30)
    monkeypatch.setattr(story_files, "READ_BATCH_ROWS", 17)  # batches that straddle the row groups
    result = materialize(["raw_stories"], {"raw_stories": {"config": {"path": str(source), "text_column": "body"}}})
    kept = [t for t in texts if t]
    stored = pq.read_table(data_dir / "raw_stories.parquet")
    assert stored["text"].to_pylist() == kept == read_texts(source, "body")[0]["text"].to_list()
    facts = metadata(result, "raw_stories")
    assert facts["rows_read"] == 200 and facts["stories"] == len(kept)
    assert facts["null_dropped"] == texts.count(None) and facts["empty_dropped"] == texts.count("")
    assert facts["characters"] == sum(map(len, kept))


def test_iter_texts_counts_and_casts_every_batch(tmp_path) -> None:
    values = pa.array(["a", None, "", "bb", None, "ccc", "", "d"]).dictionary_encode()
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"t": values}), path, row_group_size=3)
    stats = TextStats()
    batches = list(iter_texts(path, stats=stats, batch_rows=2))
    assert all(b.type == pa.large_string() for b in batches)
    assert sum((b.to_pylist() for b in batches), []) == ["a", "bb", "ccc", "d"]
    assert stats.summary() == {"rows_read": 8, "null_dropped": 2, "empty_dropped": 2, "rows_kept": 4,
                               "source_column": "t"}
    assert (stats.characters, stats.first) == (7, "a")


def test_only_empty_text_fails_after_the_stream_and_writes_nothing(tmp_path) -> None:
    source = tmp_path / "blank.parquet"
    pq.write_table(pa.table({"story": ["", None] * 50}), source, row_group_size=10)
    destination = tmp_path / "out" / "stories.parquet"
    with pytest.raises(DataError, match=r"'story' .* only null or empty text"):
        write_stories(destination, StoriesConfig(path=str(source)))
    assert list((tmp_path / "out").iterdir()) == []  # not even a temporary file


def test_write_stories_streams_the_embedded_corpus(tmp_path) -> None:
    facts = write_stories(tmp_path / "s.parquet", StoriesConfig(num_stories=30, seed=2))
    frame, loaded = read_texts(tmp_path / "s.parquet")  # the file read back whole
    assert pq.read_table(tmp_path / "s.parquet")["text"].to_pylist() == frame["text"].to_list()
    assert frame["text"].to_list() == generate_stories(30, seed=2) and frame.schema["text"] == pl.String
    assert {k: facts[k] for k in loaded} == loaded
    assert {k: facts[k] for k in ("source", *loaded)} == {
        "source": "embedded corpus (seed 2)", "rows_read": 30, "null_dropped": 0, "empty_dropped": 0,
        "rows_kept": 30, "source_column": "text",
    }
    with pytest.raises(ValueError, match="num_stories must be a positive integer, got 0"):
        write_stories(tmp_path / "none.parquet", StoriesConfig(num_stories=0))
    assert not (tmp_path / "none.parquet").exists()


def test_text_batches_read_a_story_file_back(tmp_path) -> None:
    path = write_texts(tmp_path / "t.parquet", [pa.array(["a", "b", "c"]), pa.array(["d", "e"])])
    batches = list(text_batches(TableFile(path), batch_rows=2))
    assert [b.to_list() for b in batches] == [["a", "b"], ["c", "d"], ["e"]]  # across row groups
    assert all(b.dtype == pl.String for b in batches)
    assert [b.to_list() for b in text_batches(path)] == [["a", "b", "c", "d", "e"]]  # a path works too


def test_write_texts_one_row_group_per_batch(tmp_path) -> None:
    path = write_texts(tmp_path / "t.parquet", [pa.array(["a", "b"]), pa.array([], pa.string()), pa.array(["c"])])
    assert pq.ParquetFile(path).num_row_groups == 2
    assert pq.read_table(path)["text"].to_pylist() == ["a", "b", "c"]


# --- the tokenizer from batches ----------------------------------------------------------------


def random_splits(texts: list[str], seed: int) -> list:
    """``texts`` cut at random places, as lists, polars and Arrow arrays, empty batches too."""
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(len(texts) + 1), 6))
    parts = [texts[a:b] for a, b in zip([0, *cuts], [*cuts, len(texts)])]
    kinds = [list, lambda p: pl.Series(p, dtype=pl.String), lambda p: pa.array(p, pa.large_string())]
    return [kinds[i % 3](part) for i, part in enumerate(parts)]


def test_streamed_piece_counts_equal_one_shot_counts(stories, monkeypatch) -> None:
    expected = count_pieces(stories)
    assert sum(expected.values()) > 10 * len(stories)
    for seed in range(3):
        counter = PieceCounter()
        for batch in random_splits(stories, seed):
            counter.add(batch)
        assert counter.counts() == expected and counter.texts == len(stories)
    monkeypatch.setattr(pieces, "COUNT_SLICE_BYTES", 1500)  # a batch counted in slices of 1-3 stories
    sliced = PieceCounter()
    sliced.add(stories)
    assert sliced.counts() == expected
    # Two counters over two halves, merged, count the whole.
    head, tail = PieceCounter(), PieceCounter()
    head.add(stories[:100])
    tail.add(stories[100:])
    head.update(tail)
    assert head.counts() == expected


def test_train_from_batches_gives_the_same_merges_for_any_split(stories) -> None:
    reference = BPETokenizer.train(stories, 400)
    assert len(reference.merges) == 400 - len(reference.alphabet)
    for seed in range(3):
        assert BPETokenizer.train_from_batches(random_splits(stories, seed), 400) == reference
    one_by_one = BPETokenizer.train_from_batches(([s] for s in stories[:60]), 200)
    assert one_by_one == BPETokenizer.train(stories[:60], 200)


def test_round_trip_sample_of_a_file_is_the_sample_of_the_list(stories, tmp_path) -> None:
    path = tmp_path / "stories.parquet"
    pq.write_table(pa.table({"text": stories}), path, row_group_size=7)
    for size in (1, 13, 200, 1000):
        assert spread_sample(TableFile(path), size) == spread_sample(stories, size)
    tokenizer = BPETokenizer.train(stories, 300)
    gate = tokenizer_round_trip(tokenizer, TableFile(path), sample_size=40)
    assert gate.passed and gate.figures == {"sampled": 40, "mismatches": 0}
