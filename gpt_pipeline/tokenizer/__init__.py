"""gpt-rs's BPE tokenizer over characters: ``BPETokenizer`` and the pieces it is made of.

- ``pieces``: the text cut (before spaces, around ``"`` and ``\\n``) inside which merges happen,
  and piece counting with polars.
- ``training``: learning the merges with incremental pair counts (gpt-rs's merges, ties included).
- ``encoding``: applying the merges, per piece (cached) or to a whole corpus at once (NumPy).
- ``fileformat``: our versioned JSON and the human-readable vocabulary listing.
- ``huggingface``: the ``tokenizer.json`` export for Hugging Face ``tokenizers``.
- ``bpe``: ``BPETokenizer``, the public face of all of the above.
"""

from gpt_pipeline.tokenizer.bpe import UNKNOWN_MODES, BPETokenizer, vocab_listing_path
from gpt_pipeline.tokenizer.pieces import PIECE_PATTERN, split_pieces

__all__ = ["BPETokenizer", "PIECE_PATTERN", "UNKNOWN_MODES", "split_pieces", "vocab_listing_path"]
