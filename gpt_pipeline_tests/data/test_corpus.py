"""Tests for gpt_pipeline.data.corpus: the embedded, generated story corpus."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from gpt_pipeline.data import corpus
from gpt_pipeline.data.corpus import (
    DEFAULT_NUM_STORIES,
    expand,
    generate_stories,
    ing_form,
    iter_stories,
    past_form,
    plural,
    with_article,
)
from gpt_pipeline_tests.file_writers import write_corpus_parquet


@pytest.fixture(scope="module")
def default_corpus() -> list[str]:
    return generate_stories()


# --- grammar helpers: hand-worked answers ------------------------------------------------------


@pytest.mark.parametrize(
    ("phrase", "expected"),
    [("apple", "an apple"), ("owl", "an owl"), ("elephant", "an elephant"),
     ("umbrella", "an umbrella"), ("unicorn", "a unicorn"), ("hour", "an hour"), ("dog", "a dog"),
     ("old red kite", "an old red kite"), ("Ugly duck", "an Ugly duck"), ("one", "a one")],
)
def test_with_article(phrase: str, expected: str) -> None:
    assert with_article(phrase) == expected


@pytest.mark.parametrize(
    ("noun", "expected"),
    [("cat", "cats"), ("bunny", "bunnies"), ("day", "days"), ("fox", "foxes"), ("peach", "peaches"),
     ("bus", "buses"), ("mouse", "mice"), ("sheep", "sheep"), ("wolf", "wolves"),
     ("tomato", "tomatoes"), ("teddy bear", "teddy bears"), ("spinning top", "spinning tops")],
)
def test_plural(noun: str, expected: str) -> None:
    assert plural(noun) == expected


@pytest.mark.parametrize(
    ("phrase", "ing", "past"),
    [("play tag", "playing tag", "played tag"), ("dance", "dancing", "danced"),
     ("swim in the lake", "swimming in the lake", "swam in the lake"),
     ("hop on one foot", "hopping on one foot", "hopped on one foot"),
     ("fly kites", "flying kites", "flew kites"), ("carry it", "carrying it", "carried it"),
     ("go fishing", "going fishing", "went fishing"),
     ("feed the ducks", "feeding the ducks", "fed the ducks")],
)
def test_verb_forms(phrase: str, ing: str, past: str) -> None:
    assert (ing_form(phrase), past_form(phrase)) == (ing, past)


def test_expand_picks_alternatives_and_capitalises_slots() -> None:
    slots = corpus._Slots(he="they", adult="their mom", was="were")
    assert expand("{He} {was} home. {Adult} smiled.", slots, random.Random(0)) == (
        "They were home. Their mom smiled."
    )
    seen = {expand("[a|b|c]{he}", slots, random.Random(seed)) for seed in range(50)}
    assert seen == {"athey", "bthey", "cthey"}
    with pytest.raises(KeyError):
        expand("{nobody}", slots, random.Random(0))


def test_every_template_expands_for_every_kind_of_hero() -> None:
    # The cast of many seeds covers girls, boys, animals and pairs; every template must fill.
    templates = [*corpus.OPENINGS, *corpus.SETTINGS, *corpus.FRIENDS, *corpus.ENDINGS]
    for plot in corpus.PLOTS:
        assert plot["problem"] and plot["fix"] and plot["lesson"]
        templates += plot["problem"] + plot["fix"] + plot["lesson"]
    rng = random.Random(0)
    for _ in range(40):
        slots = corpus._cast(rng)
        for template in templates:
            text = expand(template, slots, rng)
            assert not re.search(r"[{}\[\]|]", text), (template, text)


# --- the corpus --------------------------------------------------------------------------------


def test_count_and_default_size(default_corpus: list[str]) -> None:
    assert DEFAULT_NUM_STORIES >= 5000
    assert len(default_corpus) == DEFAULT_NUM_STORIES
    assert len(generate_stories(37, seed=4)) == 37
    assert generate_stories(0) == []
    with pytest.raises(ValueError, match="-1"):
        iter_stories(-1)


def test_determinism_and_prefix_stability(default_corpus: list[str]) -> None:
    assert generate_stories(200, seed=0) == default_corpus[:200]
    assert generate_stories(50, seed=1) == generate_stories(50, seed=1)
    other = generate_stories(50, seed=1)
    assert other != default_corpus[:50]
    assert len(set(other) & set(default_corpus[:50])) == 0


def test_same_stories_in_another_process_with_another_hash_seed() -> None:
    # Set iteration order changes with PYTHONHASHSEED; the corpus must not depend on it.
    code = "from gpt_pipeline.data.corpus import generate_stories; print(repr(generate_stories(100, 3)))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == repr(generate_stories(100, 3))


def test_style(default_corpus: list[str]) -> None:
    lengths = [len(s) for s in default_corpus]
    assert 600 <= sum(lengths) / len(lengths) <= 900  # TinyStories averages ~750 characters
    assert min(lengths) >= 300 and max(lengths) <= 1500
    assert len(set(default_corpus)) == len(default_corpus)
    with_dialogue = sum('"' in s for s in default_corpus)
    assert with_dialogue >= 0.9 * len(default_corpus)
    for story in default_corpus:
        assert story.count('"') % 2 == 0, story  # every quote is closed
        assert len(re.split(r"\n+", story)) >= 3, story  # several paragraphs
        assert story[0].isupper() and story[-1] in '.!?"', story
        assert "  " not in story and not re.search(r"[{}\[\]|]", story), story
    assert any("\n\n" in s for s in default_corpus) and any("\n\n" not in s for s in default_corpus)


def test_vocabulary_is_varied(default_corpus: list[str]) -> None:
    words = {w for s in default_corpus for w in re.findall(r"[a-z]+", s.lower())}
    assert len(words) > 500
    openings = {s.split(".")[0] for s in default_corpus}
    assert len(openings) > 0.5 * len(default_corpus)  # first sentences rarely repeat


def test_grammar_agreement(default_corpus: list[str]) -> None:
    text = "\n".join(default_corpus)
    assert re.search(r"\bThey were\b", text)  # pairs of children are in the corpus
    assert not re.search(r"\b(They|they|[A-Z][a-z]+ and [A-Z][a-z]+) was\b", text)
    assert not re.search(r"\b([Hh]e|[Ss]he) were\b", text)
    assert not re.search(r"\ba [aeiou]", text) and not re.search(r"\ban [b-df-hj-np-tv-z]", text)


def test_generation_time() -> None:
    start = time.perf_counter()
    generate_stories(5000, seed=123)
    assert time.perf_counter() - start < 5.0


# --- the Parquet file --------------------------------------------------------------------------


def test_write_corpus_parquet(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(corpus, "PARQUET_BATCH", 40)  # several row groups from a small corpus
    path = write_corpus_parquet(tmp_path / "stories.parquet", num_stories=100, seed=5)
    assert path == tmp_path / "stories.parquet"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stories.parquet"]  # no temp file left
    file = pq.ParquetFile(path)
    assert file.num_row_groups == 3
    table = file.read()
    assert table.column_names == ["text"] and str(table.schema.field("text").type) == "string"
    assert table["text"].to_pylist() == generate_stories(100, seed=5)


def test_write_corpus_parquet_replaces_and_validates(tmp_path) -> None:
    path = tmp_path / "stories.parquet"
    write_corpus_parquet(path, num_stories=3, seed=0)
    write_corpus_parquet(path, num_stories=2, seed=1)
    assert pq.read_table(path)["text"].to_pylist() == generate_stories(2, seed=1)
    with pytest.raises(ValueError, match="num_stories"):
        write_corpus_parquet(path, num_stories=-5)
    assert pq.read_table(path).num_rows == 2  # the failed call left the file alone
    write_corpus_parquet(tmp_path / "empty.parquet", num_stories=0)
    assert pq.read_table(tmp_path / "empty.parquet").num_rows == 0
