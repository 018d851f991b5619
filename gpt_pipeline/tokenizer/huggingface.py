"""Export to a Hugging Face ``tokenizer.json`` that encodes exactly as we do.

The file is a plain ``tokenizers`` BPE model: no normalizer, no byte-level mapping, our
vocabulary and merges written as strings, and a ``Split`` pre-tokenizer with our piece
pattern (``behavior: Isolated``) so that merges stay inside gpt-rs's pieces. Hugging Face's BPE
merges, in every word, the lowest-ranked pair first, occurrences left to right: the same ids
as gpt-rs's merge-by-merge passes (see ``encoding``). A ``Fuse`` decoder joins tokens back
without spaces. Characters outside the alphabet are dropped (no ``unk_token``), as
``unknown="skip"`` does.

One thing a ``tokenizer.json`` cannot hold: two tokens with the same text (gpt-rs can learn
both (ab, c) and (a, bc)), since its vocabulary maps text to id. The export refuses such a
tokenizer with a ``ValueError`` naming the clashing ids. This module does not need
``tokenizers`` installed; the tests load its output with it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from gpt_pipeline.tokenizer.pieces import PIECE_PATTERN


def hf_tokenizer_json(
    alphabet: Sequence[str], merges: Sequence[tuple[int, int]], texts: Sequence[str]
) -> str:
    """The ``tokenizer.json`` text for the tokenizer whose token ``i`` has text ``texts[i]``.

    Example:
        >>> doc = json.loads(hf_tokenizer_json(["a", "b"], [(0, 1)], ["a", "b", "ab"]))
        >>> doc["model"]["vocab"], doc["model"]["merges"], doc["pre_tokenizer"]["behavior"]
        ({'a': 0, 'b': 1, 'ab': 2}, [['a', 'b']], 'Isolated')
    """
    vocab: dict[str, int] = {}
    for i, text in enumerate(texts):
        if text in vocab:
            raise ValueError(
                f"tokens {vocab[text]} and {i} share the text {text!r}: a Hugging Face vocabulary "
                "maps each text to one id, so this tokenizer cannot be exported"
            )
        vocab[text] = i
    document = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Split",
            "pattern": {"Regex": PIECE_PATTERN},
            "behavior": "Isolated",
            "invert": False,
        },
        "post_processor": None,
        "decoder": {"type": "Fuse"},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [[texts[a], texts[b]] for a, b in merges],
        },
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"
