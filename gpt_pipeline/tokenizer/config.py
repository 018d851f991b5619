"""Settings of the tokenizer step (``bpe_tokenizer``, ``gpt-pipeline tokenize``)."""

from __future__ import annotations

from pydantic import Field

from gpt_pipeline.fields import settings


@settings(frozen=True)
class TokenizerConfig:
    """gpt-rs's BPE training: the vocabulary size (its example: 2048)."""

    vocab_size: int = Field(2048, description="Tokens in the vocabulary: the corpus characters plus one "
                            "per learnt merge.", ge=1)
