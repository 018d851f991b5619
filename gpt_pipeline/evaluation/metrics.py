"""Text metrics of story continuations that need no judge model, only the texts themselves.

Every metric reads words and sentences the same way:

- a *word* is a run of letters, with inner apostrophes (``don't``, ``lily's``), lower-cased:
  ``WORD.findall(text.lower())``; digits and punctuation are not words;
- a *sentence* ends at ``.``, ``!`` or ``?`` (a run of them, then any closing quotes or
  brackets); the text after the last end, when it holds a word, is one more (unfinished) sentence.

The figures, each pooled over all texts (a corpus-level figure, not a mean of per-text ratios):

    distinct_n             distinct word n-grams / word n-grams (Li et al. 2016's distinct-n)
    repeated_ngram_rate    n-grams (n = 4) that repeat an earlier n-gram of the same text / n-grams
    unseen_word_rate       words not in a vocabulary (the training split's words) / words
    sentence_end_rate      texts in which at least one sentence ends / texts
    mean_sentence_length   words / sentences (an unfinished last sentence counts)
    rouge_l                ROUGE-L F1 (longest common word subsequence) of each pair, averaged

``text_metrics`` computes them all for a list of texts (and their references, for ROUGE-L).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")
SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*")
METRICS = ("distinct_1", "distinct_2", "distinct_3", "repeated_4gram_rate", "unseen_word_rate",
           "sentence_end_rate", "mean_sentence_length", "rouge_l")


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased.

    Example:
        >>> words("Lily's dog didn't bark. It ran 3 times!")
        ["lily's", 'dog', "didn't", 'bark', 'it', 'ran', 'times']
    """
    return WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The ``n``-grams of ``tokens`` in order.

    Example:
        >>> ngrams(["a", "b", "c"], 2)
        [('a', 'b'), ('b', 'c')]
    """
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Iterable[str], n: int) -> float | None:
    """Distinct word ``n``-grams over all ``texts`` divided by their number (None without any).

    Example: "the cat the cat" and "the dog" have the bigrams (the cat), (cat the), (the cat),
    (the dog): 3 distinct of 4.

        >>> distinct_n(["the cat the cat", "the dog"], 2)
        0.75
        >>> distinct_n(["the cat the cat", "the dog"], 1)
        0.5
    """
    grams = [g for text in texts for g in ngrams(words(text), n)]
    return len(set(grams)) / len(grams) if grams else None


def repeated_ngram_rate(texts: Iterable[str], n: int = 4) -> float | None:
    """The share of word ``n``-grams that repeat an earlier ``n``-gram of the same text (None
    without any): 0 for text that never repeats itself, towards 1 for text that loops.

    Example: "and the dog and the dog and the dog" has six 4-grams, the last three repeats.

        >>> repeated_ngram_rate(["and the dog and the dog and the dog"])
        0.5
        >>> repeated_ngram_rate(["a b c d e", "a b c d"])
        0.0
    """
    repeats = total = 0
    for text in texts:
        grams = ngrams(words(text), n)
        total += len(grams)
        repeats += len(grams) - len(set(grams))
    return repeats / total if total else None


def unseen_word_rate(texts: Iterable[str], vocabulary: set[str] | frozenset[str]) -> float | None:
    """The share of the words of ``texts`` that are not in ``vocabulary`` (lower-cased words,
    as ``words`` reads them): invented words, when the vocabulary is the training split's.

    Example:
        >>> unseen_word_rate(["The cat sat.", "A zorp."], {"the", "cat", "sat", "a"})
        0.2
    """
    found = [word for text in texts for word in words(text)]
    return sum(word not in vocabulary for word in found) / len(found) if found else None


def vocabulary(texts: Iterable[str]) -> set[str]:
    """Every word of ``texts``.

    Example:
        >>> sorted(vocabulary(["The cat.", "the Dog"]))
        ['cat', 'dog', 'the']
    """
    found: set[str] = set()
    for text in texts:
        found.update(words(text))
    return found


def sentences(text: str) -> list[str]:
    """The sentences of ``text`` (each with its end), the unfinished last one included when it
    holds a word; pieces without a word are dropped.

    Example:
        >>> sentences('He said "hi!" Then he left... and')
        ['He said "hi!"', ' Then he left...', ' and']
    """
    pieces, start = [], 0
    for match in SENTENCE_END.finditer(text):
        pieces.append(text[start : match.end()])
        start = match.end()
    pieces.append(text[start:])
    return [piece for piece in pieces if WORD.search(piece.lower())]


def sentence_end_rate(texts: Sequence[str]) -> float | None:
    """The share of ``texts`` in which at least one sentence ends (None without texts): a model
    that never ends a sentence scores 0.

    Example:
        >>> sentence_end_rate(["and then the dog and the", "it ran. then"])
        0.5
    """
    return sum(bool(SENTENCE_END.search(text)) for text in texts) / len(texts) if texts else None


def mean_sentence_length(texts: Iterable[str]) -> float | None:
    """Words per sentence over all ``texts`` (an unfinished last sentence counts as one).

    Example: "The cat sat. It ran!" is 5 words in 2 sentences, "and on" 2 in 1: 7 / 3.

        >>> round(mean_sentence_length(["The cat sat. It ran!", "and on"]), 4)
        2.3333
    """
    word_count = sentence_count = 0
    for text in texts:
        word_count += len(words(text))
        sentence_count += len(sentences(text))
    return word_count / sentence_count if sentence_count else None


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """The length of the longest common subsequence of ``a`` and ``b`` (dynamic programming,
    one row at a time: O(len(a) * len(b)) time, O(len(b)) memory).

    Example:
        >>> lcs_length("the cat sat on the mat".split(), "the cat lay on a mat".split())
        4
    """
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 (Lin 2004, with beta = 1) of two texts over their words: with L the longest
    common subsequence, precision L / len(candidate), recall L / len(reference), and F1 their
    harmonic mean; 0 when either has no word.

    Example: 4 of 6 words in common order each way: precision = recall = F1 = 2/3.

        >>> round(rouge_l("the cat sat on the mat", "the cat lay on a mat"), 4)
        0.6667
        >>> rouge_l("a b", "a b"), rouge_l("a b", "c d"), rouge_l("", "a")
        (1.0, 0.0, 0.0)
    """
    cand, ref = words(candidate), words(reference)
    common = lcs_length(cand, ref) if cand and ref else 0
    if common == 0:
        return 0.0
    precision, recall = common / len(cand), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def mean_rouge_l(candidates: Sequence[str], references: Sequence[str]) -> float | None:
    """``rouge_l`` of each candidate against its reference, averaged (None without pairs).

    Example:
        >>> mean_rouge_l(["a b", "a x"], ["a b", "a b"])
        0.75
    """
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates for {len(references)} references")
    scores = [rouge_l(c, r) for c, r in zip(candidates, references)]
    return sum(scores) / len(scores) if scores else None


def text_metrics(texts: Sequence[str], references: Sequence[str], known_words: set[str] | frozenset[str]
                 ) -> dict[str, float | None]:
    """Every metric of ``METRICS`` for ``texts``: ROUGE-L against ``references`` (one per text),
    unseen words against ``known_words``.

    Example:
        >>> m = text_metrics(["the cat sat. the cat sat."], ["the cat ran."], {"the", "cat"})
        >>> m["distinct_1"], m["unseen_word_rate"], m["mean_sentence_length"], round(m["rouge_l"], 4)
        (0.5, 0.3333333333333333, 3.0, 0.4444)
    """
    figures = {f"distinct_{n}": distinct_n(texts, n) for n in (1, 2, 3)}
    figures["repeated_4gram_rate"] = repeated_ngram_rate(texts, 4)
    figures["unseen_word_rate"] = unseen_word_rate(texts, known_words)
    figures["sentence_end_rate"] = sentence_end_rate(texts)
    figures["mean_sentence_length"] = mean_sentence_length(texts)
    figures["rouge_l"] = mean_rouge_l(texts, references)
    return figures
