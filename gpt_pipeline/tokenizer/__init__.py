"""gpt-rs's BPE tokenizer over characters: ``BPETokenizer`` and the pieces it is made of.

- ``pieces``: the text cut (before spaces, around ``"`` and ``\\n``) inside which merges happen,
  and piece counting with polars.
- ``merge_learning``: learning the merges with incremental pair counts (gpt-rs's merges, ties included).
- ``merge_encoding``: applying the merges, per piece (cached) or to a whole corpus at once (NumPy).
- ``fileformat``: our versioned JSON and the human-readable vocabulary listing.
- ``huggingface``: the ``tokenizer.json`` export for Hugging Face ``tokenizers``.
- ``bpe``: ``BPETokenizer``, the public face of all of the above.
- ``bundle``: the files a tokenizer is stored as (ours, its listing, Hugging Face's), one writer
  and one reader for every place that stores one.
- ``from_stories``: the tokenizer step, trained from a story file in batches.
"""

from gpt_pipeline.tokenizer.bpe import UNKNOWN_MODES, BPETokenizer
from gpt_pipeline.tokenizer.pieces import PIECE_PATTERN, split_pieces

__all__ = ["BPETokenizer", "PIECE_PATTERN", "UNKNOWN_MODES", "split_pieces"]
