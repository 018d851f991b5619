"""Settings of the tokenizer step (``bpe_tokenizer``, ``gpt-pipeline tokenize``)."""

from __future__ import annotations

from dataclasses import dataclass

from gpt_pipeline.fields import check, param


@dataclass(frozen=True)
class TokenizerConfig:
    """gpt-rs's BPE training: the vocabulary size (its example: 2048)."""

    vocab_size: int = param(2048, "Tokens in the vocabulary: the corpus characters plus one per "
                            "learnt merge.", ge=1)

    def validate(self) -> TokenizerConfig:
        return check(self)
