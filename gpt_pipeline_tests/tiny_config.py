"""A run config for ``train_gpt_job`` small enough for tests (seconds, not minutes)."""

TINY_RUN_CONFIG = {
    "ops": {
        "raw_stories": {"config": {"num_stories": 200, "seed": 3}},
        "bpe_tokenizer": {"config": {"vocab_size": 300}},
        "tokenized_dataset": {"config": {"training_percentage": 0.9}},
        "trained_model": {
            "config": {
                "embedding_size": 32,
                "context_length": 16,
                "head_count": 2,
                "block_count": 1,
                "feed_forward_multiplier": 2,
                "learning_rate": 0.003,
                "training_iterations": 40,
                "evaluation_interval": 20,
                "evaluation_iterations": 2,
                "contexts_per_batch": 8,
                "seed": 7,
                "device": "cpu",
            }
        },
        "sample_generations": {"config": {"prompts": ["Once", "The dog"], "token_count": 20, "seed": 5}},
        # A 40-step, 1-block model invents most of its words (docs/evaluation.md): margins of 1 let
        # the lineage's tests elect it; 4 short continuations keep the evaluation to about a second.
        # The check itself is tested with its default margins (evaluation/test_evaluate.py,
        # defs/test_evaluation.py).
        "model_evaluation": {"config": {"stories": 4, "max_continuation_tokens": 24, "max_windows": 64,
                                        "max_repeated_4gram_excess": 1.0, "max_unseen_word_excess": 1.0}},
    }
}


def with_default_variant(instance):
    """``instance`` with the variant ``default`` among its partitions (``defs.variants``: runs of an
    unknown partition are refused), as ``gpt-pipeline materialize`` adds it."""
    from gpt_pipeline.defs.variants import DEFAULT_VARIANT, add_partition

    add_partition(instance, DEFAULT_VARIANT)
    return instance
