"""Known answers of every text metric on hand-made texts."""

import pytest

from gpt_pipeline.evaluation import metrics


def test_words_are_lower_cased_letter_runs_with_inner_apostrophes():
    assert metrics.words("Tom's BIG dog -- it barked twice, 2 times 'loudly'.") == [
        "tom's", "big", "dog", "it", "barked", "twice", "times", "loudly"]


def test_distinct_n_counts_unique_ngrams_over_all_texts():
    texts = ["a b a b", "a c"]  # unigrams a b a b a c; bigrams ab ba ab ac
    assert metrics.distinct_n(texts, 1) == pytest.approx(3 / 6)
    assert metrics.distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert metrics.distinct_n(texts, 3) == pytest.approx(2 / 2)  # aba, bab
    assert metrics.distinct_n(["one"], 2) is None


def test_repeated_4gram_rate_is_zero_for_fresh_text_and_high_for_a_loop():
    assert metrics.repeated_ngram_rate(["once there was a girl who had a red ball"]) == 0.0
    loop = "and the dog and the dog and the dog and the dog"  # 12 words, 9 four-grams, 3 distinct
    assert metrics.repeated_ngram_rate([loop]) == pytest.approx(6 / 9)
    # repeats are counted within a text: the same sentence in two texts is no repeat
    assert metrics.repeated_ngram_rate(["a b c d", "a b c d"]) == 0.0
    assert metrics.repeated_ngram_rate(["a b c"]) is None


def test_unseen_word_rate_counts_word_occurrences_outside_the_vocabulary():
    known = metrics.vocabulary(["The cat sat on the mat."])
    assert metrics.unseen_word_rate(["the cat blorped the flimzy mat", "sat"], known) == pytest.approx(2 / 7)
    assert metrics.unseen_word_rate(["..."], known) is None


def test_sentences_and_their_ends():
    assert metrics.sentences('"Hi!" she said. Then... they ran') == ['"Hi!"', " she said.", " Then...",
                                                                      " they ran"]
    assert metrics.sentence_end_rate(["a b c", "a. b", "no end", 'he said "yes!"']) == pytest.approx(2 / 4)
    assert metrics.sentence_end_rate([]) is None


def test_mean_sentence_length_counts_an_unfinished_sentence():
    # 3 + 2 words in two ended sentences, then 4 words unfinished: 9 / 3
    assert metrics.mean_sentence_length(["The cat sat. It ran! and then it went"]) == pytest.approx(3.0)
    assert metrics.mean_sentence_length(["...", "!"]) is None


def test_lcs_and_rouge_l_known_answers():
    assert metrics.lcs_length(list("abcbdab"), list("bdcaba")) == 4  # the textbook pair (CLRS)
    assert metrics.lcs_length([], ["a"]) == 0
    # candidate 3 words, reference 5, LCS "the dog ran" = 3: P = 1, R = 3/5, F1 = 2 * 3/5 / (8/5) = 0.75
    assert metrics.rouge_l("the dog ran", "the big dog ran away") == pytest.approx(0.75)
    assert metrics.rouge_l("the dog ran", "ran dog the") == pytest.approx(1 / 3)
    assert metrics.rouge_l("", "the dog") == 0.0
    assert metrics.mean_rouge_l(["a b", "c"], ["a b", "d"]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 candidates for 1 references"):
        metrics.mean_rouge_l(["a", "b"], ["a"])


def test_text_metrics_gives_every_metric():
    figures = metrics.text_metrics(["The cat sat. The cat sat."], ["The cat ran."], {"the", "cat", "sat"})
    assert set(figures) == set(metrics.METRICS)
    assert figures["distinct_1"] == pytest.approx(3 / 6)
    assert figures["distinct_2"] == pytest.approx(3 / 5)  # the cat, cat sat, sat the, (the cat, cat sat)
    assert figures["repeated_4gram_rate"] == 0.0  # the cat sat the, cat sat the cat, sat the cat sat: all new
    assert figures["unseen_word_rate"] == 0.0
    assert figures["sentence_end_rate"] == 1.0
    assert figures["mean_sentence_length"] == 3.0
    assert figures["rouge_l"] == pytest.approx(2 * (2 / 6) * (2 / 3) / (2 / 6 + 2 / 3))
