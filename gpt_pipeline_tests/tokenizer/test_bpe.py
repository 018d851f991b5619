"""BPETokenizer training and encoding: hand-worked corpora, and gpt-rs's rules run literally.

``reference_train`` / ``reference_encode`` below are gpt-rs's algorithm written the slow,
obvious way (every pair of the whole corpus recounted for every merge, exclusions checked on
token texts, each merge applied over whole texts), as ``docs/gpt-rs-parity.md`` states it.
The fast trainer must agree with them on every randomized corpus, errors included.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gpt_pipeline.tokenizer import BPETokenizer, split_pieces
from gpt_pipeline.tokenizer.pieces import count_pieces

BARRIERS = ('"', "\n")


# ---- gpt-rs, literally ---------------------------------------------------------------------
def replace_pair(seq: list[int], pair: tuple[int, int], new: int) -> list[int]:
    out, i = [], 0
    while i < len(seq):
        if i + 1 < len(seq) and (seq[i], seq[i + 1]) == pair:
            out.append(new)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def reference_train(texts: list[str], vocab_size: int) -> tuple[list[str], list[tuple[int, int]]]:
    chars = sorted(set("".join(texts)))
    if not chars:
        raise ValueError("empty")
    if len(chars) > vocab_size:
        raise ValueError("too many characters")
    token_text = list(chars)
    seqs = [[chars.index(c) for c in text] for text in texts]
    merges = []
    while len(token_text) < vocab_size:
        counts: dict[tuple[int, int], int] = {}
        for seq in seqs:
            for a, b in zip(seq, seq[1:]):
                if token_text[a] in BARRIERS or token_text[b] in BARRIERS or token_text[b].startswith(" "):
                    continue
                counts[(a, b)] = counts.get((a, b), 0) + 1
        if not counts:
            raise ValueError("no pair left")
        best = max(counts, key=lambda pair: (counts[pair], pair))
        merges.append(best)
        token_text.append(token_text[best[0]] + token_text[best[1]])
        seqs = [replace_pair(seq, best, len(token_text) - 1) for seq in seqs]
    return chars, merges


def reference_encode(chars: list[str], merges: list[tuple[int, int]], text: str) -> list[int]:
    seq = [chars.index(c) for c in text]
    for k, pair in enumerate(merges):
        seq = replace_pair(seq, pair, len(chars) + k)
    return seq


def random_corpus(rng: random.Random, max_length: int = 24) -> list[str]:
    """A few texts over a tiny alphabet (ties everywhere), with spaces, quotes and newlines."""
    alphabet = rng.choice(["ab", "abc", "ab ", "abc  ", 'ab "', "ab\n", 'ab c"\n', "aé ü\n"])
    count = rng.randint(1, 6)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, max_length))) for _ in range(count)]


# ---- hand-worked corpora -------------------------------------------------------------------
def test_ties_go_to_the_largest_pair():
    # a=0 b=1 c=2 d=3: (a, b) and (c, d) both count 1; the larger pair (c, d) comes first.
    tok = BPETokenizer.train(["ab", "cd"], vocab_size=6)
    assert tok.alphabet == ["a", "b", "c", "d"]
    assert tok.merges == [(2, 3), (0, 1)]
    assert tok.vocab_size == 6


def test_overlapping_pairs_are_counted_but_replaced_without_overlap():
    # a=0 b=1 c=2. (a, a) counts 3 in "aaaa" (overlapping), beating (b, c) and (c, b) at 2.
    # "aaaa" -> [aa, aa]. Then (b, c) and (c, b) tie at 2: (c, b) = (2, 1) is larger -> id 4.
    # "bcbcb" -> [b, cb, cb]; (aa, aa), (b, cb), (cb, cb) tie at 1: (cb, cb) = (4, 4) -> id 5.
    tok = BPETokenizer.train(["aaaa", "bcbcb"], vocab_size=6)
    assert tok.merges == [(0, 0), (2, 1), (4, 4)]
    assert tok.encode("aaa") == [3, 0]
    assert tok.encode("aaaaa") == [3, 3, 0]
    assert tok.encode("bcbcb") == [1, 5]


def test_double_spaces_never_merge_and_running_out_of_pairs_fails():
    # ' '=0 x=1. Pieces x, ' ', ' x', ' ', ' x': the only pair that may merge is (' ', x).
    tok = BPETokenizer.train(["x  x  x"], vocab_size=3)
    assert tok.merges == [(0, 1)]
    assert tok.encode("x  x") == [1, 0, 2]
    with pytest.raises(ValueError, match=r"no pair left to merge after reaching 3 tokens"):
        BPETokenizer.train(["x  x  x"], vocab_size=4)


def test_no_merge_before_a_space():
    # ' '=0 a=1 b=2. (a, ' ') and (b, ' ') are never counted; (' ', b) = 2 beats (' ', a) = 1.
    tok = BPETokenizer.train(["a b a b"], vocab_size=5)
    assert tok.merges == [(0, 2), (0, 1)]
    assert tok.encode("a b a") == [1, 3, 4]


def test_quotes_never_merge():
    # '"'=0 a=1 b=2: (a, b) twice; every pair touching a quote is excluded.
    tok = BPETokenizer.train(['"ab"ab'], vocab_size=4)
    assert tok.merges == [(1, 2)]
    assert tok.encode('"ab"') == [0, 3, 0]
    with pytest.raises(ValueError, match=r"after reaching 2 tokens"):
        BPETokenizer.train(['a"a"a'], vocab_size=3)


def test_newlines_never_merge():
    # '\n'=0 a=1 b=2: (a, \n) and (\n, a) would win without the barrier; only (a, b) may merge.
    tok = BPETokenizer.train(["a\na\nab"], vocab_size=4)
    assert tok.alphabet == ["\n", "a", "b"]
    assert tok.merges == [(1, 2)]
    assert tok.encode("ab\nab") == [3, 0, 3]


def test_non_ascii_characters():
    # h=0 t=1 é=2 (code point order). All four pairs count 1: (é, t) = (2, 1) is the largest.
    # "été" -> [ét, é]; then (ét, é) = (3, 2) beats (t, h) and (h, é) -> "été" = 4; then (t, h).
    tok = BPETokenizer.train(["été", "thé"], vocab_size=6)
    assert tok.alphabet == ["h", "t", "é"]
    assert tok.merges == [(2, 1), (3, 2), (1, 0)]
    assert tok.encode("thé") == [5, 2]
    assert tok.token_text(4) == "été"


def test_texts_are_separate_sequences():
    # "ab" + "ab" as one sequence would hold (b, a); as two texts only (a, b) exists.
    tok = BPETokenizer.train(["ab", "ab"], vocab_size=3)
    assert tok.merges == [(0, 1)]
    with pytest.raises(ValueError, match="after reaching 3 tokens"):
        BPETokenizer.train(["ab", "ab"], vocab_size=4)


def test_vocab_equal_to_alphabet_needs_no_merge():
    tok = BPETokenizer.train(["cab"], vocab_size=3)
    assert (tok.alphabet, tok.merges, tok.encode("abc")) == (["a", "b", "c"], [], [0, 1, 2])


@pytest.mark.parametrize(
    ("texts", "vocab_size", "message"),
    [
        (["abc"], 2, r"3 distinct characters, more than vocab_size 2"),
        (["abc"], 0, r"vocab_size must be a positive integer, got 0"),
        ([], 10, r"empty corpus"),
        (["", ""], 10, r"empty corpus"),
        (["a", None], 10, r"texts must be strings"),
    ],
)
def test_training_errors(texts, vocab_size, message):
    with pytest.raises(ValueError, match=message):
        BPETokenizer.train(texts, vocab_size)


# ---- against gpt-rs's rules, on randomized corpora -----------------------------------------
@pytest.mark.parametrize(
    ("seed", "corpora", "max_length", "max_merges", "min_compared", "min_failures"),
    [(1234, 400, 24, 25, 150, 30), (5, 40, 300, 80, 25, 1)],
)
def test_merges_equal_the_reference_on_randomized_corpora(
    seed, corpora, max_length, max_merges, min_compared, min_failures
):
    rng = random.Random(seed)
    compared = failures = 0
    for _ in range(corpora):
        texts = random_corpus(rng, max_length)
        chars = set("".join(texts))
        vocab_size = len(chars) + rng.randint(0, max_merges)
        try:
            expected = reference_train(texts, vocab_size)
        except ValueError as error:
            with pytest.raises(ValueError):
                BPETokenizer.train(texts, vocab_size)
            failures += str(error) == "no pair left"
            continue
        tok = BPETokenizer.train(texts, vocab_size)
        assert (tok.alphabet, tok.merges) == expected, texts
        for text in texts:
            assert tok.encode(text) == reference_encode(*expected, text)
        compared += 1
    assert compared >= min_compared and failures >= min_failures  # both outcomes were exercised


def test_batch_and_single_encoding_agree_with_the_reference_and_decode_back():
    rng = random.Random(99)
    for _ in range(60):
        train = random_corpus(rng) + ['ab c"\n']
        try:
            tok = BPETokenizer.train(train, len(set("".join(train))) + rng.randint(0, 12))
        except ValueError:  # ran out of pairs: the test above covers it
            continue
        texts = ["".join(rng.choice(tok.alphabet) for _ in range(rng.randint(0, 40))) for _ in range(8)]
        expected = [reference_encode(tok.alphabet, tok.merges, t) for t in texts]
        fresh = BPETokenizer(tok.alphabet, tok.merges)  # cold caches
        assert fresh.encode_batch(texts) == expected
        assert [tok.encode(t) for t in texts] == expected
        assert [tok.decode(ids) for ids in expected] == texts


# ---- encode / decode -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def story_tokenizer() -> BPETokenizer:
    texts = [
        'Tom said, "Hi!"\nThe cat ran.',
        "The dog ran to the cat.  It was fun.",
        "Zoë ate crème brûlée 🙂",
    ]
    return BPETokenizer.train(texts, vocab_size=60)


def test_round_trip_and_batch(story_tokenizer):
    texts = ["The cat ran to Tom.", 'Zoë said "fun"\n\nIt ran. 🙂', "", " "]
    ids = story_tokenizer.encode_batch(texts)
    assert ids == [story_tokenizer.encode(t) for t in texts]
    assert [story_tokenizer.decode(x) for x in ids] == texts
    assert ids[2] == [] and len(ids[3]) == 1
    assert story_tokenizer.encode_batch([]) == []
    flat, offsets = story_tokenizer.encode_flat(texts)
    assert flat.dtype.name == "uint16" and offsets.tolist()[-1] == len(flat)
    assert flat[offsets[1] : offsets[2]].tolist() == ids[1]


def test_unseen_characters_raise_with_positions(story_tokenizer):
    with pytest.raises(ValueError, match=r"'Q' \(U\+0051\) at 4, 9; 'X' \(U\+0058\) at 7"):
        story_tokenizer.encode("The Qa X Q")
    with pytest.raises(ValueError, match=r"text 1: 1 characters never seen in training: 'Q'"):
        story_tokenizer.encode_batch(["The cat", "Qat"])


def test_unseen_characters_are_skipped_on_request(story_tokenizer):
    expected = story_tokenizer.encode("The a  ")
    assert story_tokenizer.encode("The Qa X Q", unknown="skip") == expected
    assert story_tokenizer.encode_batch(["The Qa X Q", "Q"], unknown="skip") == [expected, []]


def test_skipping_unseen_spaces_and_regex_characters():
    tok = BPETokenizer.train(["ab", "ba"], vocab_size=4)  # no space, no punctuation
    texts = ["a b", "a-b[#]\\b ~", " "]
    expected = [tok.encode("ab"), tok.encode("abb"), []]
    assert [tok.encode(t, unknown="skip") for t in texts] == expected
    assert tok.encode_batch(texts, unknown="skip") == expected


def test_bad_arguments(story_tokenizer):
    with pytest.raises(ValueError, match=r"unknown must be one of \('error', 'skip'\), got 'ignore'"):
        story_tokenizer.encode("The", unknown="ignore")
    with pytest.raises(ValueError, match=r"unknown must be one of"):
        story_tokenizer.encode_batch(["The"], unknown="replace")
    with pytest.raises(ValueError, match=r"token id 60 is outside the vocabulary \[0, 60\)"):
        story_tokenizer.decode([1, 60])
    with pytest.raises(ValueError, match=r"token id -1 is outside"):
        story_tokenizer.decode([-1])
    with pytest.raises(ValueError, match=r"token id 99 is outside"):
        story_tokenizer.token_text(99)


# ---- pieces --------------------------------------------------------------------------------
def test_split_pieces_known_answer():
    assert split_pieces(' He said  "hi,\nyou"') == [" He", " said", " ", " ", '"', "hi,", "\n", "you", '"']
    assert split_pieces("") == []


def test_count_pieces_equals_counting_every_piece_of_every_text():
    rng = random.Random(7)
    for _ in range(50):
        texts = random_corpus(rng, 40) + [" lead", "", "  ", '"q" a']
        expected = Counter(piece for text in texts for piece in split_pieces(text))
        assert count_pieces(texts) == dict(expected)


@pytest.mark.parametrize("module", ["pieces", "merge_learning", "merge_encoding", "fileformat", "huggingface", "bpe"])
def test_docstring_examples(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"gpt_pipeline.tokenizer.{module}"))
    assert result.attempted > 0 and result.failed == 0
