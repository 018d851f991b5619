"""BPETokenizer files: our versioned JSON, the vocabulary listing, the Hugging Face export (the files
they are written to: ``test_bundle.py``)."""

from __future__ import annotations

import json
import random

import pytest

from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline.tokenizer.bundle import write_bundle


def generated_stories(seed: int, count: int) -> list[str]:
    """Made-up stories of made-up words with double spaces, quotes, newlines, accents, emoji."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "zë", "tú", "ra", "n", "s", "e", "pi", "do", "ç", "🙂", ",", "."]
    stories = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(3, 40)):
            word = "".join(rng.choice(syllables) for _ in range(rng.randint(1, 4)))
            roll = rng.random()
            if roll < 0.1:
                word = f'"{word}"'
            elif roll < 0.15:
                word += "\n"
            elif roll < 0.2:
                word += " "
            parts.append(word.capitalize() if roll > 0.9 else word)
        stories.append(" ".join(parts))
    return stories


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    return BPETokenizer.train(generated_stories(0, 200), vocab_size=120)


# ---- our format ----------------------------------------------------------------------------
def test_known_file_and_listing(tmp_path):
    # \n=0 ' '=1 '"'=2 a=3 b=4; pieces ab, ' ', '"', ab, '"', \n, ' b': (a, b) counts 2 -> ab = 5,
    # then (' ', b) -> " b" = 6.
    tok = BPETokenizer.train(['ab "ab"\n b'], vocab_size=7)
    write_bundle(tok, tmp_path / "t.json")
    data = json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))
    assert (data["format"], data["version"], data["vocab_size"]) == ("gpt-pipeline-bpe", 1, 7)
    assert data["alphabet"] == ["\n", " ", '"', "a", "b"]
    assert data["merges"] == [[3, 4], [1, 4]]
    assert data["rules"]["barriers"] == ['"', "\n"] and data["rules"]["no_merge_before"] == " "
    listing = (tmp_path / "t.vocab.txt").read_text(encoding="utf-8")
    assert listing == tok.vocab_listing()
    assert listing.splitlines()[2:] == [
        "id\ttoken\tmade of",
        "0\t↵\tcharacter U+000A",
        "1\t␣\tcharacter U+0020",
        '2\t"\tcharacter U+0022',
        "3\ta\tcharacter U+0061",
        "4\tb\tcharacter U+0062",
        "5\tab\t3 + 4 (a + b)",
        "6\t␣b\t1 + 4 (␣ + b)",
    ]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format="sentencepiece"), r"unknown tokenizer format 'sentencepiece'"),
        (lambda d: d.update(version=2), r"unsupported gpt-pipeline-bpe version 2; this code reads version 1"),
        (lambda d: d.pop("version"), r"unsupported gpt-pipeline-bpe version None"),
        (lambda d: d["rules"].update(selection="smallest"), r"rules differ from ours in \['selection'\]"),
        (lambda d: d.update(vocab_size=8), r"vocab_size 8 does not match 5 characters \+ 2 merges"),
        (lambda d: d["merges"].append([9, 0]), r"merge 2 must be two ids of existing tokens \(below 7\)"),
        (lambda d: d["merges"].append([3, 1]), r"merge 2 \(3, 1\) breaks gpt-rs's rules: its right token"),
        (lambda d: d["merges"].append([3, 0]), r"merge 2 \(3, 0\) breaks gpt-rs's rules: it involves a"),
        (lambda d: d["merges"].append([3, 4]), r"merge 2 repeats the pair \(3, 4\)"),
        (lambda d: d.update(alphabet=["a", "\n", " ", '"', "b"]), r"strictly ascending code point order"),
    ],
)
def test_load_refuses_bad_files(tmp_path, edit, message):
    data = json.loads(BPETokenizer.train(['ab "ab"\n b'], vocab_size=7).to_json())
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        BPETokenizer.load(path)


def test_load_refuses_non_json(tmp_path):
    path = tmp_path / "tok.ron"
    path.write_text("(char_to_id: {})", encoding="utf-8")
    with pytest.raises(ValueError, match=r"tok.ron: not a gpt-pipeline-bpe file: invalid JSON"):
        BPETokenizer.load(path)


def test_load_names_a_hugging_face_file_as_such(tmp_path, tokenizer):
    path = tmp_path / "tokenizer.json"
    path.write_text(tokenizer.to_hf_json(), encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer.json: a Hugging Face tokenizer.json, not a gpt-pipeline-bpe "
                                         r"file: read our tokenizer file \(a tokenizer bundle's bpe_tokenizer.json\)"):
        BPETokenizer.load(path)


# ---- Hugging Face export -------------------------------------------------------------------
def test_hugging_face_export_refuses_duplicate_token_texts():
    # ab = 3, then abc = (ab, c) = 4, bc = 5 and abc again = (a, bc) = 6.
    tok = BPETokenizer(["a", "b", "c"], [(0, 1), (3, 2), (1, 2), (0, 5)])
    with pytest.raises(ValueError, match=r"tokens 4 and 6 share the text 'abc'"):
        tok.to_hf_json()
